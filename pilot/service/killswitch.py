"""The kill switch: stop spending now, verify it stopped, and stay stopped until a human resumes.

Order (each step runs even when an earlier one partly failed; what could not be done goes into the report):

1. persist ``paused`` (committed before anything else, so no new launch can start, in any process, and the
   flag survives restarts until ``resume``);
2. cancel every pending approval (so an approval clicked later cannot start a run);
3. destroy every instance of ours and **verify with the provider** that each is gone (``destroy_owned``: the ids the
   store knows at once in one bulk call, then one look at the account verifies them and finds the instances of ours
   the store does not know; retried until ``gpu.teardown_deadline_s``). Ours = our env and installation id, or an
   old-format label of a run this store knows (``pilot.runs.ownership``); another installation's instances are
   reported (``other_installations``), never destroyed. A list that fails is a problem in the report, and the ids
   the store knows are destroyed anyway;
4. cancel the runs still in flight (``RunTerminationReason.KILL_SWITCH``) and settle their spend (what the provider
   charged for the run's label over all its attempts, never less than elapsed time x $/h; zero for runs that never
   rented) — except a run whose instance is not confirmed gone: it keeps its reservation until the reconciler
   confirms the instance gone and settles it;
   end their attempts (``ending`` when the instance is not confirmed gone) and cancel evaluation stages;
5. re-assert the last stable champion on the serving target (``pilot.serving.deploy.revert_to_stable``);
6. notify Slack (when configured); 7. write an ``incident`` event holding the report.

It shares no lock with the scheduler: it uses its own sessions and threads, so it works while a cycle is
running or stuck. It does not need to stop any actor: every actor asks the effect gate (``pilot/spend/effects.py``)
right before renting, promoting or deploying, and the gate refuses while paused. It is idempotent: a second call
finds nothing left to do and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlmodel import Session, col, select

from pilot.context import PilotContext
from pilot.errors import ConflictError, TransitionError
from pilot.runs.attempts import attempts_of, charge_book, label_cost, provider_cost
from pilot.runs.lifecycle import is_remote
from pilot.runs.ownership import note_others, ownership
from pilot.runs.teardown import TeardownPolicy, destroy_owned, teardown_policy
from pilot.spend.costs import elapsed_cost
from pilot.spend.ledger import settle
from pilot.spend.settlement import expect_charges
from pilot.store.models import EvalStage, RunAttempt, TrainingRun, as_utc, utcnow
from pilot.store.status import ApprovalStatus, AttemptStatus, EntityType, RunStatus, RunTerminationReason, StageStatus
from pilot.store.writers import (
    is_paused,
    record_event,
    set_paused,
    switch_approval_status,
    switch_attempt_status,
    switch_run_status,
    switch_stage_status,
)
from pilot.supervisor import approvals

logger = logging.getLogger(__name__)

IN_FLIGHT = (RunStatus.PENDING, RunStatus.PROVISIONING, RunStatus.RUNNING, RunStatus.COLLECTING)


@dataclass(frozen=True)
class InstanceOutcome:
    instance_id: str
    label: str
    gone: bool
    attempts: int
    error: str | None = None


@dataclass
class KillReport:
    actor: str
    reason: str
    started_at: str
    was_paused: bool = False
    paused: bool = False
    approvals_cancelled: list[str] = field(default_factory=list)
    instances: list[InstanceOutcome] = field(default_factory=list)
    other_installations: dict[str, int] = field(default_factory=dict)  # label -> live instances: left alone
    runs_cancelled: list[dict[str, Any]] = field(default_factory=list)
    deployment: dict[str, Any] | None = None
    slack_notified: bool = False
    problems: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.paused and not self.problems and all(i.gone for i in self.instances)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["instances_destroyed"] = [i.instance_id for i in self.instances if i.gone]
        data["instances_not_verified"] = [i.instance_id for i in self.instances if not i.gone]
        return data


@dataclass(frozen=True)
class _Cancel:
    run: TrainingRun
    cost: float
    still_alive: bool
    message: str
    defer: list[dict[str, Any]]


T = TypeVar("T")


def _in_one_transaction(
    ctx: PilotContext,
    items: Sequence[T],
    write: Callable[[Session, T], None],
    report: KillReport,
    what: str,
    *,
    key: Callable[[T], str],
) -> list[T]:
    """``write`` every item in ONE write transaction (a kill touches many rows: one commit, not one each) and return
    those written; an item that ended meanwhile (``ConflictError``/``TransitionError``, raised before it writes
    anything) is skipped. Any other failure rolls the batch back and the items are written one transaction each, so
    one bad row cannot block the rest (its failure goes into the report)."""
    if not items:
        return []
    written: list[T] = []
    try:
        with ctx.store.session(write=True) as session:
            for item in items:
                try:
                    write(session, item)
                except (ConflictError, TransitionError):
                    continue  # finished on its own meanwhile
                written.append(item)
        return written
    except Exception:
        logger.exception("Kill switch: writing %d %ss in one transaction failed; one at a time", len(items), what)
    written = []
    for item in items:
        try:
            with ctx.store.session(write=True) as session:
                write(session, item)
            written.append(item)
        except (ConflictError, TransitionError):
            pass
        except Exception as exc:
            logger.exception("Kill switch: %s %s failed", what, key(item))
            report.problems.append(f"{what} {key(item)}: {exc.__class__.__name__}: {exc}")
    return written


def _run_cost(
    ctx: PilotContext,
    run: TrainingRun,
    now: datetime,
    book: dict[str, float] | None,
    tried: list[RunAttempt],
    defer: list[dict[str, Any]],
) -> float:
    """What the run spent: the provider's charges for its label (every attempt, also one caught between two
    hosts), never less than elapsed time x $/h; zero for a run that never rented."""
    if is_remote(run.provider):
        return provider_cost(ctx, run, book=book, tried=tried, defer=defer)
    return elapsed_cost(run.dph, run.started_at or run.created_at, now) if run.instance_id else 0.0


def engage(ctx: PilotContext, *, actor: str, reason: str, policy: TeardownPolicy | None = None) -> KillReport:
    """Pull the kill switch. Never raises for a step that fails: the report says what could not be done."""
    t0 = time.monotonic()
    report = KillReport(actor=actor, reason=reason, started_at=utcnow().isoformat(timespec="seconds"))
    why = f"kill switch: {reason}"

    # 1. paused first, in its own committed transaction.
    try:
        with ctx.store.session(write=True) as session:
            report.was_paused = set_paused(session, True, actor=actor, reason=why)
        report.paused = True
    except Exception as exc:  # the store itself failing is the one thing we cannot work around; keep going
        logger.exception("Kill switch: could not persist the pause flag")
        report.problems.append(f"pause flag not persisted: {exc.__class__.__name__}: {exc}")

    # 2. pending approvals.
    try:
        with ctx.store.session() as session:
            pending_ids = [a.id for a in approvals.pending(session)]
        for approval_id in pending_ids:
            try:
                with ctx.store.session(write=True) as session:
                    switch_approval_status(
                        session, approval_id, ApprovalStatus.CANCELLED, actor=actor, reason=why, note=why[:500]
                    )
                report.approvals_cancelled.append(approval_id)
            except (ConflictError, TransitionError):
                pass  # answered or expired meanwhile: nothing to cancel
    except Exception as exc:
        logger.exception("Kill switch: cancelling approvals failed")
        report.problems.append(f"approvals: {exc.__class__.__name__}: {exc}")

    # 3. every instance of ours: the ids the store knows destroyed at once, then one look at the account verifies
    # them and finds the rest (``destroy_owned``). Another installation's instances are reported, never destroyed.
    with ctx.store.session() as session:
        in_flight = session.exec(
            select(TrainingRun).where(col(TrainingRun.status).in_([s.value for s in IN_FLIGHT]))
        ).all()
        live_attempts = session.exec(
            select(RunAttempt).where(col(RunAttempt.status).in_([s.value for s in AttemptStatus if s.may_bill]))
        ).all()
        live_stages = session.exec(
            select(EvalStage).where(col(EvalStage.status).in_([s.value for s in StageStatus if not s.is_terminal]))
        ).all()
        attempt_runs = {a.run_id for a in live_attempts}
        run_labels = dict(
            session.exec(
                select(TrainingRun.id, TrainingRun.label).where(col(TrainingRun.id).in_(sorted(attempt_runs)))
            ).all()
        )
    known: dict[str, str | None] = {}
    for run in in_flight:
        if run.instance_id:
            known.setdefault(run.instance_id, run.label)
    for attempt in live_attempts:
        if attempt.instance_id:
            known.setdefault(attempt.instance_id, run_labels.get(attempt.run_id))
    for stage in live_stages:
        if stage.instance_id:
            known.setdefault(stage.instance_id, stage.label)
    own = ownership(ctx)
    swept = destroy_owned(ctx.gpu, known, own.is_ours, policy or teardown_policy(ctx.settings))
    if swept.list_error:
        report.problems.append(
            f"could not list instances on {ctx.gpu.name}: {swept.list_error}; destroyed only the {len(known)} "
            "instance(s) the store knows; instances it does not know may still run"
        )
    for outcome in swept.outcomes:
        label = swept.labels.get(outcome.instance_id) or ""
        report.instances.append(InstanceOutcome(outcome.instance_id, label, outcome.gone, outcome.tries, outcome.error))
        if not outcome.gone:
            report.problems.append(f"instance {outcome.instance_id} ({label}) not verified gone: {outcome.error}")
    if not swept.list_error:
        report.other_installations = own.others(swept.seen)
        try:
            note_others(ctx, report.other_installations, actor=actor, seen_by="kill switch")
        except Exception as exc:
            logger.exception("Kill switch: recording other installations' instances failed")
            report.problems.append(f"other installations: {exc.__class__.__name__}: {exc}")
    gone_ids = {i.instance_id for i in report.instances if i.gone}
    # The provider's charges, read once for every run and stage settled below (one paced call, not one each).
    since = min([as_utc(r.created_at) for r in in_flight] + [as_utc(s.created_at) for s in live_stages], default=None)
    book = charge_book(ctx, since.timestamp()) if since is not None else None
    _end_attempts_and_stages(ctx, live_attempts, live_stages, gone_ids, why, report, book)

    # 4. runs in flight: cancelled, spend settled (one transaction for all of them; see ``_in_one_transaction``).
    now = utcnow()
    not_gone = {i.instance_id for i in report.instances if not i.gone}
    with ctx.store.session() as session:
        tried = {run.id: attempts_of(session, run.id) for run in in_flight}
    to_cancel: list[_Cancel] = []
    for run in in_flight:
        defer: list[dict[str, Any]] = []
        cost = _run_cost(ctx, run, now, book, tried.get(run.id, []), defer)
        # An instance not confirmed gone may still bill: the reservation stays until the reconciler confirms it
        # gone (and settles then). That covers the run's own instance and any attempt of it still alive.
        still_alive = (run.instance_id is not None and run.instance_id in not_gone) or any(
            a.instance_id in not_gone for a in tried.get(run.id, [])
        )
        message = why + ("; instance NOT verified destroyed, the reconciler keeps trying" if still_alive else "")
        to_cancel.append(_Cancel(run, cost, still_alive, message, defer))

    def cancel(session: Session, item: _Cancel) -> None:
        switch_run_status(
            session,
            item.run.id,
            RunTerminationReason.KILL_SWITCH.to_status(),
            actor=actor,
            reason=item.message,
            termination_reason=RunTerminationReason.KILL_SWITCH,
            status_message=item.message[:1000],
            actual_cost_usd=item.cost,
        )
        if not item.still_alive:
            settle(session, item.run.id, item.cost, note="kill switch")
            for entry in item.defer:
                expect_charges(session, **entry)

    for item in _in_one_transaction(ctx, to_cancel, cancel, report, "run", key=lambda c: c.run.id):
        report.runs_cancelled.append(
            {
                "run_id": item.run.id,
                "instance_id": item.run.instance_id,
                "cost_usd": item.cost,
                "reservation_kept": item.still_alive,
            }
        )

    # 5. serving: the last stable champion.
    try:
        from pilot.serving.deploy import revert_to_stable

        report.deployment = revert_to_stable(ctx.settings, ctx.store, ctx.artifacts).to_dict()
    except Exception as exc:
        logger.exception("Kill switch: reverting the deployment failed")
        report.problems.append(f"deployment not reverted: {exc.__class__.__name__}: {exc}")

    # 6. Slack.
    try:
        from pilot.supervisor import notify

        for approval_id in report.approvals_cancelled:
            notify.notify_outcome(ctx, approval_id)
        destroyed = sum(1 for i in report.instances if i.gone)
        report.slack_notified = notify.notify_incident(
            ctx,
            f":rotating_light: Kill switch engaged by {actor}: {reason}. Paused; {destroyed}/{len(report.instances)} "
            f"instances confirmed gone; {len(report.runs_cancelled)} runs cancelled; "
            f"{len(report.approvals_cancelled)} approvals cancelled. Resume with `learning-pilot resume`.",
        )
    except Exception as exc:
        logger.exception("Kill switch: Slack notification failed")
        report.problems.append(f"slack: {exc.__class__.__name__}: {exc}")

    # 7. the incident event.
    report.duration_s = round(time.monotonic() - t0, 3)
    try:
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type=EntityType.INCIDENT,
                entity_id="kill_switch",
                actor=actor,
                reason=why,
                new="paused",
                data=report.to_dict(),
            )
    except Exception as exc:
        logger.exception("Kill switch: writing the incident event failed")
        report.problems.append(f"incident event: {exc.__class__.__name__}: {exc}")
    logger.warning(
        "Kill switch engaged by %s in %.2f s: %d instances destroyed, %d runs cancelled, problems: %s",
        actor,
        report.duration_s,
        len(gone_ids),
        len(report.runs_cancelled),
        report.problems or "none",
    )
    return report


def _end_attempts_and_stages(
    ctx: PilotContext,
    attempts: Sequence[RunAttempt],
    stages: Sequence[EvalStage],
    gone_ids: set[str],
    why: str,
    report: KillReport,
    book: dict[str, float] | None,
) -> None:
    """Attempts confirmed gone end; the others wait in ``ending`` for the reconciler. Stages are cancelled and
    their reservation settled with what the provider charged for their label."""
    moves = [
        (a, AttemptStatus.ENDED if a.instance_id in gone_ids else AttemptStatus.ENDING)
        for a in attempts
        if a.status != (AttemptStatus.ENDED if a.instance_id in gone_ids else AttemptStatus.ENDING)
    ]

    def end(session: Session, move: tuple[RunAttempt, AttemptStatus]) -> None:
        switch_attempt_status(session, move[0].id, move[1], actor="system", reason=why)

    _in_one_transaction(ctx, moves, end, report, "attempt", key=lambda m: m[0].id)
    for stage in stages:
        try:
            gone = stage.instance_id is None or stage.instance_id in gone_ids
            fallback = elapsed_cost(stage.dph, stage.launched_at) if stage.instance_id else 0.0
            cost = label_cost(ctx, stage.label, since=stage.created_at.timestamp(), fallback_usd=fallback, book=book)
            with ctx.store.session(write=True) as session:
                switch_stage_status(session, stage.id, StageStatus.CANCELLED, actor="system", reason=why)
                row = session.get(EvalStage, stage.id)
                assert row is not None
                row.actual_cost_usd = cost
                if gone:
                    row.instance_id = None
                    settle(session, stage.id, cost, note="kill switch")
        except (ConflictError, TransitionError):
            pass  # ended meanwhile: its own teardown settled it
        except Exception as exc:
            logger.exception("Kill switch: cancelling evaluation stage %s failed", stage.id)
            report.problems.append(f"stage {stage.id}: {exc.__class__.__name__}: {exc}")


def resume(ctx: PilotContext, *, actor: str, reason: str) -> dict[str, Any]:
    """Lift the pause. Returns ``{"was_paused", "paused"}``; an event records who and why."""
    with ctx.store.session(write=True) as session:
        was_paused = set_paused(session, False, actor=actor, reason=f"resumed: {reason}")
        record_event(
            session,
            entity_type=EntityType.INCIDENT,
            entity_id="kill_switch",
            actor=actor,
            reason=f"resumed: {reason}",
            old="paused" if was_paused else "active",
            new="active",
        )
    if was_paused:
        from pilot.supervisor import notify

        notify.notify_incident(ctx, f":arrow_forward: Learning Pilot resumed by {actor}: {reason}")
    return {"was_paused": was_paused, "paused": False}


def paused(ctx: PilotContext) -> bool:
    with ctx.store.session() as session:
        return is_paused(session)


# -- CLI commands (registered by pilot/cli/app.py: app.command("kill")(kill_command), app.command("resume")(...)) --
