"""An evaluation stage as a durable job: one restartable step at a time, from the store, under the stage's lease.

``advance_stage`` is one step of a rented stage (``launched`` or ``running``): poll the instance, read the host's
heartbeat, and act on what it says. Liveness is in the row (``running_since``, ``last_seq``, ``last_beat_at``, by
this side's clock), so any process holding the stage's lease continues where another stopped. When the host exits
with a result, or a deadline passes, the stage ends (``end_stage``): every instance with its label destroyed and
verified gone, the reservation settled, then ``collecting`` (predictions uploaded: the daemon verifies and scores
them, pilot/evaluation/remote.py's ``collect_stage``) or ``failed``.

The daemon's jobs worker calls ``advance_stages`` on its schedule; ``run --once`` and the demo drive a stage to its
end in-process (``drive_stage``). Either way the supervisor's ``evaluate`` node never waits on a host: it opens the
stage and the graph waits (``interrupt()``) until the stage is ready.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlmodel import col, select

from pilot import testpoints
from pilot.context import PilotContext
from pilot.runs import attempts, host
from pilot.runs.teardown import destroy_all, teardown_policy
from pilot.spend.costs import cost_of_seconds
from pilot.spend.ledger import settle
from pilot.store.leases import LeaseKeeper, stage_lease
from pilot.store.models import EvalStage, as_utc, utcnow
from pilot.store.status import EntityType, StageStatus
from pilot.store.writers import record_event, switch_stage_status
from tools.errors import PilotError
from tools.gpu.base import InstanceState

logger = logging.getLogger(__name__)

EVENT = EntityType.EVALUATION  # entity type of the stage's events (entity id: the stage id)
RENTED = (StageStatus.LAUNCHED, StageStatus.RUNNING)  # the statuses a step advances


def get_stage(ctx: PilotContext, stage_id: str) -> EvalStage:
    with ctx.store.session() as session:
        row = session.get(EvalStage, stage_id, populate_existing=True)
    assert row is not None, stage_id
    return row


def switch(
    ctx: PilotContext,
    stage_id: str,
    new: StageStatus,
    reason: str,
    *,
    expected: StageStatus | None = None,
    **fields: Any,
) -> None:
    with ctx.store.session(write=True) as session:
        switch_stage_status(session, stage_id, new, actor="system", reason=reason, expected=expected, **fields)


def is_ready(row: EvalStage) -> bool:
    """Nothing is left for a worker to do: the host's predictions await collection, or the stage ended."""
    status = StageStatus(row.status)
    return status.is_terminal or status is StageStatus.COLLECTING


def deadline_s(ctx: PilotContext) -> float:
    """How long a rented stage may last: ``evaluation.remote_max_minutes`` plus the loading timeout."""
    return ctx.settings.evaluation.remote_max_minutes * 60 + ctx.settings.gpu.remote.loading_timeout_s


def elapsed_cost(row: EvalStage, ended: datetime | None = None) -> float:
    """Elapsed time x $/h since the provider accepted the create: ``label_cost``'s fallback."""
    if row.launched_at is None:
        return 0.0
    return cost_of_seconds(row.dph, ((ended or utcnow()) - as_utc(row.launched_at)).total_seconds())


def _check(ctx: PilotContext, row: EvalStage, now: datetime) -> tuple[dict[str, Any] | None, str | None]:
    """One look at the host: (the uploaded result, None) when it exited with one, (None, why) when the stage
    must end, (None, None) to look again later. Liveness seen is written to the row."""
    assert row.instance_id is not None and row.launched_at is not None
    remote_settings = ctx.settings.gpu.remote
    age = (now - as_utc(row.launched_at)).total_seconds()
    if age > deadline_s(ctx):
        return None, f"still running after {deadline_s(ctx) / 60:.1f} min"
    try:
        instance = ctx.gpu.poll(row.instance_id)
    except PilotError as exc:
        logger.warning("Evaluation %s: polling instance %s failed: %s", row.id, row.instance_id, exc)
        return None, None
    scratch = ctx.settings.work_dir / "eval" / row.id
    match instance.state:
        case InstanceState.LOADING:
            if age > remote_settings.loading_timeout_s:
                return None, f"instance {instance.id} still loading after {age:.0f} s"
        case InstanceState.RUNNING:
            fields: dict[str, Any] = {}
            if row.running_since is None:
                fields["running_since"] = now
            try:
                beat = host.read_upload(ctx, f"evals/{row.id}/heartbeat.json", scratch, "heartbeat")
            except host.HostFault as exc:
                return None, f"host fault: {exc}"
            seq = None if beat is None or beat.get("seq") is None else str(beat.get("seq"))[:80]
            if seq is not None and seq != row.last_seq:
                fields.update(last_seq=seq, last_beat_at=now)
            if row.status == StageStatus.LAUNCHED:
                switch(ctx, row.id, StageStatus.RUNNING, f"the evaluation runs on {instance.id}", **fields)
            elif fields:
                with ctx.store.session(write=True) as session:
                    live = session.get(EvalStage, row.id)
                    assert live is not None
                    for name, value in fields.items():
                        setattr(live, name, value)
            testpoints.reached("stage_running")
            seen = [t for t in (fields.get("last_beat_at") or row.last_beat_at, row.running_since) if t is not None]
            since = max((as_utc(t) for t in seen), default=now)
            silent = (now - since).total_seconds()
            if silent > ctx.settings.training.heartbeat_timeout_s:
                return None, f"no heartbeat from instance {instance.id} for {silent:.0f} s"
        case InstanceState.EXITED:
            try:
                result = host.read_upload(ctx, f"evals/{row.id}/result.json", scratch, "result")
            except host.HostFault as exc:
                return None, f"host fault: {exc}"
            if instance.exit_code != 0 or result is None or result.get("status") != "ok":
                tail = (result or {}).get("log_tail") or []
                last = f": {str(tail[-1])[:300]}" if isinstance(tail, list) and tail else ""
                why = (result or {}).get("error") or "no result uploaded"
                return None, f"the evaluation host exited with code {instance.exit_code} ({why}){last}"
            return result, None
        case InstanceState.STOPPED | InstanceState.GONE:
            what = "vanished" if instance.state is InstanceState.GONE else f"stopped ({instance.detail})"
            return None, f"instance {instance.id} {what}"
    return None, None


def end_stage(ctx: PilotContext, stage_id: str, why: str, *, ok: bool) -> tuple[bool, float]:
    """Destroy every instance with the stage's label and verify it gone; settle the reservation with the
    provider's charges, never less than elapsed time x $/h (``label_cost``: queued for the settle worker when the
    charges are missing or lower). An instance not verified gone keeps the reservation: the reconciler
    (``reconcile_stages``) ends the stage again until it is gone, and settles then. ``ok``: the host uploaded its
    result (``collecting``), else ``failed``. Returns (all verified gone, cost)."""
    row = get_stage(ctx, stage_id)
    ids = {row.instance_id} if row.instance_id else set()
    try:
        ids |= {i.id for i in ctx.gpu.list_owned(row.label) if i.label == row.label}
    except PilotError as exc:
        logger.warning("Evaluation %s: cannot list instances of %s: %s", stage_id, row.label, exc)
    gone = all(t.gone for t in destroy_all(ctx.gpu, sorted(ids), teardown_policy(ctx.settings)))
    ended = utcnow()
    since = as_utc(row.created_at).timestamp()
    # A host found under the label although no launch was recorded (its opener died after the provider accepted
    # the create) has been billed since the stage was created.
    fallback = (
        elapsed_cost(row, ended) if row.launched_at or not ids else cost_of_seconds(row.dph, ended.timestamp() - since)
    )
    cost = attempts.label_cost(ctx, row.label, since=since, fallback_usd=fallback)
    verdict = "destroyed and verified gone" if gone else "NOT verified gone (the reconciler will retry)"
    with ctx.store.session(write=True) as session:
        if gone:
            settle(session, stage_id, cost, note=f"evaluation stage: {why}"[:200])
        record_event(
            session,
            entity_type=EVENT,
            entity_id=stage_id,
            actor="system",
            reason=f"evaluation stage ended ({why[:300]}); instance(s) {', '.join(sorted(ids)) or 'none'} {verdict}; "
            + (f"${cost:.4f} settled" if gone else "reservation kept"),
            data={"instances": sorted(ids), "gone": gone, "cost_usd": cost},
        )
        live = session.get(EvalStage, stage_id, populate_existing=True)
        assert live is not None
        live.actual_cost_usd = cost
        if gone:
            live.instance_id = None
        if not StageStatus(live.status).is_terminal:
            status = StageStatus.COLLECTING if ok else StageStatus.FAILED
            switch_stage_status(
                session, stage_id, status, actor="system", reason=f"stage ended: {why}"[:1000], ended_at=ended
            )
    if not gone:
        logger.error(
            "Failed to terminate evaluation instance(s) %s. Terminate them manually to avoid accumulating charges.",
            ", ".join(sorted(ids)),
        )
    return gone, cost


def advance_stage(ctx: PilotContext, stage_id: str) -> EvalStage:
    """One step of a rented stage: look at the host and end the stage when it exited or a limit passed. A stage
    not rented yet (its opener rents it; the reconciler ends one whose opener died) or already ready is left as is."""
    row = get_stage(ctx, stage_id)
    if StageStatus(row.status) not in RENTED or row.instance_id is None:
        return row
    try:
        result, failure = _check(ctx, row, utcnow())
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # what a host uploaded does not parse
        logger.exception("Evaluation %s: the host's upload is malformed", stage_id)
        result, failure = None, f"the host's upload is malformed: {exc}"
    if failure is not None:
        end_stage(ctx, stage_id, failure, ok=False)
    elif result is not None:
        end_stage(ctx, stage_id, "the host exited 0", ok=True)
    return get_stage(ctx, stage_id)


def drive_stage(
    ctx: PilotContext, stage_id: str, *, sleep: Callable[[float], None] = time.sleep, poll_s: float | None = None
) -> EvalStage:
    """Advance the stage in this process until it is ready, under its lease (``run --once``, the demo, a blocking
    ``evaluate_version``). Returns the row as it is when another process holds the stage."""
    poll_s = poll_s if poll_s is not None else ctx.settings.training.poll_interval_s
    ttl = ctx.settings.scheduler.lease_ttl_s
    with LeaseKeeper(ctx.store, stage_lease(stage_id), ctx.owner, ttl_s=ttl) as lease:
        if not lease.held:
            return get_stage(ctx, stage_id)
        for _ in range(10_000_000):  # bounded: every step sleeps or ends, and the deadline ends the stage
            row = advance_stage(ctx, stage_id)
            if is_ready(row) or StageStatus(row.status) not in RENTED or lease.lost.is_set():
                return row
            sleep(poll_s)
    raise AssertionError("unreachable: the deadline ends every stage")


def advance_stages(ctx: PilotContext) -> list[str]:
    """The jobs worker's pass: one step for every rented stage no other process holds. Returns the ids of the
    stages that became ready (their threads resume on the next cycle pass)."""
    with ctx.store.session() as session:
        rented = session.exec(select(EvalStage.id).where(col(EvalStage.status).in_([s.value for s in RENTED]))).all()
    ready: list[str] = []
    for stage_id in rented:
        ttl = ctx.settings.scheduler.lease_ttl_s
        with LeaseKeeper(ctx.store, stage_lease(stage_id), ctx.owner, ttl_s=ttl) as lease:
            if not lease.held:
                continue
            try:
                row = advance_stage(ctx, stage_id)
            except Exception:
                logger.exception("Advancing evaluation stage %s failed; the next pass retries", stage_id)
                continue
        if is_ready(row):
            ready.append(stage_id)
    return ready


def stage_for_version(ctx: PilotContext, version_id: str) -> EvalStage | None:
    """The version's newest stage that was rented or may still be (a resumed ``evaluate`` node reuses it rather
    than renting again); None when there is none or the last one failed before renting."""
    with ctx.store.session() as session:
        row = session.exec(
            select(EvalStage).where(EvalStage.version_id == version_id).order_by(col(EvalStage.created_at).desc())
        ).first()
    if row is None or StageStatus(row.status) is StageStatus.PENDING:
        return None
    return row
