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
- At the end the instance is always destroyed and verified gone; the run's cost is what the provider charged for
  every instance that carried its label (``charges``), else elapsed time x $/h; it replaces the reservation.

``Liveness`` is shared with evaluation stages (pilot/evaluation/remote.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select

from pilot import testpoints
from pilot.context import PilotContext
from pilot.errors import ConflictError, TransitionError
from pilot.runs import lifecycle as runs
from pilot.runs.attempts import attempts_of, host_key, next_offer, offer_dph, provider_cost
from pilot.runs.host import (
    attempt_prefix,
    build_manifest,
    collect_adapter,
    host_spec,
    latest_checkpoint,
    read_heartbeat,
    read_result,
    scratch_dir,
    secrets_to_withhold,
    stage_inputs,
    upload_manifest,
)
from pilot.runs.teardown import destroy_verified, teardown_policy
from pilot.spend.costs import attempts_cost, reserved_for_run
from pilot.spend.effects import Effect, EffectRefused, authorize
from pilot.store.models import DatasetSnapshot, RunAttempt, TrainingRun, as_utc
from pilot.store.status import AttemptStatus, EntityType, RunStatus, RunTerminationReason
from pilot.store.writers import is_paused, record_event, switch_attempt_status, switch_run_status
from tools.errors import LaunchFailed, OfferUnavailable, PilotError
from tools.gpu.base import Instance, InstanceState, Offer

logger = logging.getLogger(__name__)

_OFFER_TRIES = 5  # offers tried per attempt when they are taken between search and rent


# -- run bookkeeping (fields, not status: statuses go through pilot.store.writers) -------------------------
def _attempts(ctx: PilotContext, run_id: str) -> list[RunAttempt]:
    with ctx.store.session() as session:
        return attempts_of(session, run_id)


def _event(ctx: PilotContext, run_id: str, reason: str, **data: Any) -> None:
    with ctx.store.session(write=True) as session:
        record_event(
            session, entity_type=EntityType.TRAINING_RUN, entity_id=run_id, actor="system", reason=reason, data=data
        )


def _set_run_fields(ctx: PilotContext, run_id: str, **fields: Any) -> TrainingRun:
    """Plain fields of a run still in flight (compare-and-set on a live status): ``ConflictError`` when the run
    ended meanwhile (the kill switch cancelled it): nothing is written onto an ended run."""
    with ctx.store.session(write=True) as session:
        result = session.execute(
            update(TrainingRun)
            .where(
                TrainingRun.id == run_id,  # type: ignore[arg-type]
                col(TrainingRun.status).in_([s.value for s in RunStatus if not s.is_terminal]),
            )
            .values(**fields)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise ConflictError(f"run {run_id} ended meanwhile: not recording {sorted(fields)}")
        row = session.get(TrainingRun, run_id, populate_existing=True)
        assert row is not None
        return row


def owned_for_run(ctx: PilotContext, run: TrainingRun) -> list[Instance]:
    return [i for i in ctx.gpu.list_owned(run.label) if i.label == run.label]


def find_run(ctx: PilotContext, run_id: str) -> TrainingRun:
    with ctx.store.session() as session:
        run = session.exec(select(TrainingRun).where(TrainingRun.id == run_id)).one()
    return run


# -- launching ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchOutcome:
    run: TrainingRun
    launched: bool
    reason: str = ""
    refused: bool = False  # the effect gate said no (paused, cancelled, lease lost, budget, approval)


def _gate_price(ctx: PilotContext, tried: list[RunAttempt], dph: float, estimate: float) -> float:
    """What this attempt asks the reservation to cover: on the first host, the run's estimated cost on this offer;
    on a retry, what the run spent so far plus one heartbeat window on the new host (live burn is watched against
    the reservation from then on)."""
    if not any(a.launched_at is not None for a in tried):
        return estimate
    return attempts_cost(tried) + dph * ctx.settings.training.heartbeat_timeout_s / 3600


def launch_attempt(ctx: PilotContext, run: TrainingRun, snapshot: DatasetSnapshot, *, lease: str) -> LaunchOutcome:
    """Stage and launch the next attempt on a host not tried yet. The attempt row is committed before renting, and
    the effect gate is asked right before the provider call (and again right after it returns)."""
    remote = ctx.settings.gpu.remote
    inputs = stage_inputs(ctx, run, snapshot)
    if (run.config or {}).get("inputs") != inputs:
        run = _set_run_fields(ctx, run.id, config={**run.config, "inputs": inputs})
    tried = _attempts(ctx, run.id)
    excluded = {a.host for a in tried if a.host} | {a.offer_id for a in tried}
    secrets = secrets_to_withhold(ctx)
    last_error = "no offer"
    for _ in range(_OFFER_TRIES):
        if len(tried) >= remote.max_attempts:
            return LaunchOutcome(run, False, f"{len(tried)} host(s) tried ({last_error}); giving up")
        try:
            chosen = next_offer(ctx, run, excluded=excluded)
        except PilotError as exc:
            return LaunchOutcome(run, False, f"offer search failed: {exc}")
        if chosen is None:
            return LaunchOutcome(run, False, f"no other offer meets the job's requirements ({last_error})")
        offer, bid, estimate = chosen
        n = max((a.n for a in tried), default=0) + 1
        checkpoint = latest_checkpoint(ctx, run.id, [a.n for a in tried]) if tried else None
        manifest = build_manifest(ctx, run, n=n, inputs=inputs, checkpoint=checkpoint)
        manifest_url = upload_manifest(
            ctx, f"{attempt_prefix(run.id, n)}/manifest.json", manifest, scratch_dir(ctx, run.id) / f"manifest-{n}.json"
        )
        spec = host_spec(
            ctx,
            label=run.label,
            offer_id=offer.id,
            bid=bid,
            manifest=manifest,
            manifest_url=manifest_url,
            secrets=secrets,
        )
        dph = offer_dph(offer, bid, remote.disk_gb)
        attempt = RunAttempt(
            id=f"{run.id}-a{n}",
            run_id=run.id,
            n=n,
            status=AttemptStatus.PENDING,
            offer_id=offer.id,
            host=host_key(offer),
            gpu=offer.gpu_name,
            dph=dph,
            bid=bid,
            resume_step=checkpoint["step"] if checkpoint else None,
        )
        with ctx.store.session(write=True) as session:  # intent before side effect
            session.add(attempt)
            record_event(
                session,
                entity_type=EntityType.RUN_ATTEMPT,
                entity_id=attempt.id,
                actor="system",
                reason=f"attempt {n} of run {run.id} on offer {offer.id} ({offer.gpu_name}, ${dph:.4f}/h)",
                new=AttemptStatus.PENDING,
            )
        testpoints.reached("attempt_recorded")
        try:
            authorize(
                ctx.store,
                Effect.RENT,
                ctx.settings,
                owner=ctx.owner,
                lease=lease,
                run_id=run.id,
                price_usd=_gate_price(ctx, tried, dph, estimate),
            )
        except EffectRefused as exc:
            _end_attempt(ctx, attempt.id, AttemptStatus.REFUSED, exc.reason)
            return LaunchOutcome(run, False, exc.reason, refused=True)
        try:
            instance = ctx.gpu.launch(spec)
        except OfferUnavailable as exc:
            last_error = f"offer {offer.id} taken: {exc}"
            excluded |= {offer.id, attempt.host}
            with ctx.store.session(write=True) as session:  # nothing was rented: a taken offer uses up no attempt
                row = session.get(RunAttempt, attempt.id)
                if row is not None:
                    session.delete(row)
                record_event(
                    session,
                    entity_type=EntityType.RUN_ATTEMPT,
                    entity_id=attempt.id,
                    actor="system",
                    reason=f"offer {offer.id} was taken; choosing another",
                )
            continue
        except PilotError as exc:
            last_error = f"launch on offer {offer.id} failed: {exc}"
            excluded |= {offer.id, attempt.host}
            _end_attempt(ctx, attempt.id, AttemptStatus.LAUNCH_FAILED, last_error)
            tried = _attempts(ctx, run.id)
            continue
        testpoints.reached("provider_accepted")
        return _record_launch(ctx, run, attempt, instance, offer, lease=lease, checkpoint=checkpoint)
    return LaunchOutcome(run, False, last_error)


def _record_launch(
    ctx: PilotContext,
    run: TrainingRun,
    attempt: RunAttempt,
    instance: Instance,
    offer: Offer,
    *,
    lease: str,
    checkpoint: dict[str, Any] | None,
) -> LaunchOutcome:
    """Record the accepted instance on the attempt and the run; if the run ended or the pilot paused while the
    provider was answering, tear the new instance down at once instead."""
    why = (
        f"attempt {attempt.n}: instance {instance.id} accepted by {ctx.gpu.name} on offer {offer.id} "
        f"({offer.gpu_name}, ${attempt.dph:.4f}/h{', bid' if attempt.bid else ''})"
        + (f", resuming from step {checkpoint['step']}" if checkpoint else "")
    )
    with ctx.store.session(write=True) as session:
        switch_attempt_status(
            session,
            attempt.id,
            AttemptStatus.LAUNCHED,
            actor="system",
            reason=why,
            expected=AttemptStatus.PENDING,
            instance_id=instance.id,
        )
    try:
        authorize(ctx.store, Effect.RENT, ctx.settings, owner=ctx.owner, lease=lease, run_id=run.id)
        with ctx.store.session(write=True) as session:
            current = session.get(TrainingRun, run.id, populate_existing=True)
            assert current is not None
            if current.status == RunStatus.PENDING:
                run = switch_run_status(
                    session,
                    run.id,
                    RunStatus.PROVISIONING,
                    actor="system",
                    reason=why,
                    expected=RunStatus.PENDING,
                    instance_id=instance.id,
                    offer_id=offer.id,
                    dph=attempt.dph,
                )
        if run.status != RunStatus.PROVISIONING or run.instance_id != instance.id:
            run = _set_run_fields(ctx, run.id, instance_id=instance.id, offer_id=offer.id, dph=attempt.dph)
    except (EffectRefused, ConflictError, TransitionError) as exc:
        reason = exc.reason if isinstance(exc, EffectRefused) else str(exc)
        logger.warning("Run %s: instance %s accepted but %s; destroying it", run.id, instance.id, reason)
        _destroy_attempt(ctx, attempt.id, instance.id, f"accepted after the run was stopped: {reason}")
        return LaunchOutcome(find_run(ctx, run.id), False, reason, refused=True)
    logger.info("Run %s %s", run.id, why)
    testpoints.reached("launch_recorded")
    return LaunchOutcome(run, True)


def _end_attempt(ctx: PilotContext, attempt_id: str, status: AttemptStatus, reason: str, **fields: Any) -> None:
    with ctx.store.session(write=True) as session:
        switch_attempt_status(session, attempt_id, status, actor="system", reason=reason[:1000], **fields)


def _destroy_attempt(ctx: PilotContext, attempt_id: str, instance_id: str, why: str) -> bool:
    """Destroy the attempt's instance and verify it gone: ``ended``, else ``ending`` (the reconciler retries)."""
    gone = destroy_verified(ctx.gpu, instance_id, teardown_policy(ctx.settings)).gone
    with ctx.store.session(write=True) as session:
        row = session.get(RunAttempt, attempt_id, populate_existing=True)
        assert row is not None
        status = AttemptStatus(row.status)
        verdict = "destroyed and verified gone" if gone else "NOT verified gone (the reconciler keeps trying)"
        reason = f"attempt {row.n} ended ({why[:300]}); {instance_id} {verdict}"
        if gone and not status.is_terminal:
            switch_attempt_status(session, attempt_id, AttemptStatus.ENDED, actor="system", reason=reason)
        elif not gone and status in (AttemptStatus.LAUNCHED, AttemptStatus.RUNNING):
            switch_attempt_status(session, attempt_id, AttemptStatus.ENDING, actor="system", reason=reason)
        run = session.get(TrainingRun, row.run_id, populate_existing=True)
        if gone and run is not None and run.instance_id == instance_id:
            run.instance_id = None
    return gone


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
    training, remote = ctx.settings.training, ctx.settings.gpu.remote
    poll_s = poll_s if poll_s is not None else training.poll_interval_s
    run = find_run(ctx, run_id)
    if RunStatus(run.status).is_terminal:
        return run  # the kill switch or the reconciler ended it meanwhile
    tried = _attempts(ctx, run.id)
    current = next((a for a in reversed(tried) if AttemptStatus(a.status) in LIVE and a.instance_id), None)
    if current is None:
        for ending in (a for a in tried if a.status == AttemptStatus.ENDING and a.instance_id):
            if not _destroy_attempt(ctx, ending.id, str(ending.instance_id), "retrying the destroy"):
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
            return _refused(ctx, outcome.run, outcome.reason)
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
        case InstanceState.STOPPED | InstanceState.GONE:
            what = "vanished" if instance.state is InstanceState.GONE else f"stopped ({instance.detail})"
            message = f"instance {instance.id} {what}"
            return _breach(ctx, run, current, RunTerminationReason.INSTANCE_VANISHED, message, retry=True)
    return run


LIVE = (AttemptStatus.LAUNCHED, AttemptStatus.RUNNING)


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
    beat = read_heartbeat(ctx, run.id, current.n)
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
    silent = now - max(seen, running_since)
    if silent > ctx.settings.training.heartbeat_timeout_s:
        message = f"no heartbeat from instance {instance.id} for {silent:.0f} s"
        return _breach(ctx, run, current, RunTerminationReason.DEADLINE_EXCEEDED, message, retry=True)
    return find_run(ctx, run.id)


def _exited(ctx: PilotContext, run: TrainingRun, current: RunAttempt, instance: Instance) -> TrainingRun:
    result = read_result(ctx, run.id, current.n)
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
    gone = _destroy_attempt(ctx, current.id, current.instance_id, "the job exited 0")
    testpoints.reached("exited_destroyed")
    if not gone:
        _event(ctx, run.id, f"instance {instance.id} could not be verified destroyed; the reconciler will retry")
    cost = provider_cost(ctx, run)
    with ctx.store.session(write=True) as session:
        run = switch_run_status(session, run.id, RunStatus.COLLECTING, actor="system", reason="the job exited 0")
    testpoints.reached("collecting")
    try:
        stored = collect_adapter(ctx, run.id, current.n, result)
    except (PilotError, KeyError, TypeError) as exc:
        return runs.fail_run(ctx, run.id, RunTerminationReason.INVALID_OUTPUT, f"adapter refused: {exc}", cost=cost)
    reported = result.get("metrics")
    metrics: dict[str, Any] = dict(reported) if isinstance(reported, dict) else {}
    metrics["attempts"] = len(_attempts(ctx, run.id))
    return runs.register_candidate(ctx, run, stored, metrics, cost=cost)


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
    gone = _destroy_attempt(ctx, current.id, current.instance_id, message)
    testpoints.reached("breach_destroyed")
    run = find_run(ctx, run.id)
    tried = _attempts(ctx, run.id)
    if not gone:
        message += f"; instance {current.instance_id} NOT verified destroyed (the reconciler will retry)"
        return finish_failed(ctx, run, termination, message)
    if retry and len(tried) < ctx.settings.gpu.remote.max_attempts:
        return run
    if retry:
        message += f" (after {len(tried)} host(s))"
    return finish_failed(ctx, run, termination, message)


def finish_failed(ctx: PilotContext, run: TrainingRun, termination: RunTerminationReason, message: str) -> TrainingRun:
    return runs.fail_run(ctx, run.id, termination, message, cost=provider_cost(ctx, run))


def _refused(ctx: PilotContext, run: TrainingRun, reason: str) -> TrainingRun:
    """The gate refused the next rental: the run ends (cancelled when the pilot is paused) with what it spent."""
    with ctx.store.session() as session:
        paused = is_paused(session)
    termination = RunTerminationReason.KILL_SWITCH if paused else RunTerminationReason.LAUNCH_FAILED
    try:
        return finish_failed(ctx, run, termination, f"not rented: {reason}")
    except (ConflictError, TransitionError):
        return find_run(ctx, run.id)  # ended meanwhile (the kill switch)


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
    tried = _attempts(ctx, run.id)
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
            _end_attempt(ctx, owner.id, AttemptStatus.ENDED, f"instance {instance.id} destroyed and verified gone")
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
            _end_attempt(ctx, pending.id, AttemptStatus.LOST, "no instance after a restart")
        return find_run(ctx, run.id)
    assert pending is not None
    why = f"adopted instance {adopt.id} of attempt {pending.n} after a restart"
    _event(ctx, run.id, why, instance=adopt.id)
    with ctx.store.session(write=True) as session:
        switch_attempt_status(
            session, pending.id, AttemptStatus.LAUNCHED, actor="system", reason=why, instance_id=adopt.id
        )
        if run.status == RunStatus.PENDING:
            return switch_run_status(
                session,
                run.id,
                RunStatus.PROVISIONING,
                actor="system",
                reason=why,
                instance_id=adopt.id,
                offer_id=pending.offer_id,
                dph=pending.dph,
            )
    return _set_run_fields(ctx, run.id, instance_id=adopt.id, offer_id=pending.offer_id, dph=pending.dph)
