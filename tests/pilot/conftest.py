"""Fixtures of the tests that rent from the local Vast server and stage through moto's S3 server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_remote_rig import AWS, moto_endpoint


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 server on loopback, one per test module."""
    server, url = moto_endpoint()
    yield url
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The boto3 chain of this process holds the S3 secret (it must never reach a host)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS["aws_secret_access_key"])
