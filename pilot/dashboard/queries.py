"""What each dashboard page shows, as plain dicts: one fixed set of aggregate queries per page, never one per row.

Per-day figures are grouped in SQL on the UTC day (``day_of``). The records' per-day figures come from the
in-memory ``RecordRollup``, which reads only the records added since the page before (records are append-only),
so a page costs the same with a million records as with a thousand. ``change_marker`` is the cheap "did anything
change" probe the live stream polls: the newest event, record, dead letter and ledger ids, and the pause flag.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Date, cast, func
from sqlalchemy import select as sa_select
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, select

from pilot.errors import NotFound
from pilot.settings import Settings
from pilot.spend.costs import elapsed_cost
from pilot.spend.ledger import spend_summary
from pilot.store.models import (
    AliasHistory,
    Approval,
    DatasetSnapshot,
    DeadLetter,
    Decision,
    EvalStage,
    Event,
    ExecutionRecordRow,
    ModelVersion,
    PilotState,
    RunAttempt,
    SpendEntry,
    TrainingRun,
    as_utc,
    utcnow,
)
from pilot.store.status import Alias, ApprovalStatus, EntityType, RunStatus, StageStatus
from pilot.store.writers import alias_target, is_paused
from subagents.methods import describe_method

IN_FLIGHT = (RunStatus.PENDING, RunStatus.PROVISIONING, RunStatus.RUNNING, RunStatus.COLLECTING)
STAGES_IN_FLIGHT = (StageStatus.PENDING, StageStatus.LAUNCHED, StageStatus.RUNNING, StageStatus.COLLECTING)


def iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat(timespec="seconds") if value is not None else None


def day_of(session: Session, column: Any) -> ColumnElement[Any]:
    """The UTC day of a timestamp column, as text ``YYYY-MM-DD`` on SQLite (stored as ISO text) or a date."""
    if session.get_bind().dialect.name == "sqlite":
        return func.substr(column, 1, 10)
    return cast(func.timezone("UTC", column), Date)


def _days(now: datetime, n: int) -> list[str]:
    start = (now - timedelta(days=n - 1)).date()
    return [(start + timedelta(days=i)).isoformat() for i in range(n)]


def change_marker(session: Session) -> str:
    """A string that changes whenever anything a page shows may have changed (a handful of index lookups)."""
    parts = [
        session.exec(select(func.max(Event.id))).one(),
        session.exec(select(func.max(ExecutionRecordRow.id))).one(),
        session.exec(select(func.max(DeadLetter.id))).one(),
        session.exec(select(func.max(SpendEntry.id))).one(),
        session.exec(select(PilotState.value).where(PilotState.key == "paused")).first(),
    ]
    return ":".join("" if p is None else str(p) for p in parts)


class RecordRollup:
    """Records per (UTC day, domain, model version, success), kept in memory and brought up to date incrementally.

    Execution records are append-only (ids only grow; the pilot never deletes one), so each call reads only the
    ids above the watermark: a page costs one ``max(id)`` plus the new records since the last page, however many
    million are stored. The first call reads them all once (the daemon warms it when it mounts the dashboard).
    If the newest id goes backwards (the store was replaced), the rollup starts over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._upto = 0
        self._counts: dict[tuple[str, str, str | None, bool], int] = defaultdict(int)

    def refresh(self, session: Session) -> None:
        with self._lock:
            top = int(session.exec(select(func.max(ExecutionRecordRow.id))).one() or 0)
            if top < self._upto:
                self._upto, self._counts = 0, defaultdict(int)
            if top == self._upto:
                return
            day = day_of(session, ExecutionRecordRow.ts)
            keys = (
                col(ExecutionRecordRow.domain),
                col(ExecutionRecordRow.model_version),
                col(ExecutionRecordRow.success),
            )
            query = sa_select(day, *keys, func.count()).group_by(day, *keys)
            if self._upto or session.get_bind().dialect.name != "sqlite":
                query = query.where(col(ExecutionRecordRow.id) > self._upto, col(ExecutionRecordRow.id) <= top)
            # else: the first pass on SQLite reads the covering index whole (an id range would read the table, payloads
            # and all); its one read transaction sees exactly the rows up to ``top``.
            rows = session.execute(query).all()
            for d, domain, version, ok, n in rows:
                self._counts[(str(d), str(domain), version, bool(ok))] += int(n)
            self._upto = top

    def rows(self, session: Session, since: datetime) -> list[tuple[str, str, str | None, bool, int]]:
        """(day, domain, model_version, success, count) for the days from ``since`` on."""
        self.refresh(session)
        cutoff = since.date().isoformat()
        with self._lock:
            return [(d, dom, v, ok, n) for (d, dom, v, ok), n in self._counts.items() if d >= cutoff]

    def total(self, session: Session) -> int:
        self.refresh(session)
        with self._lock:
            return sum(self._counts.values())


def _spend_days(session: Session, since: datetime, days: list[str]) -> dict[str, list[float]]:
    day = day_of(session, SpendEntry.created_at)
    keys = (col(SpendEntry.kind), col(SpendEntry.category), col(SpendEntry.active))
    rows = session.execute(
        sa_select(day, *keys, func.sum(SpendEntry.amount_usd))
        .where(col(SpendEntry.created_at) >= since)
        .group_by(day, *keys)
    ).all()
    index = {d: i for i, d in enumerate(days)}
    series = {"gpu actual": [0.0] * len(days), "reserved": [0.0] * len(days), "llm": [0.0] * len(days)}
    for d, kind, category, active, amount in rows:
        i = index.get(str(d))
        if i is None:
            continue
        if kind == "actual":
            series["llm" if category == "llm" else "gpu actual"][i] += float(amount or 0.0)
        elif active:
            series["reserved"][i] += float(amount or 0.0)
    return {k: [round(v, 4) for v in vals] for k, vals in series.items()}


def _success_by_version(rows: list[tuple[str, str, str | None, bool, int]], days: list[str]) -> dict[str, list[Any]]:
    """Live success rate per model version per day (None on days without its records)."""
    totals: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for d, _domain, version, ok, n in rows:
        cell = totals[version or "base"][d]
        cell[0] += n if ok else 0
        cell[1] += n
    out: dict[str, list[Any]] = {}
    for version, by_day in sorted(totals.items()):
        out[version] = [round(by_day[d][0] / by_day[d][1], 4) if d in by_day and by_day[d][1] else None for d in days]
    return out


def overview(
    session: Session,
    settings: Settings,
    records: RecordRollup,
    *,
    window_days: int = 30,
    now: datetime | None = None,
) -> dict:
    now = now or utcnow()
    days = _days(now, window_days)
    since = datetime.fromisoformat(days[0]).replace(tzinfo=now.tzinfo)
    champion, candidate = alias_target(session, Alias.CHAMPION), alias_target(session, Alias.CANDIDATE)
    spend = spend_summary(session, now)
    versions = session.exec(
        select(ModelVersion.id, ModelVersion.status, ModelVersion.created_at, ModelVersion.eval_report).order_by(
            col(ModelVersion.created_at)
        )
    ).all()
    moves = session.exec(
        select(AliasHistory)
        .where(AliasHistory.alias == Alias.CHAMPION, col(AliasHistory.at) >= since)
        .order_by(col(AliasHistory.id))
    ).all()
    runs = session.exec(select(TrainingRun).where(col(TrainingRun.status).in_(IN_FLIGHT))).all()
    stages = session.exec(select(EvalStage).where(col(EvalStage.status).in_(STAGES_IN_FLIGHT))).all()
    reserved = dict(
        session.exec(
            select(SpendEntry.run_id, func.sum(SpendEntry.amount_usd))
            .where(col(SpendEntry.run_id).in_([r.id for r in runs] + [s.id for s in stages]))
            .where(SpendEntry.kind == "reservation", SpendEntry.active == True)  # noqa: E712
            .group_by(SpendEntry.run_id)
        ).all()
    )
    pending = session.exec(
        select(Approval).where(Approval.status == ApprovalStatus.PENDING).order_by(col(Approval.expires_at))
    ).all()
    decisions = session.exec(select(Decision).order_by(col(Decision.created_at).desc()).limit(10)).all()
    record_rows = records.rows(session, since)
    scored = [(vid, st, at, rep) for vid, st, at, rep in versions if (rep or {}).get("candidate_score") is not None]
    return {
        "now": iso(now),
        "paused": is_paused(session),
        "champion": champion,
        "candidate": candidate,
        "spend": {
            **spend.to_dict(),
            "cap_per_day_usd": settings.budget.per_day_usd,
            "cap_per_month_usd": settings.budget.per_month_usd,
            "days": days,
            "series": _spend_days(session, since, days),
        },
        "golden": [
            {"id": vid, "status": st, "at": iso(at), "score": float(rep["candidate_score"])}
            for vid, st, at, rep in scored
        ],
        "versions": len(versions),
        "live": {"days": days, "series": _success_by_version(record_rows, days)},
        "marks": [
            {
                "at": iso(m.at),
                "day": as_utc(m.at).date().isoformat(),
                "to": m.new_version,
                "actor": m.actor,
                "reason": m.reason,
                "kind": "rollback" if "rollback" in m.reason.lower() or "rolled" in m.reason.lower() else "promotion",
            }
            for m in moves
        ],
        "in_flight": [
            {
                "id": r.id,
                "kind": "run",
                "status": r.status,
                "dph": r.dph,
                "since": iso(r.started_at or r.created_at),
                "cost_so_far_usd": round(elapsed_cost(r.dph, as_utc(r.started_at), now), 4) if r.started_at else 0.0,
                "reserved_usd": round(float(reserved.get(r.id) or 0.0), 4),
                "estimated_cost_usd": r.estimated_cost_usd,
            }
            for r in runs
        ]
        + [
            {
                "id": s.id,
                "kind": "evaluation",
                "status": s.status,
                "dph": s.dph,
                "since": iso(s.launched_at or s.created_at),
                "cost_so_far_usd": round(elapsed_cost(s.dph, as_utc(s.launched_at), now), 4) if s.launched_at else 0.0,
                "reserved_usd": round(float(reserved.get(s.id) or s.reserved_usd), 4),
                "estimated_cost_usd": s.reserved_usd,
            }
            for s in stages
        ],
        "pending": [
            {
                "id": a.id,
                "kind": a.kind,
                "decision_id": a.decision_id,
                "why": a.summary.get("why") or a.summary.get("what") or "",
                "cost_ceiling_usd": a.cost_ceiling_usd,
                "expires_at": iso(a.expires_at),
                "expires_in_min": round((as_utc(a.expires_at) - now).total_seconds() / 60, 1),
            }
            for a in pending
        ],
        "decisions": [
            {
                "id": d.id,
                "action": d.action,
                "reason": d.reason,
                "rationale": d.rationale,
                "outcome": d.outcome,
                "actor": d.actor,
                "at": iso(d.created_at),
            }
            for d in decisions
        ],
    }


def run_page(session: Session, run_id: str, *, now: datetime | None = None) -> dict:
    now = now or utcnow()
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"no run {run_id!r}")
    attempts = session.exec(select(RunAttempt).where(RunAttempt.run_id == run_id).order_by(col(RunAttempt.n))).all()
    events = session.exec(
        select(Event)
        .where(col(Event.entity_type).in_([EntityType.TRAINING_RUN, EntityType.RUN_ATTEMPT]))
        .where(col(Event.entity_id).in_([run_id, *(a.id for a in attempts)]))
        .order_by(col(Event.id))
    ).all()
    ledger = session.exec(
        select(SpendEntry.kind, SpendEntry.active, func.sum(SpendEntry.amount_usd))
        .where(SpendEntry.run_id == run_id)
        .group_by(col(SpendEntry.kind), col(SpendEntry.active))
    ).all()
    reserved = sum(float(a or 0) for k, active, a in ledger if k == "reservation" and active)
    actual = sum(float(a or 0) for k, _active, a in ledger if k == "actual")
    running = run.status in IN_FLIGHT and run.started_at is not None
    so_far = run.actual_cost_usd if run.actual_cost_usd is not None else actual
    if running:
        so_far = elapsed_cost(run.dph, as_utc(run.started_at), now)  # type: ignore[arg-type]
    metrics = run.metrics or {}
    return {
        "method": describe_method(((run.config or {}).get("plan")) or {}),
        "run": {
            "id": run.id,
            "status": run.status,
            "reason": run.status_message or run.termination_reason,
            "termination_reason": run.termination_reason,
            "provider": run.provider,
            "label": run.label,
            "offer_id": run.offer_id,
            "instance_id": run.instance_id,
            "dph": run.dph,
            "decision_id": run.decision_id,
            "approval_id": run.approval_id,
            "snapshot_id": run.snapshot_id,
            "estimated_cost_usd": run.estimated_cost_usd,
            "actual_cost_usd": run.actual_cost_usd,
            "created_at": iso(run.created_at),
            "started_at": iso(run.started_at),
            "finished_at": iso(run.finished_at),
        },
        "cost": {
            "so_far_usd": round(float(so_far or 0.0), 4),
            "reserved_usd": round(reserved, 4),
            "actual_usd": round(actual, 4),
            "estimated_usd": run.estimated_cost_usd,
        },
        "metrics": {k: v for k, v in metrics.items() if not isinstance(v, list | dict)},
        "loss": {
            "train": [p for p in metrics.get("loss_curve") or [] if isinstance(p, list | tuple) and len(p) == 2],
            "eval": [p for p in metrics.get("eval_curve") or [] if isinstance(p, list | tuple) and len(p) == 2],
        },
        "attempts": [
            {
                "id": a.id,
                "n": a.n,
                "status": a.status,
                "host": a.host,
                "gpu": a.gpu,
                "offer_id": a.offer_id,
                "instance_id": a.instance_id,
                "dph": a.dph,
                "launched_at": iso(a.launched_at),
                "running_since": iso(a.running_since),
                "last_beat_at": iso(a.last_beat_at),
                "last_seq": a.last_seq,
                "beat_age_s": round((now - as_utc(a.last_beat_at)).total_seconds(), 1)
                if a.last_beat_at and a.ended_at is None
                else None,
                "ended_at": iso(a.ended_at),
                "end_reason": a.end_reason,
            }
            for a in attempts
        ],
        "events": [
            {"at": iso(e.at), "entity": e.entity_id, "actor": e.actor, "old": e.old, "new": e.new, "reason": e.reason}
            for e in events
        ],
    }


def runs_list(session: Session, *, limit: int = 50) -> list[TrainingRun]:
    """The newest runs (rows as they are; the templates read their fields)."""
    return list(session.exec(select(TrainingRun).order_by(col(TrainingRun.created_at).desc()).limit(limit)).all())


def versions_list(session: Session, *, limit: int = 50) -> list[dict[str, Any]]:
    rows = session.exec(
        select(ModelVersion.id, ModelVersion.status, ModelVersion.run_id, ModelVersion.created_at)
        .order_by(col(ModelVersion.created_at).desc())
        .limit(limit)
    ).all()
    return [{"id": i, "status": s, "run_id": r, "at": iso(at)} for i, s, r, at in rows]


def data_page(session: Session, records: RecordRollup, *, window_days: int = 30, now: datetime | None = None) -> dict:
    now = now or utcnow()
    days = _days(now, window_days)
    since = datetime.fromisoformat(days[0]).replace(tzinfo=now.tzinfo)
    rows = records.rows(session, since)
    index = {d: i for i, d in enumerate(days)}
    per_domain: dict[str, list[int]] = defaultdict(lambda: [0] * len(days))
    for d, domain, _v, _ok, n in rows:
        if (i := index.get(d)) is not None:
            per_domain[domain][i] += n
    total = records.total(session)
    dead_total = session.exec(select(func.count()).select_from(DeadLetter)).one()
    reasons = session.exec(
        select(DeadLetter.reason, func.count())
        .where(col(DeadLetter.received_at) >= since)
        .group_by(DeadLetter.reason)
        .order_by(func.count().desc())
        .limit(15)
    ).all()
    dead = session.exec(select(DeadLetter).order_by(col(DeadLetter.id).desc()).limit(12)).all()
    snapshots = session.exec(select(DatasetSnapshot).order_by(col(DatasetSnapshot.created_at).desc()).limit(20)).all()
    return {
        "days": days,
        "per_domain": dict(sorted(per_domain.items())),
        "records_total": int(total),
        "records_window": sum(n for *_rest, n in rows),
        "dead_total": int(dead_total),
        "dead_reasons": [{"reason": r, "count": int(n)} for r, n in reasons],
        "dead_letters": [
            {
                "id": d.id,
                "source": d.source,
                "location": d.location,
                "reason": d.reason,
                "raw": d.raw[:160],
                "at": iso(d.received_at),
            }
            for d in dead
        ],
        "snapshots": [
            {
                "id": s.id,
                "at": iso(s.created_at),
                "counts": {"train": s.train_count, "eval": s.eval_count, "golden": s.golden_count},
                "records_in": (s.manifest or {}).get("records_in"),
                "dropped": (s.manifest or {}).get("dropped") or {},
                "scrubbed": (s.manifest or {}).get("scrubbed") or {},
                "quarantined": len((s.manifest or {}).get("quarantined") or []),
            }
            for s in snapshots
        ],
    }
