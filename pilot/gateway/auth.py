"""Who is calling the gateway: producer tokens (pilot/data/producers.py), checked in one place.

``/v1/feedback`` always needs a token with ``feedback:write``: an outcome is what turns a call into training data
and into live quality (the canary, the automatic rollback), so it is a state-changing write like ``POST /v1/records``
(docs/security.md). Proxied calls need a token with ``live:write`` only when ``gateway.producer_auth`` is on; off,
the caller is ``anonymous`` and its calls stay unlabelled traffic until an authenticated outcome names them
(``gateway.train_on_unlabelled`` needs ``producer_auth``). The token is ``X-Producer-Token``, or the bearer token
when ``gateway.upstream_api_key`` replaces the product's key. A missing, unknown or revoked token is refused with
401, one without the scope with 403.

A verdict is cached for ``CACHE_S`` per (token, scope) so the hot path does not read the store on every call: a
revocation takes effect within that. A cache miss reads the store in the thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pilot.data.producers import FEEDBACK_WRITE, LIVE_WRITE, ProducerAuthError, authenticate
from pilot.store import Store

__all__ = ["FEEDBACK_WRITE", "LIVE_WRITE", "ProducerCheck", "Refused", "raw_token"]

CACHE_S = 5.0
_MAX_CACHED = 10_000


@dataclass(frozen=True)
class Refused(Exception):
    status: int
    reason: str


def raw_token(headers: Mapping[str, str], *, bearer_is_producer: bool) -> str | None:
    token = headers.get("x-producer-token")
    if token:
        return token.strip()
    if bearer_is_producer:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


class ProducerCheck:
    def __init__(self, store: Store, *, required: bool) -> None:
        self.store = store
        self.required = required
        self._cache: dict[tuple[str, str], tuple[float, str | Refused]] = {}

    async def identity(self, token: str | None, scope: str) -> str:
        """``producer:<name>`` for the records, or raises ``Refused``."""
        if not self.required and scope != FEEDBACK_WRITE:
            return "anonymous"
        key = (hashlib.sha256((token or "").encode()).hexdigest(), scope)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is None or hit[0] < now:
            verdict = await asyncio.get_running_loop().run_in_executor(None, self._check, token, scope)
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = hit = (now + CACHE_S, verdict)
        if isinstance(hit[1], Refused):
            raise hit[1]
        return hit[1]

    def _check(self, token: str | None, scope: str) -> str | Refused:
        try:
            return f"producer:{authenticate(self.store, token, scope).name}"
        except ProducerAuthError as exc:
            return Refused(exc.status, str(exc))
