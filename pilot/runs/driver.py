"""Drive a training run on its provider: the local host (a subprocess here) or a rented one (``pilot.runs.remote``).

``launch_run`` rents and starts; ``watch_run`` polls until the job ends or a deadline passes, always destroys the
instance and collects on success. Both are resumable: a restarted process calls them again on the same run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pilot.context import PilotContext
from pilot.runs import remote
from pilot.runs.lifecycle import (
    _elapsed_cost,
    collect_run,
    destroy_and_verify,
    fail_run,
    is_remote,
    run_dir,
    training_params,
)
from pilot.spend.costs import burn_exceeds_reservation
from pilot.store.models import DatasetSnapshot, TrainingRun, utcnow
from pilot.store.status import RunStatus, RunTerminationReason
from pilot.store.writers import record_event, switch_run_status
from subagents.training import classify_exit, job_config
from tools.errors import PilotError, ProviderError
from tools.gpu.base import InstanceState, LaunchSpec

logger = logging.getLogger(__name__)


def launch_run(ctx: PilotContext, run: TrainingRun, snapshot: DatasetSnapshot) -> TrainingRun:
    """Rent and start. On a provider error the run fails and its reservation is released (nothing was rented).

    Remote providers (anything but ``local``) go through ``pilot.runs.remote``: inputs staged in the artifact store, a
    bootstrap with presigned URLs only, and another offer tried when one is taken or refuses to start.
    """
    if run.instance_id is not None or run.status != RunStatus.PENDING:
        return run
    if is_remote(ctx.gpu.name):
        try:
            run = remote.adopt_or_clean(ctx, run)
        except PilotError as exc:
            return fail_run(ctx, run.id, RunTerminationReason.LAUNCH_FAILED, f"launch failed: {exc}", cost=0.0)
        if run.instance_id is not None:
            return run
        outcome = remote.launch_attempt(ctx, run, snapshot)
        if outcome.launched:
            return outcome.run
        return remote.finish_failed(ctx, outcome.run, RunTerminationReason.LAUNCH_FAILED, outcome.reason)
    workdir = run_dir(ctx, run.id)
    output_dir = workdir / "output"
    output_dir.mkdir(parents=True, exist_ok=True)
    snap = Path(snapshot.path)
    config = job_config(
        training_params(ctx), train_file=snap / "train.jsonl", eval_file=snap / "eval.jsonl", output_dir=output_dir
    )
    config_path = workdir / "job.json"
    config_path.write_text(json.dumps(config, indent=2))
    spec = LaunchSpec(
        label=run.label,
        offer_id=run.offer_id,
        image=ctx.settings.gpu.vast.image,
        command=[sys.executable, "-m", "jobs.finetune_lora", "--config", str(config_path)],
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"},
    )
    try:
        instance = ctx.gpu.launch(spec)
    except ProviderError as exc:
        logger.warning("Launch of run %s failed: %s", run.id, exc)
        return fail_run(ctx, run.id, RunTerminationReason.LAUNCH_FAILED, f"launch failed: {exc}", cost=0.0)
    with ctx.store.session(write=True) as session:
        return switch_run_status(
            session,
            run.id,
            RunStatus.PROVISIONING,
            actor="system",
            reason=f"instance {instance.id} accepted by {ctx.gpu.name}",
            instance_id=instance.id,
            config={**run.config, "job": config},
        )


def watch_run(
    ctx: PilotContext, run_id: str, *, sleep: Callable[[float], None] = time.sleep, poll_s: float | None = None
) -> TrainingRun:
    """Poll until the job ends or a deadline passes; always destroy the instance; collect on success."""
    with ctx.store.session() as session:
        row = session.get(TrainingRun, run_id)
    if row is not None and is_remote(row.provider):
        return remote.watch_remote(ctx, run_id, sleep=sleep, poll_s=poll_s)
    settings = ctx.settings.training
    poll_s = poll_s if poll_s is not None else settings.poll_interval_s
    with ctx.store.session() as session:
        run = session.get(TrainingRun, run_id)
    assert run is not None and run.instance_id is not None, f"run {run_id} was never launched"
    instance_id = run.instance_id
    deadline = (run.started_at or run.created_at).timestamp() + settings.max_duration_minutes * 60
    while True:
        with ctx.store.session() as session:
            current = session.get(TrainingRun, run_id)
        if current is not None and RunStatus(current.status).is_terminal:
            # The kill switch or the reconciler ended it meanwhile (and destroyed the instance): nothing to do.
            return current
        if current is not None:
            run = current
        if burn_exceeds_reservation(run, utcnow(), horizon_s=poll_s):
            destroy_and_verify(ctx, instance_id)
            return fail_run(
                ctx,
                run_id,
                RunTerminationReason.BUDGET_EXCEEDED,
                f"live burn would pass the ${run.config.get('reserved_usd', run.estimated_cost_usd):.4f} reservation; "
                "instance destroyed",
                cost=_elapsed_cost(run),
            )
        instance = ctx.gpu.poll(instance_id)
        if instance.state is InstanceState.RUNNING and run.status == RunStatus.PROVISIONING:
            with ctx.store.session(write=True) as session:
                run = switch_run_status(session, run_id, RunStatus.RUNNING, actor="system", reason="the job started")
        if instance.state not in (InstanceState.LOADING, InstanceState.RUNNING):
            break
        if time.time() > deadline:
            destroy_and_verify(ctx, instance_id)
            return fail_run(
                ctx,
                run_id,
                RunTerminationReason.DEADLINE_EXCEEDED,
                f"still running after {settings.max_duration_minutes:.0f} min; instance destroyed",
                cost=_elapsed_cost(run),
            )
        sleep(poll_s)
    outcome = classify_exit(instance, ctx.gpu.logs(instance_id, tail=20))
    gone = destroy_and_verify(ctx, instance_id)
    cost = _elapsed_cost(run)
    if not gone:
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type="training_run",
                entity_id=run_id,
                actor="system",
                reason=f"instance {run.instance_id} could not be verified destroyed; the reconciler will retry",
            )
    if not outcome.ok:
        return fail_run(
            ctx, run_id, RunTerminationReason(outcome.termination or "job_failed"), outcome.reason, cost=cost
        )
    with ctx.store.session(write=True) as session:
        run = switch_run_status(session, run_id, RunStatus.COLLECTING, actor="system", reason=outcome.reason)
    return collect_run(ctx, run, cost=cost)
