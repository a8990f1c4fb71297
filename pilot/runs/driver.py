"""Drive a training run on its provider: the local host (a subprocess here) or a rented one (``pilot.runs.remote``).

``advance_run`` is one level-triggered step (rent if nothing is rented, else poll and act), safe to call from any
process that holds the run's lease; the daemon's jobs worker calls it on every pass. ``watch_run`` takes the lease
and steps until the run ends (``run --once``, the rehearsal, tests); without the lease it returns at once: another
process is driving the run, and two drivers would mean two paid hosts.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pilot import testpoints
from pilot.context import PilotContext
from pilot.errors import ConflictError, TransitionError
from pilot.runs import remote
from pilot.runs.lifecycle import collect_run, end_not_rented, fail_run, is_remote, run_dir, training_params
from pilot.runs.teardown import destroy_verified, teardown_policy
from pilot.spend.costs import burn_exceeds_reservation, elapsed_cost, reserved_for_run
from pilot.spend.effects import Effect, EffectRefused, authorize
from pilot.store.leases import LeaseKeeper, holds, run_lease
from pilot.store.models import DatasetSnapshot, TrainingRun, utcnow
from pilot.store.status import EntityType, RunStatus, RunTerminationReason
from pilot.store.writers import record_event, switch_run_status
from subagents.training import INIT_DIR, METHOD_FILES, classify_exit, init_adapter_files, job_config, method_params
from tools.errors import ArtifactError, ProviderError
from tools.gpu.base import InstanceState, LaunchSpec

logger = logging.getLogger(__name__)


def _find(ctx: PilotContext, run_id: str) -> TrainingRun:
    with ctx.store.session() as session:
        run = session.get(TrainingRun, run_id, populate_existing=True)
    assert run is not None, run_id
    return run


def advance_run(ctx: PilotContext, run_id: str, *, lease: str, poll_s: float | None = None) -> TrainingRun:
    """One step of the run; returns it as it is after the step."""
    run = _find(ctx, run_id)
    if RunStatus(run.status).is_terminal:
        return run
    if is_remote(run.provider):
        return remote.advance_remote(ctx, run_id, lease=lease, poll_s=poll_s)
    try:
        if run.instance_id is None:
            return _launch_local(ctx, run, lease=lease)
        return _advance_local(ctx, run, poll_s=poll_s if poll_s is not None else ctx.settings.training.poll_interval_s)
    except (ConflictError, TransitionError):  # ended meanwhile (the kill switch): this step stops here
        run = _find(ctx, run_id)
        if RunStatus(run.status).is_terminal:
            return run
        raise


def watch_run(
    ctx: PilotContext, run_id: str, *, sleep: Callable[[float], None] = time.sleep, poll_s: float | None = None
) -> TrainingRun:
    """Take the run's lease and step it until it ends (returns at once when another process holds the lease)."""
    poll_s = poll_s if poll_s is not None else ctx.settings.training.poll_interval_s
    with LeaseKeeper(ctx.store, run_lease(run_id), ctx.owner, ttl_s=ctx.settings.scheduler.lease_ttl_s) as lease:
        if not lease.held:
            logger.info("Run %s is driven by another process; not watching it here", run_id)
            return _find(ctx, run_id)
        testpoints.reached("lease_taken")
        for _ in range(10_000_000):  # bounded: every step sleeps or ends, and the deadlines end the run
            if lease.lost.is_set() or not _still_holds(ctx, lease.name):
                logger.warning("Run %s: this process lost its lease; another one drives the run now", run_id)
                return _find(ctx, run_id)
            run = advance_run(ctx, run_id, lease=lease.name, poll_s=poll_s)
            if RunStatus(run.status).is_terminal:
                return run
            sleep(poll_s)
    raise AssertionError("unreachable: the deadlines end every run")


def _still_holds(ctx: PilotContext, lease: str) -> bool:
    """The fencing check before each step (the effect gate checks again before each side effect)."""
    with ctx.store.session() as session:
        return holds(session, lease, ctx.owner)


def launch_run(ctx: PilotContext, run: TrainingRun, snapshot: DatasetSnapshot) -> TrainingRun:
    """Rent and start (the first step of ``watch_run``), under the run's lease."""
    if run.instance_id is not None or run.status != RunStatus.PENDING:
        return run
    with LeaseKeeper(ctx.store, run_lease(run.id), ctx.owner, ttl_s=ctx.settings.scheduler.lease_ttl_s) as lease:
        if not lease.held:
            return _find(ctx, run.id)
        return advance_run(ctx, run.id, lease=lease.name)


def _launch_local(ctx: PilotContext, run: TrainingRun, *, lease: str) -> TrainingRun:
    with ctx.store.session() as session:
        snapshot = session.get(DatasetSnapshot, run.snapshot_id)
    assert snapshot is not None
    workdir = run_dir(ctx, run.id)
    output_dir = workdir / "output"
    output_dir.mkdir(parents=True, exist_ok=True)
    snap = Path(snapshot.path)
    figures = (run.config or {}).get("plan") or {}
    method = str(figures.get("method", "sft"))
    try:
        init = _fetch_init_adapter(ctx, figures, workdir / INIT_DIR)
    except ArtifactError as exc:
        why = f"the champion's adapter (GRPO's initial policy) could not be fetched: {exc}"
        return fail_run(ctx, run.id, RunTerminationReason.LAUNCH_FAILED, why, cost=0.0)
    config = job_config(
        training_params(ctx),
        train_file=snap / METHOD_FILES[method],
        eval_file=snap / "eval.jsonl",
        output_dir=output_dir,
        preference=method_params(figures),
        init_adapter=init,
    )
    config_path = workdir / "job.json"
    config_path.write_text(json.dumps(config, indent=2))
    module = ctx.host_modules.for_method(method)
    spec = LaunchSpec(
        label=run.label,
        offer_id=run.offer_id,
        image=ctx.settings.gpu.vast.image,
        command=[sys.executable, "-m", module, "--config", str(config_path)],
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"},
    )
    try:
        authorize(
            ctx.store,
            Effect.RENT,
            ctx.settings,
            owner=ctx.owner,
            lease=lease,
            run_id=run.id,
            price_usd=run.estimated_cost_usd,
        )
    except EffectRefused as exc:
        return end_not_rented(ctx, run.id, exc.reason, cost=0.0)
    try:
        instance = ctx.gpu.launch(spec)
    except ProviderError as exc:
        logger.warning("Launch of run %s failed: %s", run.id, exc)
        return fail_run(ctx, run.id, RunTerminationReason.LAUNCH_FAILED, f"launch failed: {exc}", cost=0.0)
    testpoints.reached("provider_accepted")
    try:
        with ctx.store.session(write=True) as session:
            return switch_run_status(
                session,
                run.id,
                RunStatus.PROVISIONING,
                actor="system",
                reason=f"instance {instance.id} accepted by {ctx.gpu.name}",
                expected=RunStatus.PENDING,
                instance_id=instance.id,
                config={**run.config, "job": config},
            )
    except (ConflictError, TransitionError) as exc:  # cancelled while the provider answered: tear it down
        destroy_verified(ctx.gpu, instance.id, teardown_policy(ctx.settings))
        logger.warning("Run %s ended while instance %s started (%s); destroyed", run.id, instance.id, exc)
        return _find(ctx, run.id)


def _fetch_init_adapter(ctx: PilotContext, figures: dict[str, Any], dest: Path) -> Path | None:
    """The champion's adapter files a GRPO plan starts from, copied out of the artifact store into ``dest`` and
    checked against their recorded sha256 (``ArtifactError`` otherwise); None when the run starts from base."""
    files = init_adapter_files(figures)
    for name, ref in sorted(files.items()):
        ctx.artifacts.get(ref["key"], dest / name, sha256=ref["sha256"])
    return dest if files else None


def _cost(run: TrainingRun) -> float:
    return elapsed_cost(run.dph, run.started_at or run.created_at)


def _advance_local(ctx: PilotContext, run: TrainingRun, *, poll_s: float) -> TrainingRun:
    settings = ctx.settings.training
    instance_id = run.instance_id
    assert instance_id is not None
    if burn_exceeds_reservation(run, utcnow(), horizon_s=poll_s):
        destroy_verified(ctx.gpu, instance_id, teardown_policy(ctx.settings))
        return fail_run(
            ctx,
            run.id,
            RunTerminationReason.BUDGET_EXCEEDED,
            f"live burn would pass the ${reserved_for_run(run):.4f} reservation; instance destroyed",
            cost=_cost(run),
        )
    instance = ctx.gpu.poll(instance_id)
    if instance.state is InstanceState.RUNNING and run.status == RunStatus.PROVISIONING:
        with ctx.store.session(write=True) as session:
            run = switch_run_status(session, run.id, RunStatus.RUNNING, actor="system", reason="the job started")
    if instance.state in (InstanceState.LOADING, InstanceState.RUNNING):
        deadline = (run.started_at or run.created_at).timestamp() + settings.max_duration_minutes * 60
        if time.time() > deadline:
            destroy_verified(ctx.gpu, instance_id, teardown_policy(ctx.settings))
            return fail_run(
                ctx,
                run.id,
                RunTerminationReason.DEADLINE_EXCEEDED,
                f"still running after {settings.max_duration_minutes:.0f} min; instance destroyed",
                cost=_cost(run),
            )
        return run
    outcome = classify_exit(instance, ctx.gpu.logs(instance_id, tail=20))
    gone = destroy_verified(ctx.gpu, instance_id, teardown_policy(ctx.settings)).gone
    cost = _cost(run)
    if not gone:
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type=EntityType.TRAINING_RUN,
                entity_id=run.id,
                actor="system",
                reason=f"instance {instance_id} could not be verified destroyed; the reconciler will retry",
            )
    if not outcome.ok:
        return fail_run(
            ctx, run.id, RunTerminationReason(outcome.termination or "job_failed"), outcome.reason, cost=cost
        )
    with ctx.store.session(write=True) as session:
        run = switch_run_status(session, run.id, RunStatus.COLLECTING, actor="system", reason=outcome.reason)
    return collect_run(ctx, run, cost=cost)
