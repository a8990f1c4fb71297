"""Factories with keyword overrides (rather than fixture chains)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session

from pilot.store.models import DatasetSnapshot, Decision, TrainingRun
from pilot.store.status import RunStatus


def record(**overrides: Any) -> dict[str, Any]:
    n = uuid.uuid4().hex[:8]
    base: dict[str, Any] = {
        "schema_version": 1,
        "record_id": f"rec-{n}",
        "timestamp": datetime(2026, 11, 1, tzinfo=UTC).isoformat(),
        "session_id": f"sess-{n[:4]}",
        "domain": "python-naming",
        "tags": ["lint"],
        "task": "Fix the N802 lint error",
        "prompt": f"Rename the identifier `userIdMap{n}` to snake_case.",
        "output": f"user_id_map{n}",
        "success": True,
        "metrics": {"tests_passed": 3, "tests_total": 3, "duration_s": 1.5, "tokens": 120},
    }
    base.update(overrides)
    return base


def record_line(**overrides: Any) -> str:
    return json.dumps(record(**overrides))


def decision(session: Session, **overrides: Any) -> Decision:
    d = Decision(
        **{"id": f"dec-{uuid.uuid4().hex[:8]}", "thread_id": "t", "action": "finetune", "reason": "test", **overrides}
    )
    session.add(d)
    session.flush()
    return d


def snapshot(session: Session, **overrides: Any) -> DatasetSnapshot:
    s = DatasetSnapshot(
        **{"id": f"snap-{uuid.uuid4().hex[:8]}", "content_hash": uuid.uuid4().hex, "path": "/nonexistent", **overrides}
    )
    session.add(s)
    session.flush()
    return s


def run(session: Session, **overrides: Any) -> TrainingRun:
    d = decision(session)
    s = snapshot(session)
    r = TrainingRun(
        **{
            "id": f"run-{uuid.uuid4().hex[:8]}",
            "decision_id": d.id,
            "snapshot_id": s.id,
            "status": RunStatus.PENDING,
            "provider": "fake",
            "label": "learning-pilot/test/x",
            **overrides,
        }
    )
    session.add(r)
    session.flush()
    return r


def days_ago(n: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=n)
