"""Renting the next host for a run: one attempt row committed first, the effect gate asked right before the provider
call and again right after it answers; a taken offer tries another; a create accepted after a kill is torn down."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select

from pilot import testpoints
from pilot.context import PilotContext
from pilot.errors import ConflictError, TransitionError
from pilot.runs.attempts import attempts_of, host_key, next_offer, offer_dph
from pilot.runs.host import (
    attempt_prefix,
    build_manifest,
    host_spec,
    latest_checkpoint,
    scratch_dir,
    secrets_to_withhold,
    stage_inputs,
    upload_manifest,
)
from pilot.runs.teardown import destroy_verified, teardown_policy
from pilot.spend.costs import attempts_cost, cost_of_seconds
from pilot.spend.effects import Effect, EffectRefused, authorize
from pilot.store.models import DatasetSnapshot, RunAttempt, TrainingRun
from pilot.store.status import AttemptStatus, EntityType, RunStatus
from pilot.store.writers import record_event, switch_attempt_status, switch_run_status
from tools.errors import OfferUnavailable, PilotError
from tools.gpu.base import Instance, Offer

logger = logging.getLogger(__name__)


_OFFER_TRIES = 5  # offers tried per attempt when they are taken between search and rent


# -- run bookkeeping (fields, not status: statuses go through pilot.store.writers) -------------------------
def run_attempts(ctx: PilotContext, run_id: str) -> list[RunAttempt]:
    with ctx.store.session() as session:
        return attempts_of(session, run_id)


def run_event(ctx: PilotContext, run_id: str, reason: str, **data: Any) -> None:
    with ctx.store.session(write=True) as session:
        record_event(
            session, entity_type=EntityType.TRAINING_RUN, entity_id=run_id, actor="system", reason=reason, data=data
        )


def set_run_fields(ctx: PilotContext, run_id: str, **fields: Any) -> TrainingRun:
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


def tried_hosts(tried: list[RunAttempt]) -> list[RunAttempt]:
    """Attempts that tried a host (a rental was attempted there). A crash before renting (``lost``) or a refusal by
    the gate (``refused``) tried no host: it excludes none and uses up no attempt."""
    return [a for a in tried if a.status not in (AttemptStatus.LOST, AttemptStatus.REFUSED)]


def gate_price(ctx: PilotContext, tried: list[RunAttempt], dph: float, estimate: float) -> float:
    """What this attempt asks the reservation to cover: on the first host, the run's estimated cost on this offer;
    on a retry, what the run spent so far plus one heartbeat window on the new host (live burn is watched against
    the reservation from then on)."""
    if not any(a.launched_at is not None for a in tried):
        return estimate
    return attempts_cost(tried) + cost_of_seconds(dph, ctx.settings.training.heartbeat_timeout_s)


def launch_attempt(ctx: PilotContext, run: TrainingRun, snapshot: DatasetSnapshot, *, lease: str) -> LaunchOutcome:
    """Stage and launch the next attempt on a host not tried yet. The attempt row is committed before renting, and
    the effect gate is asked right before the provider call (and again right after it returns)."""
    remote = ctx.settings.gpu.remote
    inputs = stage_inputs(ctx, run, snapshot)
    if (run.config or {}).get("inputs") != inputs:
        run = set_run_fields(ctx, run.id, config={**run.config, "inputs": inputs})
    tried = run_attempts(ctx, run.id)
    used = tried_hosts(tried)
    excluded = {a.host for a in used if a.host} | {a.offer_id for a in used}
    secrets = secrets_to_withhold(ctx)
    last_error = "no offer"
    for _ in range(_OFFER_TRIES):
        if len(used) >= remote.max_attempts:
            return LaunchOutcome(run, False, f"{len(used)} host(s) tried ({last_error}); giving up")
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
                price_usd=gate_price(ctx, tried, dph, estimate),
            )
        except EffectRefused as exc:
            end_attempt(ctx, attempt.id, AttemptStatus.REFUSED, exc.reason)
            return LaunchOutcome(run, False, exc.reason, refused=True)
        testpoints.reached("rent_authorized")
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
            end_attempt(ctx, attempt.id, AttemptStatus.LAUNCH_FAILED, last_error)
            tried = run_attempts(ctx, run.id)
            used = tried_hosts(tried)
            continue
        testpoints.reached("provider_accepted")
        return record_launch(ctx, run, attempt, instance, offer, lease=lease, checkpoint=checkpoint)
    return LaunchOutcome(run, False, last_error)


def record_launch(
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
    testpoints.reached("attempt_launched")
    try:
        authorize(ctx.store, Effect.RENT, ctx.settings, owner=ctx.owner, lease=lease, run_id=run.id)
        run = put_run_on(ctx, run.id, attempt, instance.id, why)
    except (EffectRefused, ConflictError, TransitionError) as exc:
        reason = exc.reason if isinstance(exc, EffectRefused) else str(exc)
        logger.warning("Run %s: instance %s accepted but %s; destroying it", run.id, instance.id, reason)
        destroy_attempt(ctx, attempt.id, instance.id, f"accepted after the run was stopped: {reason}")
        return LaunchOutcome(find_run(ctx, run.id), False, reason, refused=True)
    logger.info("Run %s %s", run.id, why)
    testpoints.reached("launch_recorded")
    return LaunchOutcome(run, True)


def put_run_on(ctx: PilotContext, run_id: str, attempt: RunAttempt, instance_id: str, why: str) -> TrainingRun:
    """Record that the run now runs on ``attempt``'s instance: ``pending -> provisioning`` the first time, else the
    fields by compare-and-set on a live run (``ConflictError`` when it ended meanwhile)."""
    with ctx.store.session(write=True) as session:
        current = session.get(TrainingRun, run_id, populate_existing=True)
        assert current is not None
        if current.status == RunStatus.PENDING:
            return switch_run_status(
                session,
                run_id,
                RunStatus.PROVISIONING,
                actor="system",
                reason=why,
                expected=RunStatus.PENDING,
                instance_id=instance_id,
                offer_id=attempt.offer_id,
                dph=attempt.dph,
            )
    run_event(ctx, run_id, why, instance=instance_id)
    return set_run_fields(ctx, run_id, instance_id=instance_id, offer_id=attempt.offer_id, dph=attempt.dph)


def end_attempt(ctx: PilotContext, attempt_id: str, status: AttemptStatus, reason: str, **fields: Any) -> None:
    with ctx.store.session(write=True) as session:
        switch_attempt_status(session, attempt_id, status, actor="system", reason=reason[:1000], **fields)


def destroy_attempt(ctx: PilotContext, attempt_id: str, instance_id: str, why: str) -> bool:
    """Destroy the attempt's instance and verify it gone: ``ended``, else ``ending`` (the reconciler retries)."""
    testpoints.reached("before_destroy")
    gone = destroy_verified(ctx.gpu, instance_id, teardown_policy(ctx.settings)).gone
    testpoints.reached("after_destroy")
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
