"""Who is calling the gateway: the producer token check, in one place.

``producer_identity`` is the gateway's only contact with producer tokens. With ``gateway.producer_auth`` off it
names the caller ``anonymous`` (the gateway binds to loopback by default). With it on, the token
(``X-Producer-Token``, or the bearer token when a configured ``gateway.upstream_api_key`` replaces the product's
key) is checked by ``pilot.data.producers.authenticate`` (the producer token store: scopes ``live:write`` for
proxied calls, ``feedback:write`` for outcomes); a missing, unknown or revoked token is refused with 401, a
token without the scope with 403.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pilot.errors import ConfigError
from pilot.store import Store

LIVE_WRITE, FEEDBACK_WRITE = "live:write", "feedback:write"


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


def producer_identity(store: Store, token: str | None, scope: str, *, required: bool) -> str:
    """The producer's name for the records (``producer:<name>``), or raises ``Refused``."""
    if not required:
        return "anonymous"
    if not token:
        raise Refused(401, "a producer token is required (X-Producer-Token)")
    try:
        from pilot.data import producers  # type: ignore[attr-defined]  # the token store (branch wip-trust)
    except ImportError as exc:
        raise ConfigError("gateway.producer_auth needs the producer token store (pilot.data.producers)") from exc
    try:
        producer = producers.authenticate(store, token, scope)
    except Exception as exc:
        status = getattr(exc, "status", None)
        if status in (401, 403):
            raise Refused(int(status), str(exc)) from exc
        raise
    return f"producer:{getattr(producer, 'name', None) or getattr(producer, 'id', 'unknown')}"
