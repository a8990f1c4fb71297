"""The gateway tests' rig (tests/helpers/gateway_rig.py) on a migrated SQLite store under the test's tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pilot.settings import load_settings
from pilot.store import Store
from tests.helpers.gateway_rig import Rig, start_rig
from tools.serving.openai_fake import FakeOpenAIServer


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    started: list[Rig] = []

    def factory(*, upstream: FakeOpenAIServer | None = None, store: Store | None = None, **gateway: Any) -> Rig:
        fake = upstream or FakeOpenAIServer(base_model="base-model").start()
        gateway.setdefault("upstream_url", fake.url)
        gateway.setdefault("port", 0)
        settings = load_settings(
            None, data_dir=tmp_path / "data", env="test", gateway=gateway, training={"base_model": "base-model"}
        )
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        if store is None:
            store = Store(settings.database_url)
            store.migrate()
        rig = start_rig(settings, store, fake, token_name=f"feedback-{len(started)}")
        started.append(rig)
        return rig

    yield factory
    for rig in started:
        rig.stop()
