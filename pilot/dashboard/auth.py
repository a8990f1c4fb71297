"""Dashboard people and sign-ins: a per-person token made by the CLI, exchanged for a session cookie.

Invariants: the store keeps only SHA-256 digests of tokens and session ids (a copy of the database signs nobody
in); a revoked user's sessions stop working at once (checked on every request); every session carries its own
CSRF token, which every form posts back and the server compares in constant time. Creating, revoking and
signing in write a ``dashboard`` event naming the person.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete
from sqlmodel import Session, col, select

from pilot.errors import ConflictError, NotFound
from pilot.store.models import DashboardSession, DashboardUser, as_utc, utcnow
from pilot.store.status import EntityType
from pilot.store.writers import record_event

USER_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
TOKEN_PREFIX = "lpd_"


@dataclass(frozen=True)
class SignedIn:
    user_id: str
    csrf: str

    @property
    def actor(self) -> str:
        return f"human:{self.user_id}"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_user_id(user_id: str) -> str:
    if not USER_ID.match(user_id):
        raise ValueError(
            f"invalid dashboard user id {user_id!r}: use 1-64 lower-case letters, digits, '.', '_' or '-' "
            "(it is recorded as human:<id>)"
        )
    return user_id


def create_user(session: Session, user_id: str, *, created_by: str) -> str:
    """Create ``user_id`` and return its token (shown once; only its digest is stored). A revoked id is
    re-issued a new token; an active one is refused (revoke it first)."""
    check_user_id(user_id)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    existing = session.get(DashboardUser, user_id)
    if existing is not None and existing.revoked_at is None:
        raise ConflictError(f"dashboard user {user_id!r} exists: revoke it first to issue a new token")
    if existing is None:
        session.add(DashboardUser(id=user_id, token_sha256=digest(token), created_by=created_by))
    else:
        existing.token_sha256, existing.revoked_at, existing.created_by = digest(token), None, created_by
        existing.created_at = utcnow()
        session.add(existing)
    record_event(
        session,
        entity_type=EntityType.DASHBOARD,
        entity_id=user_id,
        actor=created_by,
        reason=f"dashboard user {user_id} given a sign-in token",
    )
    return token


def revoke_user(session: Session, user_id: str, *, actor: str) -> None:
    user = session.get(DashboardUser, user_id)
    if user is None:
        raise NotFound(f"no dashboard user {user_id!r}")
    user.revoked_at = utcnow()
    session.add(user)
    session.execute(delete(DashboardSession).where(col(DashboardSession.user_id) == user_id))
    record_event(
        session,
        entity_type=EntityType.DASHBOARD,
        entity_id=user_id,
        actor=actor,
        reason=f"dashboard user {user_id} revoked; their sessions ended",
    )


def list_users(session: Session) -> list[DashboardUser]:
    return list(session.exec(select(DashboardUser).order_by(col(DashboardUser.id))).all())


def sign_in(session: Session, token: str, *, hours: float, client: str) -> tuple[str, SignedIn] | None:
    """A new session for the token's user: (the cookie value, who) — or None for an unknown or revoked token."""
    token = token.strip()
    user = session.exec(select(DashboardUser).where(DashboardUser.token_sha256 == digest(token))).first()
    if user is None or user.revoked_at is not None:  # the caller records the refusal (sampled: RefusalLog)
        return None
    now = utcnow()
    session.execute(delete(DashboardSession).where(col(DashboardSession.expires_at) <= now))
    cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(
        DashboardSession(id_sha256=digest(cookie), user_id=user.id, csrf=csrf, expires_at=now + timedelta(hours=hours))
    )
    record_event(
        session,
        entity_type=EntityType.DASHBOARD,
        entity_id=user.id,
        actor=f"human:{user.id}",
        reason=f"signed in to the dashboard from {client}",
    )
    return cookie, SignedIn(user.id, csrf)


def lookup(session: Session, cookie: str | None) -> SignedIn | None:
    if not cookie:
        return None
    row = session.get(DashboardSession, digest(cookie))
    if row is None or as_utc(row.expires_at) <= utcnow():
        return None
    user = session.get(DashboardUser, row.user_id)
    if user is None or user.revoked_at is not None:
        return None
    return SignedIn(row.user_id, row.csrf)


def sign_out(session: Session, cookie: str | None) -> None:
    if cookie:
        session.execute(delete(DashboardSession).where(col(DashboardSession.id_sha256) == digest(cookie)))


def csrf_ok(who: SignedIn | None, given: str | None) -> bool:
    return who is not None and bool(given) and hmac.compare_digest(who.csrf.encode(), str(given).encode())
