"""Training runs on rented hosts (every provider but ``local``): launch, watch, retry on another host, collect.

What goes to the host and what comes back is ``pilot.runs.host``. Invariants:
- A run is tried on one host per attempt: a ``RunAttempt`` row (status ``AttemptStatus``, the one writer in
  pilot/store/writers.py) with the offer, host, price, instance id and liveness. Intent before side effect: the
  attempt row is committed before the provider is asked for an instance, and the effect gate is asked right before
  the call (and again right after it returns); an instance with the run's label that the run does not record (a
  crash between "rented" and "recorded") is adopted if the attempt was still pending, and destroyed otherwise.
- ``advance_remote`` is one level-triggered step (the daemon's jobs worker calls it; ``watch_remote`` loops it):
  everything it needs — attempts, heartbeats seen, deadlines — is in the store, so whichever process holds the
  run's lease can take over after a crash.
- A breach (stuck loading, silent heartbeat, host offline, outbid, OCI failure, vanished) destroys the instance; only
  when the provider confirms it gone is another host tried (at most ``gpu.remote.max_attempts`` hosts, never a host
  already tried), resuming from the last complete uploaded checkpoint. Max duration and max cost end the run.
- What a host uploads (heartbeat, result, checkpoints, adapter) is read within its size cap and schema
  (pilot/runs/host.py); a refused upload is a host fault: recorded on the run, the instance destroyed and verified
  gone, the run retried on another host — never an exception out of the step.
- At the end the instance is always destroyed and verified gone; the run's cost is what the provider charged for
  every instance that carried its label (``charges``), else elapsed time x $/h; it replaces the reservation.

``Liveness`` is shared with evaluation stages (pilot/evaluation/remote.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pilot import testpoints
from pilot.context import PilotContext
from pilot.errors import ConflictError, TransitionError
from pilot.runs import lifecycle as runs
from pilot.runs.attempts import provider_cost
from pilot.runs.host import (
    HostFault,
    collect_adapter,
    read_heartbeat,
    read_result,
)
from pilot.runs.launch import (
    destroy_attempt,
    end_attempt,
    find_run,
    launch_attempt,
    owned_for_run,
    put_run_on,
    run_attempts,
    run_event,
    tried_hosts,
)
from pilot.runs.teardown import destroy_verified, teardown_policy
from pilot.spend.costs import attempts_cost, reserved_for_run
from pilot.store.models import DatasetSnapshot, RunAttempt, TrainingRun, as_utc
from pilot.store.status import AttemptStatus, EntityType, RunStatus, RunTerminationReason
from pilot.store.writers import record_event, switch_attempt_status, switch_run_status
from tools.errors import LaunchFailed, PilotError
from tools.gpu.base import Instance, InstanceState

logger = logging.getLogger(__name__)


# -- watching ---------------------------------------------------------------------------------------------
@dataclass
class Liveness:
    """What this process saw of a host, by its own clock (host clocks are not trusted)."""

    running_since: float | None = None
    seq: Any = None
    seen_at: float | None = None


def watch_remote(
    ctx: PilotContext,
    run_id: str,
    *,
    lease: str,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float | None = None,
) -> TrainingRun:
    """Advance the run until it ends (deadlines, retries on another host, destroy-and-verify, collect)."""
    poll_s = poll_s if poll_s is not None else ctx.settings.training.poll_interval_s
    for _ in range(10_000_000):  # bounded: every step sleeps or ends, and the deadlines end the run
        run = advance_remote(ctx, run_id, lease=lease, poll_s=poll_s)
        if RunStatus(run.status).is_terminal:
            return run
        sleep(poll_s)
    raise AssertionError("unreachable: the deadlines end every run")


def advance_remote(ctx: PilotContext, run_id: str, *, lease: str, poll_s: float | None = None) -> TrainingRun:
    """One level-triggered step of a run on rented hosts: read the store and the provider, do the next thing.

    Idempotent and restartable at any point: everything it needs (attempts, liveness, deadlines) is in the store.
    A run the kill switch (or the reconciler) ended while this step was under way ends the step: every status
    write is a compare-and-set, and the one that finds the run ended is where this process stops.
    """
    try:
        return _step(ctx, run_id, lease=lease, poll_s=poll_s)
    except (ConflictError, TransitionError):
        run = find_run(ctx, run_id)
        if RunStatus(run.status).is_terminal:
            return run
        raise


def _step(ctx: PilotContext, run_id: str, *, lease: str, poll_s: float | None) -> TrainingRun:
    testpoints.reached("step_start")
    training, remote = ctx.settings.training, ctx.settings.gpu.remote
    poll_s = poll_s if poll_s is not None else training.poll_interval_s
    run = find_run(ctx, run_id)
    if RunStatus(run.status).is_terminal:
        return run  # the kill switch or the reconciler ended it meanwhile
    tried = run_attempts(ctx, run.id)
    if run.status == RunStatus.COLLECTING:  # the job exited and its host is gone: finish collecting, rent nothing
        return _resume_collecting(ctx, run, tried)
    current = next((a for a in reversed(tried) if AttemptStatus(a.status) in LIVE and a.instance_id), None)
    if current is not None and (run.status == RunStatus.PENDING or run.instance_id != current.instance_id):
        run = _recorded_on_run(ctx, run, current)  # a crash between recording the attempt and the run
    if current is None and _finished_before(ctx, run, tried):
        with ctx.store.session(write=True) as session:  # the job had finished when this process stopped
            run = switch_run_status(
                session,
                run.id,
                RunStatus.COLLECTING,
                actor="system",
                reason="the job had exited 0 (found after a restart)",
            )
        return _resume_collecting(ctx, run, run_attempts(ctx, run.id))
    if current is None:
        for ending in (a for a in tried if a.status == AttemptStatus.ENDING and a.instance_id):
            if not destroy_attempt(ctx, ending.id, str(ending.instance_id), "retrying the destroy"):
                return finish_failed(
                    ctx, run, RunTerminationReason.LAUNCH_FAILED, f"instance {ending.instance_id} NOT verified gone"
                )
        try:
            run = adopt_or_clean(ctx, run)
        except PilotError as exc:
            return finish_failed(ctx, run, RunTerminationReason.LAUNCH_FAILED, f"launch failed: {exc}")
        if run.instance_id is not None:
            return run
        with ctx.store.session() as session:
            snapshot = session.get(DatasetSnapshot, run.snapshot_id)
        assert snapshot is not None
        outcome = launch_attempt(ctx, run, snapshot, lease=lease)
        if outcome.launched or RunStatus(outcome.run.status).is_terminal:
            return outcome.run
        if outcome.refused:
            return runs.end_not_rented(ctx, run.id, outcome.reason, cost=provider_cost(ctx, outcome.run))
        return finish_failed(ctx, outcome.run, RunTerminationReason.LAUNCH_FAILED, outcome.reason)
    now = time.time()
    reserved = reserved_for_run(run)
    if attempts_cost(tried, _at(now + poll_s)) > reserved + 1e-9:
        return _stop(
            ctx, run, current, RunTerminationReason.BUDGET_EXCEEDED, f"spend would pass the ${reserved:.4f} reservation"
        )
    first = min(as_utc(a.launched_at).timestamp() for a in tried if a.launched_at is not None)
    if now > first + training.max_duration_minutes * 60:
        message = f"still running after {training.max_duration_minutes:g} min"
        return _stop(ctx, run, current, RunTerminationReason.DEADLINE_EXCEEDED, message)
    assert current.instance_id is not None
    try:
        instance = ctx.gpu.poll(current.instance_id)
    except PilotError as exc:
        logger.warning("Run %s: polling instance %s failed: %s", run.id, current.instance_id, exc)
        return run
    launched = as_utc(current.launched_at).timestamp() if current.launched_at else now
    match instance.state:
        case InstanceState.LOADING:
            testpoints.reached("loading")
            waited = now - launched
            if waited > remote.loading_timeout_s:
                detail = instance.detail or "no detail"
                message = f"instance {instance.id} still loading after {waited:.0f} s ({detail})"
                return _breach(ctx, run, current, RunTerminationReason.LAUNCH_FAILED, message, retry=True)
        case InstanceState.RUNNING:
            return _running(ctx, run, current, instance, now)
        case InstanceState.EXITED:
            return _exited(ctx, run, current, instance)
        case InstanceState.STOPPED | InstanceState.GONE if _result_ok(ctx, run, current):
            # The job finished and uploaded its result before the host went (destroyed by a process that then
            # stopped): collect it, do not rent again.
            return _exited(ctx, run, current, dataclasses.replace(instance, exit_code=0))
        case InstanceState.STOPPED | InstanceState.GONE:
            what = "vanished" if instance.state is InstanceState.GONE else f"stopped ({instance.detail})"
            message = f"instance {instance.id} {what}"
            return _breach(ctx, run, current, RunTerminationReason.INSTANCE_VANISHED, message, retry=True)
    return run


LIVE = (AttemptStatus.LAUNCHED, AttemptStatus.RUNNING)
HOST_FAULT = "host fault"  # in the end reason of an attempt ended by a refused upload


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _running(ctx: PilotContext, run: TrainingRun, current: RunAttempt, instance: Instance, now: float) -> TrainingRun:
    testpoints.reached("running")
    if run.status == RunStatus.PROVISIONING:
        with ctx.store.session(write=True) as session:
            run = switch_run_status(
                session,
                run.id,
                RunStatus.RUNNING,
                actor="system",
                reason=f"the job started on {instance.id}",
                expected=RunStatus.PROVISIONING,
            )
    try:
        beat = read_heartbeat(ctx, run.id, current.n)
    except HostFault as exc:
        return _host_fault(ctx, run, current, exc)
    seq = None if beat is None else str(beat.get("seq"))[:80]
    with ctx.store.session(write=True) as session:
        row = session.get(RunAttempt, current.id, populate_existing=True)
        assert row is not None
        if row.status == AttemptStatus.LAUNCHED:
            row = switch_attempt_status(
                session,
                row.id,
                AttemptStatus.RUNNING,
                actor="system",
                reason=f"the job runs on {instance.id}",
                running_since=_at(now),
            )
        if seq is not None and seq != row.last_seq:
            row.last_seq, row.last_beat_at = seq, _at(now)
        running_since = as_utc(row.running_since or _at(now)).timestamp()
        seen = as_utc(row.last_beat_at).timestamp() if row.last_beat_at else 0.0
    testpoints.reached("attempt_running")
    if seq is not None:
        testpoints.reached("heartbeat_recorded")
    silent = now - max(seen, running_since)
    if silent > ctx.settings.training.heartbeat_timeout_s:
        message = f"no heartbeat from instance {instance.id} for {silent:.0f} s"
        return _breach(ctx, run, current, RunTerminationReason.DEADLINE_EXCEEDED, message, retry=True)
    return find_run(ctx, run.id)


def _exited(ctx: PilotContext, run: TrainingRun, current: RunAttempt, instance: Instance) -> TrainingRun:
    try:
        result = read_result(ctx, run.id, current.n)
    except HostFault as exc:
        return _host_fault(ctx, run, current, exc)
    if instance.exit_code is None:  # the container never ran the job (OCI runtime failure): a host fault
        message = f"instance {instance.id} could not start the job: {instance.detail[:300]}"
        return _breach(ctx, run, current, RunTerminationReason.LAUNCH_FAILED, message, retry=True)
    if instance.exit_code != 0 or result is None or result.get("status") != "ok":
        tail = (result or {}).get("log_tail") or []
        last = f": {str(tail[-1])[:300]}" if tail else ""
        if instance.exit_code == 0:
            message, termination = "the job exited 0 but uploaded no result", RunTerminationReason.INVALID_OUTPUT
        else:
            message, termination = (
                f"the job exited with code {instance.exit_code}{last}",
                RunTerminationReason.JOB_FAILED,
            )
        return _stop(ctx, run, current, termination, message)
    assert current.instance_id is not None
    gone = destroy_attempt(ctx, current.id, current.instance_id, "the job exited 0")
    testpoints.reached("exited_destroyed")
    if not gone:
        run_event(ctx, run.id, f"instance {instance.id} could not be verified destroyed; the reconciler will retry")
    with ctx.store.session(write=True) as session:
        run = switch_run_status(session, run.id, RunStatus.COLLECTING, actor="system", reason="the job exited 0")
    testpoints.reached("collecting")
    return _collect(ctx, run, current, result)


def _host_fault(ctx: PilotContext, run: TrainingRun, current: RunAttempt, fault: HostFault) -> TrainingRun:
    """An upload of this attempt's host was refused: record it, destroy the host, retry elsewhere."""
    message = f"{HOST_FAULT} on instance {current.instance_id}: {fault}"[:1000]
    run_event(ctx, run.id, message, host_fault=True, attempt=current.n)
    return _breach(ctx, run, current, RunTerminationReason.INVALID_OUTPUT, message, retry=True)


def _stop(
    ctx: PilotContext, run: TrainingRun, current: RunAttempt, termination: RunTerminationReason, message: str
) -> TrainingRun:
    ended = _breach(ctx, run, current, termination, message, retry=False)
    return ended


def _breach(
    ctx: PilotContext,
    run: TrainingRun,
    current: RunAttempt,
    termination: RunTerminationReason,
    message: str,
    *,
    retry: bool,
) -> TrainingRun:
    """Destroy and verify; then leave the run for the next step to relaunch on another host (``retry``, while
    hosts remain) or end it."""
    logger.warning("Run %s attempt %s: %s", run.id, current.n, message)
    assert current.instance_id is not None
    gone = destroy_attempt(ctx, current.id, current.instance_id, message)
    testpoints.reached("breach_destroyed")
    run = find_run(ctx, run.id)
    tried = run_attempts(ctx, run.id)
    if not gone:
        message += f"; instance {current.instance_id} NOT verified destroyed (the reconciler will retry)"
        return finish_failed(ctx, run, termination, message)
    if retry and len(tried_hosts(tried)) < ctx.settings.gpu.remote.max_attempts:
        return run
    if retry:
        message += f" (after {len(tried_hosts(tried))} host(s))"
    return finish_failed(ctx, run, termination, message)


def _result_ok(ctx: PilotContext, run: TrainingRun, attempt: RunAttempt) -> bool:
    try:
        result = read_result(ctx, run.id, attempt.n)
    except HostFault as exc:
        logger.warning("Run %s attempt %s: result refused: %s", run.id, attempt.n, exc)
        return False
    return result is not None and result.get("status") == "ok"


def _finished_before(ctx: PilotContext, run: TrainingRun, tried: list[RunAttempt]) -> bool:
    """No live attempt, and the last one that rented ended after its job uploaded an ok result."""
    last = next((a for a in reversed(tried) if a.launched_at is not None), None)
    if last is None or last.status != AttemptStatus.ENDED or HOST_FAULT in (last.end_reason or ""):
        return False  # a host whose uploads were refused is not trusted with the result either
    return _result_ok(ctx, run, last)


def _recorded_on_run(ctx: PilotContext, run: TrainingRun, current: RunAttempt) -> TrainingRun:
    assert current.instance_id is not None
    why = f"attempt {current.n}'s instance {current.instance_id} recorded on the run after a restart"
    return put_run_on(ctx, run.id, current, current.instance_id, why)


def _resume_collecting(ctx: PilotContext, run: TrainingRun, tried: list[RunAttempt]) -> TrainingRun:
    """A restart found the run collecting (its job exited 0, its host destroyed): collect the last attempt's
    adapter again (idempotent: same keys, verified by sha256) and register it; never rent again."""
    last = next((a for a in reversed(tried) if a.launched_at is not None), None)
    try:
        result = read_result(ctx, run.id, last.n) if last is not None else None
    except HostFault as exc:
        result, fault = None, f": {exc}"
    else:
        fault = ""
    if last is None or result is None or result.get("status") != "ok":
        message = f"collecting after a restart: no valid result from the job's host{fault}"
        return runs.fail_run(ctx, run.id, RunTerminationReason.INVALID_OUTPUT, message, cost=provider_cost(ctx, run))
    return _collect(ctx, run, last, result)


def _collect(ctx: PilotContext, run: TrainingRun, attempt: RunAttempt, result: dict[str, Any]) -> TrainingRun:
    """Verify and store the attempt's adapter, register the candidate, settle at what the provider billed."""
    cost = provider_cost(ctx, run)
    try:
        stored = collect_adapter(ctx, run.id, attempt.n, result)
    except (PilotError, KeyError, TypeError) as exc:
        return runs.fail_run(ctx, run.id, RunTerminationReason.INVALID_OUTPUT, f"adapter refused: {exc}", cost=cost)
    testpoints.reached("adapter_collected")
    reported = result.get("metrics")
    metrics: dict[str, Any] = dict(reported) if isinstance(reported, dict) else {}
    metrics["attempts"] = len(run_attempts(ctx, run.id))
    return runs.register_candidate(ctx, run, stored, metrics, cost=cost)


def finish_failed(ctx: PilotContext, run: TrainingRun, termination: RunTerminationReason, message: str) -> TrainingRun:
    return runs.fail_run(ctx, run.id, termination, message, cost=provider_cost(ctx, run))


def adopt_or_clean(ctx: PilotContext, run: TrainingRun) -> TrainingRun:
    """An instance with the run's label that the run does not record: a crash between "rented" and "recorded".

    If the last attempt is still ``pending`` (recorded, not yet known to be accepted), its newest instance is
    adopted (it runs that attempt's manifest); every other such instance is destroyed and verified gone before
    anything new is rented. A pending attempt with no instance is ``lost``.
    """
    try:
        found = sorted(owned_for_run(ctx, run), key=lambda i: (i.started_at or 0.0, i.id))
    except PilotError as exc:
        raise LaunchFailed(f"cannot list instances of {run.label}: {exc}") from exc
    tried = run_attempts(ctx, run.id)
    pending = tried[-1] if tried and tried[-1].status == AttemptStatus.PENDING else None
    adopt = found[-1] if found and pending is not None else None
    recorded = {a.instance_id for a in tried if a.instance_id}
    for instance in found:
        if instance is adopt:
            continue
        owner = next((a for a in tried if a.instance_id == instance.id), None)
        gone = destroy_verified(ctx.gpu, instance.id, teardown_policy(ctx.settings)).gone
        if not gone:
            raise LaunchFailed(f"unrecorded instance {instance.id} of {run.label} could not be destroyed")
        if owner is not None and not AttemptStatus(owner.status).is_terminal:
            end_attempt(ctx, owner.id, AttemptStatus.ENDED, f"instance {instance.id} destroyed and verified gone")
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type=EntityType.INSTANCE,
                entity_id=instance.id,
                actor="system",
                reason=f"{'recorded' if instance.id in recorded else 'unrecorded'} instance of run {run.id} "
                "destroyed and verified gone before relaunch",
            )
    if adopt is None:
        if pending is not None:
            end_attempt(ctx, pending.id, AttemptStatus.LOST, "no instance after a restart")
        return find_run(ctx, run.id)
    assert pending is not None
    why = f"adopted instance {adopt.id} of attempt {pending.n} after a restart"
    with ctx.store.session(write=True) as session:
        switch_attempt_status(
            session, pending.id, AttemptStatus.LAUNCHED, actor="system", reason=why, instance_id=adopt.id
        )
    return put_run_on(ctx, run.id, pending, adopt.id, why)
