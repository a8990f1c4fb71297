"""A real gateway (aiohttp on loopback) in front of a fake OpenAI-compatible upstream, on a migrated store: the
gateway tests' ``make_rig`` fixture (tests/gateway/conftest.py) and the end-to-end test (tests/pilot/test_e2e.py)
start theirs with ``start_rig``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import OperationalError

from pilot.data.producers import FEEDBACK_WRITE, LIVE_WRITE, create_token
from pilot.gateway.server import GatewayRuntime
from pilot.settings import Settings
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

    def stop(self) -> None:
        self.runtime.stop()
        self.upstream.stop()
        self.store.close()


def start_rig(settings: Settings, store: Store, upstream: FakeOpenAIServer, *, token_name: str = "feedback") -> Rig:
    """Start the gateway ``settings.gateway`` describes (its upstream: the started ``upstream``) on ``store``, and
    create a producer token for the product's feedback."""
    try:
        _, token = create_token(store, token_name, scopes=[FEEDBACK_WRITE, LIVE_WRITE])
    except OperationalError:  # the spool tests' store that cannot be opened: no token, none needed
        token = ""
    runtime = GatewayRuntime(settings, store)
    return Rig(upstream, runtime, store, settings, runtime.start(), token)
