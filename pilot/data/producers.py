"""Producer credentials: who may write execution records, live-quality records and feedback into the pilot.

A producer is a named bearer token with scopes. The raw token (``lpp_`` + 43 url-safe characters, 256 bits from
``secrets``) is shown once, at creation; the store keeps only its sha256, so a stolen database holds no usable
credential. Looking a token up by its hash is a plain index lookup; the found row's hash is compared again with
``hmac.compare_digest`` so the answer does not depend on how much of a guess matched.

Scopes (``SCOPES``):

- ``records:write``: execution records without a ``model_version`` (training data).
- ``live:write``: records that carry a ``model_version`` (they drive the canary and the automatic rollback).
- ``feedback:write``: outcomes sent to the gateway's feedback API.

Errors: ``ProducerAuthError`` (a ``PilotError``) with ``.status`` 401 (missing, unknown or revoked token) or 403
(a valid token without the scope the request needs). Only this module writes ``producer_token``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel import Session, col, or_, select

from pilot.store import Store
from pilot.store.models import ProducerToken, utcnow
from pilot.store.status import EntityType
from pilot.store.writers import record_event
from tools.errors import PilotError

RECORDS_WRITE = "records:write"
LIVE_WRITE = "live:write"
FEEDBACK_WRITE = "feedback:write"
SCOPES = (RECORDS_WRITE, LIVE_WRITE, FEEDBACK_WRITE)

TOKEN_PREFIX = "lpp_"  # "learning pilot producer": lets secret scanners and people recognise a leaked token
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_SHOWN = len(TOKEN_PREFIX) + 6  # characters of the raw token kept in the row to tell tokens apart


class ProducerAuthError(PilotError):
    """A request's producer credential was refused: ``status`` is 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Producer:
    """An authenticated producer: the token row's id and name, and what it may write."""

    id: str
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def _check_scopes(scopes: Sequence[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError(f"a token needs at least one scope ({', '.join(SCOPES)})")
    return sorted(set(scopes))


def _event(session: Session, row: ProducerToken, actor: str, old: str | None, new: str, reason: str) -> None:
    data = {"name": row.name, "scopes": row.scopes.split(","), "prefix": row.prefix}  # never the token itself
    record_event(
        session, entity_type=EntityType.PRODUCER, entity_id=row.id, actor=actor, old=old, new=new, reason=reason, data=data
    )


def create_token(store: Store, name: str, scopes: Sequence[str], *, actor: str = "system") -> tuple[ProducerToken, str]:
    """A new token for producer ``name``: the stored row and the raw token (shown once, never stored)."""
    if not _NAME.match(name):
        raise ValueError(f"producer name {name!r}: 1-80 characters, letters, digits, '.', '_' or '-'")
    wanted = _check_scopes(scopes)
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ProducerToken(
        id=f"prod-{uuid.uuid4().hex[:12]}",
        name=name,
        token_hash=_hash(raw),
        prefix=raw[:_SHOWN],
        scopes=",".join(wanted),
    )
    with store.session(write=True) as session:
        session.add(row)
        _event(session, row, actor, None, "active", f"token created for producer {name} with scopes {row.scopes}")
        session.flush()
        session.expunge(row)
    return row, raw


def list_tokens(store: Store, *, include_revoked: bool = True) -> list[ProducerToken]:
    """Every token row (hashes only), oldest first."""
    with store.session() as session:
        query = select(ProducerToken).order_by(col(ProducerToken.created_at), col(ProducerToken.id))
        if not include_revoked:
            query = query.where(col(ProducerToken.revoked_at).is_(None))
        rows = list(session.exec(query).all())
        for row in rows:
            session.expunge(row)
        return rows


def revoke_token(store: Store, name_or_id: str, *, actor: str = "system") -> bool:
    """Revoke the token with this id, or every active token of this producer name. False when none was active."""
    with store.session(write=True) as session:
        rows = session.exec(
            select(ProducerToken).where(
                or_(col(ProducerToken.id) == name_or_id, col(ProducerToken.name) == name_or_id),
                col(ProducerToken.revoked_at).is_(None),
            )
        ).all()
        now = utcnow()
        for row in rows:
            row.revoked_at = now
            session.add(row)
            _event(session, row, actor, "active", "revoked", f"token of producer {row.name} revoked")
        return bool(rows)


def _lookup(store: Store, raw_token: str | None) -> Producer:
    if not raw_token:
        raise ProducerAuthError("missing bearer token (create one with `learning-pilot tokens create`)", status=401)
    if not raw_token.startswith(TOKEN_PREFIX) or len(raw_token) > 200:
        raise ProducerAuthError("unknown or revoked producer token", status=401)
    digest = _hash(raw_token)
    with store.session() as session:
        row = session.exec(select(ProducerToken).where(ProducerToken.token_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at is not None:
            raise ProducerAuthError("unknown or revoked producer token", status=401)
        return Producer(id=row.id, name=row.name, scopes=frozenset(row.scopes.split(",")))


def authenticate(store: Store, raw_token: str | None, scope: str) -> Producer:
    """The producer behind ``raw_token`` if it may use ``scope``; else ``ProducerAuthError`` (401 or 403)."""
    return authenticate_any(store, raw_token, [scope])


def authenticate_any(store: Store, raw_token: str | None, scopes: Sequence[str]) -> Producer:
    """The producer if it holds at least one of ``scopes`` (a batch's lines then say which one each needs)."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"unknown scope(s) {sorted(unknown)}")
    producer = _lookup(store, raw_token)
    if not any(producer.allows(scope) for scope in scopes):
        raise ProducerAuthError(
            f"producer {producer.name} lacks the scope {' or '.join(scopes)} (has: {', '.join(sorted(producer.scopes))})",
            status=403,
        )
    return producer
