"""This installation's identity: a random id, created once (``learning-pilot init``, or on first use), kept in the
store, and carried in every instance label (``learning-pilot/<env>/<installation>/<run_id>``).

Two deployments with the same ``env`` on one Vast account (two developers, staging built from prod's config) tell
their instances apart by it: the reconciler and the kill switch destroy only their own installation's instances and
report the others'. The id lives in the store, not in the settings, so it follows the data (a restored backup keeps
its id) and cannot be copied between deployments by copying a config file.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from pilot.store.engine import Store
from pilot.store.models import PilotState

logger = logging.getLogger(__name__)

INSTALLATION_KEY = "installation_id"
OTHERS_KEY = "other_installations"  # another installation's instances the last look saw (pilot.runs.ownership)


def new_installation_id() -> str:
    """``lp`` + 16 random hex digits: short enough for Vast's label, random enough never to collide."""
    return f"lp{secrets.token_hex(8)}"


def read_installation_id(store: Store) -> str | None:
    with store.session() as session:
        row = session.get(PilotState, INSTALLATION_KEY)
        return row.value if row is not None else None


def ensure_installation_id(store: Store) -> tuple[str, bool]:
    """The store's installation id, created if it has none yet; returns ``(id, created)``. Safe under concurrency:
    two processes creating it at once keep the first one committed."""
    existing = read_installation_id(store)
    if existing is not None:
        return existing, False
    candidate = new_installation_id()
    try:
        with store.session(write=True) as session:
            if session.get(PilotState, INSTALLATION_KEY) is None:
                session.add(PilotState(key=INSTALLATION_KEY, value=candidate))
    except IntegrityError:
        pass  # another process created it first
    final = read_installation_id(store)
    assert final is not None
    return final, final == candidate


def read_others(session: Session) -> dict[str, Any]:
    """Another installation's instances (our env) the last look saw (written by ``pilot.runs.ownership``):
    ``{"labels": {label: live instances}, "count": n, "seen_at": iso or None}``."""
    empty: dict[str, Any] = {"labels": {}, "count": 0, "seen_at": None}
    row = session.get(PilotState, OTHERS_KEY)
    if row is None:
        return empty
    try:
        data = json.loads(row.value)
    except ValueError:
        return empty
    return data if isinstance(data, dict) else empty
