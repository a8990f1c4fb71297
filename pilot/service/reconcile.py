"""Level-triggered reconciliation: what the provider says exists vs what the store says should exist.

Each pass (at start-up and every ``scheduler.reconcile_interval_s``):

- an owned instance (label ``learning-pilot/<env>/<run_id>``) whose run is terminal, unknown, or pointing at a
  different instance is an **orphan**: destroyed and verified gone (it bills for nothing);
- a run in PROVISIONING or RUNNING whose instance the provider no longer has is failed
  (``INSTANCE_VANISHED``) and its spend settled at elapsed time x $/h. While the daemon runs, a cycle may be
  between destroying a finished run's instance and recording the result, so a vanished instance must be seen on
  two passes (``ReconcileState``) before the run is failed; at start-up, with no cycle running, one pass is enough;
- a PENDING run with no instance older than ``pending_grace_s`` (10 min) is failed (``DAEMON_LOST_TRACK``): the
  daemon crashed between committing the reservation and launching, and the reservation is released; so is a live
  remote run left between two hosts (no instance) for as long. This runs before the orphan check, so an instance
  rented but never recorded (a crash between "rented" and "recorded") is destroyed in the same pass.

Every action writes an event. A provider error ends the pass early (nothing is concluded from a failed list).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, select

from pilot.context import PilotContext
from pilot.errors import ConflictError, TransitionError
from pilot.spend.ledger import settle
from pilot.store.models import TrainingRun, as_utc, utcnow
from pilot.store.status import RunStatus, RunTerminationReason
from pilot.store.writers import record_event, switch_run_status
from tools.errors import PilotError
from tools.gpu.base import InstanceState

logger = logging.getLogger(__name__)

LIVE = (RunStatus.PROVISIONING.value, RunStatus.RUNNING.value)


@dataclass
class ReconcileState:
    """Memory between passes of one daemon: runs whose instance was seen vanished once."""

    suspects: set[str] = field(default_factory=set)


@dataclass
class ReconcileReport:
    owned: int = 0
    orphans_destroyed: list[str] = field(default_factory=list)
    orphans_not_verified: list[str] = field(default_factory=list)
    runs_failed: list[dict[str, Any]] = field(default_factory=list)
    suspects: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fail(ctx: PilotContext, run: TrainingRun, reason: RunTerminationReason, message: str, cost: float) -> bool:
    try:
        with ctx.store.session(write=True) as session:
            switch_run_status(
                session,
                run.id,
                reason.to_status(),
                actor="system",
                reason=f"reconciler: {message}",
                expected=RunStatus(run.status),
                termination_reason=reason,
                status_message=message,
                actual_cost_usd=cost,
            )
            settle(session, run.id, cost, note=f"reconciler: {reason}")
    except (ConflictError, TransitionError):
        return False  # the run moved on meanwhile: nothing to fix
    logger.warning("Reconciler failed run %s (%s): %s; settled $%.4f", run.id, reason, message, cost)
    return True


def _last_activity(run: TrainingRun) -> datetime:
    """The newest of the run's creation and its remote attempts' launches and ends (``pilot.runs.remote``)."""
    stamps = [
        float(a[k])
        for a in ((run.config or {}).get("remote") or {}).get("attempts", [])
        for k in ("launched_at", "ended_at")
        if a.get(k)
    ]
    created = as_utc(run.created_at)
    return max([created, *(datetime.fromtimestamp(t, tz=created.tzinfo) for t in stamps)])


def _lost_cost(ctx: PilotContext, run: TrainingRun) -> float:
    """0 for a run that never rented; else what the provider billed under its label (``pilot.runs.remote``)."""
    from pilot.runs.remote import (
        provider_cost,  # pilot.runs.remote imports pilot.runs.lifecycle, which imports this module
    )

    attempts = ((run.config or {}).get("remote") or {}).get("attempts", [])
    return provider_cost(ctx, run, attempts) if attempts else 0.0


def _reload(ctx: PilotContext, run_id: str) -> TrainingRun | None:
    with ctx.store.session() as session:
        return session.get(TrainingRun, run_id)


def reconcile(
    ctx: PilotContext,
    *,
    state: ReconcileState | None = None,
    now: datetime | None = None,
    pending_grace_s: float = 600.0,
    destroy_attempts: int = 5,
) -> ReconcileReport:
    """One pass. ``state`` None means start-up: a vanished instance fails its run at once."""
    from pilot.service.killswitch import destroy_verified

    now = now or utcnow()
    report = ReconcileReport()
    prefix = ctx.label_prefix
    from pilot.evaluation.remote import (  # imports pilot.runs.lifecycle: a cycle at top level
        live_stage_labels,
        reconcile_stages,
    )

    try:
        # Evaluation stages have no run row: reap those a dead daemon left open, protect the live ones.
        reconcile_stages(ctx, now=now)
        protected = live_stage_labels(ctx, now=now)
        owned = [i for i in ctx.gpu.list_owned(prefix) if i.label not in protected]
    except PilotError as exc:
        report.errors.append(f"list_owned on {ctx.gpu.name}: {exc}")
        logger.warning("Reconciler: cannot list instances on %s: %s", ctx.gpu.name, exc)
        return report
    report.owned = len(owned)
    with ctx.store.session() as session:
        runs = {
            r.id: r for r in session.exec(select(TrainingRun).where(col(TrainingRun.label).startswith(prefix))).all()
        }
        # PENDING, or live between two hosts of a remote run (the previous instance verified gone).
        pending = session.exec(
            select(TrainingRun).where(
                col(TrainingRun.status).in_((RunStatus.PENDING.value, *LIVE)), col(TrainingRun.instance_id).is_(None)
            )
        ).all()

    # Runs with no instance the daemon lost track of; first, so that their labelled instances are orphans below.
    for lost in pending:
        if (now - _last_activity(lost)) < timedelta(seconds=pending_grace_s):
            continue
        # Its instances rented but never recorded are destroyed first, so the settled cost includes all they billed.
        unrecorded = [i for i in owned if i.label == lost.label]
        verified = [destroy_verified(ctx.gpu, i.id, attempts=destroy_attempts)[0] for i in unrecorded]
        if not all(verified):
            continue  # the orphan check below reports it; the run is failed on a later pass
        owned = [i for i in owned if i.label != lost.label]
        report.orphans_destroyed.extend(i.id for i in unrecorded)
        message = f"{lost.status} for over {pending_grace_s / 60:.0f} min with no instance; reservation released"
        if unrecorded:
            message += f"; unrecorded instance(s) {', '.join(i.id for i in unrecorded)} destroyed and verified gone"
        if _fail(ctx, lost, RunTerminationReason.DAEMON_LOST_TRACK, message, _lost_cost(ctx, lost)):
            report.runs_failed.append({"run_id": lost.id, "reason": RunTerminationReason.DAEMON_LOST_TRACK.value})
            runs[lost.id] = _reload(ctx, lost.id) or lost

    # Orphans: live instances no live run accounts for.
    for instance in owned:
        run = runs.get(instance.label[len(prefix) :])
        if run is not None and not RunStatus(run.status).is_terminal and run.instance_id in (None, instance.id):
            continue
        why = (
            "no run with this label"
            if run is None
            else f"run {run.id} is {run.status}"
            if RunStatus(run.status).is_terminal
            else f"run {run.id} uses instance {run.instance_id}"
        )
        gone, _attempts, error = destroy_verified(ctx.gpu, instance.id, attempts=destroy_attempts)
        (report.orphans_destroyed if gone else report.orphans_not_verified).append(instance.id)
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type="instance",
                entity_id=instance.id,
                actor="system",
                reason=f"orphan ({why}): " + ("destroyed and verified gone" if gone else f"NOT verified gone: {error}"),
                old=str(instance.state),
                new="gone" if gone else str(instance.state),
                data={"label": instance.label, "provider": ctx.gpu.name, "dph": instance.dph_total},
            )
        if not gone:
            logger.error(
                "Failed to terminate orphan instance %s. Terminate it manually to avoid accumulating charges.",
                instance.id,
            )

    # Runs whose instance vanished.
    owned_ids = {i.id for i in owned}
    seen_now: set[str] = set()
    for run in runs.values():
        if run.status not in LIVE or run.instance_id is None or run.instance_id in owned_ids:
            continue
        try:
            vanished = ctx.gpu.poll(run.instance_id).state is InstanceState.GONE
        except PilotError as exc:
            report.errors.append(f"poll {run.instance_id}: {exc}")
            continue
        if not vanished:
            continue
        if state is not None and run.id not in state.suspects:
            seen_now.add(run.id)
            continue
        started = as_utc(run.started_at or run.created_at)
        cost = round(run.dph * max((now - started).total_seconds(), 0.0) / 3600, 6)
        message = f"instance {run.instance_id} vanished from {ctx.gpu.name}"
        if _fail(ctx, run, RunTerminationReason.INSTANCE_VANISHED, message, cost):
            report.runs_failed.append({"run_id": run.id, "reason": RunTerminationReason.INSTANCE_VANISHED.value})
    if state is not None:
        state.suspects = seen_now
    report.suspects = sorted(seen_now)

    return report
