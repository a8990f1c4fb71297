"""A real gateway (aiohttp on loopback) in front of a fake OpenAI-compatible upstream, on a migrated SQLite store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from pilot.data.producers import FEEDBACK_WRITE, LIVE_WRITE, create_token
from pilot.gateway.server import GatewayRuntime
from pilot.settings import Settings, load_settings
from pilot.store import Store
from tools.serving.openai_fake import FakeOpenAIServer


@dataclass
class Rig:
    upstream: FakeOpenAIServer
    runtime: GatewayRuntime
    store: Store
    settings: Settings
    url: str  # the gateway's OpenAI base URL (ends in /v1)
    feedback_token: str  # feedback:write (/v1/feedback always needs one) and live:write

    @property
    def feedback_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.feedback_token}"}

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def drain(self) -> None:
        """Everything the gateway answered is in the store."""
        self.runtime.drain()


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
        try:
            _, token = create_token(store, f"feedback-{len(started)}", scopes=[FEEDBACK_WRITE, LIVE_WRITE])
        except OperationalError:  # the spool tests' store that cannot be opened: no token, none needed
            token = ""
        runtime = GatewayRuntime(settings, store)
        rig = Rig(fake, runtime, store, settings, runtime.start(), token)
        started.append(rig)
        return rig

    yield factory
    for rig in started:
        rig.runtime.stop()
        rig.upstream.stop()
        rig.store.close()
