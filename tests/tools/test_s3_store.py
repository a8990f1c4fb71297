"""S3ArtifactStore specifics beyond the contract: multipart, metadata, tampering, expiry, error translation."""

from __future__ import annotations

import hashlib
import os
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tools.artifacts.s3 import S3ArtifactStore
from tools.errors import ArtifactError, ArtifactNotFound, IntegrityError

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing-secret"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def raw(endpoint: str) -> object:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **CREDS)


def make_store(endpoint: str, raw: object, **overrides: object) -> S3ArtifactStore:
    bucket = f"lp-{uuid.uuid4().hex[:12]}"
    raw.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    options: dict[str, object] = {"endpoint_url": endpoint, "region": "us-east-1", "path_style": True, **CREDS}
    options.update(overrides)
    return S3ArtifactStore(bucket, **options)  # type: ignore[arg-type]


def test_big_files_go_multipart_and_round_trip(endpoint: str, raw: object, tmp_path: Path) -> None:
    store = make_store(endpoint, raw, multipart_threshold_mb=5, multipart_chunk_mb=5)
    data = os.urandom(11 * 1024 * 1024)
    src = tmp_path / "big.safetensors"
    src.write_bytes(data)
    ref = store.put("runs/r1/adapter/adapter_model.safetensors", src)
    head = raw.head_object(Bucket=store.bucket, Key=ref.key)  # type: ignore[attr-defined]
    assert head["ETag"].strip('"').endswith("-3"), "an 11 MiB file in 5 MiB parts is a 3-part upload"
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest() == ref.sha256
    assert ref.uri == f"s3://{store.bucket}/{ref.key}"
    out = store.get(ref.key, tmp_path / "out.safetensors")
    assert out.read_bytes() == data


def test_prefix_scopes_keys(endpoint: str, raw: object, tmp_path: Path) -> None:
    store = make_store(endpoint, raw, prefix="/team-a/pilot/")
    (tmp_path / "m.json").write_text("{}")
    store.put("runs/r1/metrics.json", tmp_path / "m.json")
    listed = raw.list_objects_v2(Bucket=store.bucket)["Contents"]  # type: ignore[attr-defined]
    assert [o["Key"] for o in listed] == ["team-a/pilot/runs/r1/metrics.json"]
    assert store.list("runs/") == ["runs/r1/metrics.json"]
    store.delete("runs/r1/metrics.json")
    assert store.list("runs/") == []


def test_tampered_object_fails_verification_against_stored_sha(endpoint: str, raw: object, tmp_path: Path) -> None:
    store = make_store(endpoint, raw)
    (tmp_path / "a.safetensors").write_bytes(b"good bytes")
    ref = store.put("runs/r1/adapter.safetensors", tmp_path / "a.safetensors")
    # Someone rewrites the object but keeps the old metadata: no caller sha256 given, the stored one still catches it.
    raw.put_object(  # type: ignore[attr-defined]
        Bucket=store.bucket, Key=ref.key, Body=b"evil bytes", Metadata={"sha256": ref.sha256}
    )
    dest = tmp_path / "out" / "adapter.safetensors"
    with pytest.raises(IntegrityError, match="metadata"):
        store.get(ref.key, dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_torch_archive_is_refused_even_with_a_safe_suffix(endpoint: str, raw: object, tmp_path: Path) -> None:
    store = make_store(endpoint, raw)
    archive = tmp_path / "adapter.safetensors"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(IntegrityError, match="torch"):
        store.put("runs/r1/adapter.safetensors", archive)
    # And a pickle uploaded behind our back is refused on the way out, leaving nothing.
    raw.put_object(Bucket=store.bucket, Key="runs/r1/x.safetensors", Body=b"\x80\x04K\x01.")  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError):
        store.get("runs/r1/x.safetensors", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_presigned_urls_are_short_lived_and_carry_no_secret(endpoint: str, raw: object) -> None:
    store = make_store(endpoint, raw, max_presign_s=600)
    url = store.presign_put("runs/r1/out/adapter.safetensors", expires_s=300)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["300"]
    assert "testing-secret" not in url
    with pytest.raises(ValueError):
        store.presign_get("runs/r1/out/adapter.safetensors", expires_s=3600)
    with pytest.raises(ValueError):
        store.presign_get("runs/r1/out/adapter.safetensors", expires_s=0)
    with pytest.raises(IntegrityError):
        store.presign_put("runs/r1/out/adapter.pt")


def test_botocore_errors_are_translated(endpoint: str, tmp_path: Path) -> None:
    store = S3ArtifactStore("no-such-bucket", endpoint_url=endpoint, region="us-east-1", path_style=True, **CREDS)
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(ArtifactError) as caught:
        store.put("runs/r1/metrics.json", tmp_path / "m.json")
    assert not isinstance(caught.value, ArtifactNotFound)
    with pytest.raises(ArtifactError):
        store.list("runs/")
    unreachable = S3ArtifactStore("b", endpoint_url="http://127.0.0.1:9", region="us-east-1", **CREDS)
    with pytest.raises(ArtifactError):
        unreachable.exists("runs/r1/metrics.json")
