"""Level-triggered reconciliation: what the provider says exists vs what the store says should exist.

Each pass (at start-up and every ``scheduler.reconcile_interval_s``):

- an instance of ours (``pilot.runs.ownership``: label ``learning-pilot/<env>/<installation>/<run_id>`` with our
  installation id, or an old-format ``learning-pilot/<env>/<run_id>`` of a run this store knows) whose run is
  terminal, unknown, or pointing at a different instance is an **orphan**: destroyed and verified gone (it bills for
  nothing), and what it billed is settled (its run's ledger entry, kept at the larger figure, or ``orphan-<id>``);
  an instance of our env with another installation id is reported (``other_installations``), never destroyed;
- an attempt left ``ending`` (its destroy was not verified) is destroyed again; once gone, a terminal run that kept
  its reservation for it is settled;
- a run in PROVISIONING or RUNNING with no attempt rows (a local run) whose instance the provider no longer has is
  failed
  (``INSTANCE_VANISHED``) and its spend settled at elapsed time x $/h (a rented run's vanished host is its
  driver's to handle: collect what the job uploaded, or retry on another host). While the daemon runs, a cycle may be
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
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, select

from pilot.context import PilotContext
from pilot.errors import ConflictError, TransitionError
from pilot.evaluation.remote import live_stage_labels, reconcile_stages
from pilot.runs.attempts import attempts_of, charge_book, label_cost, provider_cost
from pilot.runs.lifecycle import is_remote
from pilot.runs.ownership import note_others, ownership
from pilot.runs.teardown import destroy_all, destroy_verified, teardown_policy
from pilot.spend.costs import cost_of_seconds, elapsed_cost
from pilot.spend.ledger import settle
from pilot.store.leases import holder, run_lease
from pilot.store.models import RunAttempt, SpendEntry, TrainingRun, as_utc, utcnow
from pilot.store.status import AttemptStatus, EntityType, RunStatus, RunTerminationReason
from pilot.store.writers import record_event, switch_attempt_status, switch_run_status
from tools.errors import PilotError
from tools.gpu.base import Instance, InstanceState, LabelOwner, parse_label

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
    settled: list[dict[str, Any]] = field(default_factory=list)  # what destroyed orphans / confirmed-gone runs billed
    other_installations: dict[str, int] = field(default_factory=dict)  # label -> live instances: left alone

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


def _last_activity(ctx: PilotContext, run: TrainingRun) -> datetime:
    """The newest of the run's creation and its attempts' launches, heartbeats and ends."""
    with ctx.store.session() as session:
        tried = attempts_of(session, run.id)
    stamps = [as_utc(s) for a in tried for s in (a.created_at, a.launched_at, a.last_beat_at, a.ended_at) if s]
    return max([as_utc(run.created_at), *stamps])


def _lost_cost(ctx: PilotContext, run: TrainingRun) -> float:
    """0 for a run that never rented; else what the provider billed under its label (``pilot.runs.remote``)."""
    with ctx.store.session() as session:
        rented = any(a.launched_at is not None for a in attempts_of(session, run.id))
    return provider_cost(ctx, run) if rented else 0.0


def _has_attempts(ctx: PilotContext, run: TrainingRun) -> bool:
    with ctx.store.session() as session:
        return bool(attempts_of(session, run.id))


def _driven_elsewhere(ctx: PilotContext, run: TrainingRun, now: datetime) -> bool:
    """A live process holds the run's lease (or its thread's): it handles breaches and retries itself."""
    with ctx.store.session() as session:
        return holder(session, run_lease(run.id), now=now) is not None


def _finish_ending(ctx: PilotContext, report: ReconcileReport) -> None:
    """Attempts whose destroy was never confirmed: try again; ``ended`` once the provider says gone."""
    with ctx.store.session() as session:
        ending = session.exec(select(RunAttempt).where(RunAttempt.status == AttemptStatus.ENDING)).all()
    for attempt in ending:
        if attempt.instance_id is None:
            continue
        outcome = destroy_verified(ctx.gpu, attempt.instance_id, teardown_policy(ctx.settings))
        if not outcome.gone:
            report.orphans_not_verified.append(attempt.instance_id)
            continue
        with ctx.store.session(write=True) as session:
            switch_attempt_status(
                session,
                attempt.id,
                AttemptStatus.ENDED,
                actor="system",
                reason=f"reconciler: instance {attempt.instance_id} destroyed and verified gone",
            )
        run = _reload(ctx, attempt.run_id)
        if run is not None and RunStatus(run.status).is_terminal and _reserved(ctx, run.id):
            # Its end kept the reservation because this instance was not confirmed gone: settle it now.
            cost = provider_cost(ctx, run)
            with ctx.store.session(write=True) as session:
                settle(session, run.id, cost, note="reconciler: instance confirmed gone after an unverified destroy")
                row = session.get(TrainingRun, run.id)
                if row is not None:
                    row.actual_cost_usd = max(row.actual_cost_usd or 0.0, cost)
            report.settled.append({"run_id": run.id, "cost_usd": cost})


def _reserved(ctx: PilotContext, run_id: str) -> bool:
    with ctx.store.session() as session:
        return (
            session.exec(
                select(SpendEntry.id).where(
                    SpendEntry.run_id == run_id,
                    SpendEntry.kind == "reservation",
                    SpendEntry.active == True,  # noqa: E712
                )
            ).first()
            is not None
        )


def _settle_orphan(
    ctx: PilotContext,
    instance: Instance,
    run: TrainingRun | None,
    report: ReconcileReport,
    book: dict[str, float] | None,
) -> None:
    """What a destroyed orphan billed reaches the ledger. Under a finished run's own label: that run's entry,
    corrected to the larger figure (never counted twice); any other label (no run, a live run's stray instance, an
    old-format label): one ``orphan-<run id>`` entry per label, what the provider charged for it."""
    if run is not None and RunStatus(run.status).is_terminal and instance.label == run.label:
        run_id = run.id
        cost = provider_cost(ctx, run, book=book) if is_remote(run.provider) else elapsed_cost(run.dph, run.started_at)
    else:
        parsed = parse_label(instance.label)
        run_id = f"orphan-{parsed.run_id if parsed is not None else instance.id}"[:40]
        started = instance.started_at or time.time()
        fallback = cost_of_seconds(instance.dph_total, time.time() - started)
        cost = label_cost(ctx, instance.label, since=started, fallback_usd=fallback, book=book)
    if cost <= 0 and run_id.startswith("orphan-"):
        return
    with ctx.store.session(write=True) as session:
        settle(session, run_id, cost, note=f"reconciler: orphan instance {instance.id} ({instance.label})"[:500])
    report.settled.append({"run_id": run_id, "cost_usd": cost, "instance_id": instance.id})


def _reload(ctx: PilotContext, run_id: str) -> TrainingRun | None:
    with ctx.store.session() as session:
        return session.get(TrainingRun, run_id)


def reconcile(
    ctx: PilotContext,
    *,
    state: ReconcileState | None = None,
    now: datetime | None = None,
    pending_grace_s: float = 600.0,
) -> ReconcileReport:
    """One pass. ``state`` None means start-up: a vanished instance fails its run at once."""
    now = now or utcnow()
    report = ReconcileReport()
    prefix = ctx.label_prefix
    policy = teardown_policy(ctx.settings)
    _finish_ending(ctx, report)
    try:
        # Evaluation stages have no run row: reap those a dead daemon left open, protect the live ones.
        reconcile_stages(ctx, now=now)
        protected = live_stage_labels(ctx, now=now)
        listed = ctx.gpu.list_owned(prefix)
    except PilotError as exc:
        report.errors.append(f"list_owned on {ctx.gpu.name}: {exc}")
        logger.warning("Reconciler: cannot list instances on %s: %s", ctx.gpu.name, exc)
        return report
    # Ours only: another installation's instances with our env are reported, never destroyed (pilot.runs.ownership).
    own = ownership(ctx)
    report.other_installations = dict(
        Counter(i.label for i in listed if own.owner(i.label) is LabelOwner.OTHER_INSTALLATION)
    )
    note_others(ctx, report.other_installations, actor="system", seen_by="reconciler")
    owned = [i for i in listed if own.is_ours(i.label) and i.label not in protected]
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
        if (now - _last_activity(ctx, lost)) < timedelta(seconds=pending_grace_s) or _driven_elsewhere(ctx, lost, now):
            continue
        # Its instances rented but never recorded are destroyed first, so the settled cost includes all they billed.
        unrecorded = [i for i in owned if i.label == lost.label]
        verified = [t.gone for t in destroy_all(ctx.gpu, [i.id for i in unrecorded], policy)]
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

    # Orphans: live instances no live run accounts for, destroyed together (one bulk call, one verification).
    found: list[tuple[Instance, TrainingRun | None, str]] = []
    for instance in owned:
        parsed = parse_label(instance.label)
        run = runs.get(parsed.run_id) if parsed is not None else None
        if run is not None and not RunStatus(run.status).is_terminal and run.instance_id in (None, instance.id):
            continue
        why = (
            "no run with this label"
            if run is None
            else f"run {run.id} is {run.status}"
            if RunStatus(run.status).is_terminal
            else f"run {run.id} uses instance {run.instance_id}"
        )
        found.append((instance, run, why))
    outcomes = destroy_all(ctx.gpu, [i.id for i, _, _ in found], policy)
    # What they billed, from one read of the provider's charges (not one per orphan).
    starts = [i.started_at for i, _, _ in found if i.started_at] + [
        as_utc(r.created_at).timestamp() for r in runs.values()
    ]
    book = charge_book(ctx, min(starts, default=time.time())) if any(o.gone for o in outcomes) else None
    for (instance, run, why), outcome in zip(found, outcomes, strict=True):
        gone, error = outcome.gone, outcome.error
        (report.orphans_destroyed if gone else report.orphans_not_verified).append(instance.id)
        if gone:
            _settle_orphan(ctx, instance, run, report, book)
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type=EntityType.INSTANCE,
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
        if _has_attempts(ctx, run):
            continue  # a rented run's driver (the jobs worker) collects, or retries on another host: not lost
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
        cost = (
            provider_cost(ctx, run)
            if is_remote(run.provider)
            else elapsed_cost(run.dph, run.started_at or run.created_at, now)
        )
        message = f"instance {run.instance_id} vanished from {ctx.gpu.name}"
        if _fail(ctx, run, RunTerminationReason.INSTANCE_VANISHED, message, cost):
            report.runs_failed.append({"run_id": run.id, "reason": RunTerminationReason.INSTANCE_VANISHED.value})
    if state is not None:
        state.suspects = seen_now
    report.suspects = sorted(seen_now)

    return report
