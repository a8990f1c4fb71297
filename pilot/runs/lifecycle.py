"""The training run lifecycle — where money is spent.

Order (intent before side effect): the run row and its budget reservation are committed (PENDING) before
anything is rented; the instance is labelled ``learning-pilot/<env>/<run_id>`` so a crash at any point is
recoverable by the reconciler; the instance is always destroyed at the end and verified gone; the actual cost
replaces the reservation. Only ``pilot.store.writers`` changes the run's status.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from pilot import testpoints
from pilot.context import PilotContext
from pilot.errors import ConflictError, TransitionError
from pilot.spend.costs import reservation_for
from pilot.spend.ledger import reserve, settle
from pilot.store.models import DatasetSnapshot, ModelVersion, TrainingRun
from pilot.store.status import EntityType, ModelStatus, RunStatus, RunTerminationReason
from pilot.store.writers import is_paused, record_event, switch_run_status
from subagents.training import TrainingParams, TrainingPlan
from tools.artifacts.base import PICKLE_SUFFIXES

logger = logging.getLogger(__name__)


def is_remote(provider_name: str) -> bool:
    """Every provider but ``local`` boots a host that fetches its inputs (see ``pilot.runs.remote``)."""
    return provider_name != "local"


ADAPTER_WEIGHTS = "adapter_model.safetensors"
SERVED_SUFFIXES = (".safetensors", ".json")


def training_params(ctx: PilotContext) -> TrainingParams:
    t = ctx.settings.training
    fields = TrainingParams.__dataclass_fields__
    return TrainingParams(**{name: getattr(t, name) for name in fields})


def create_run(
    ctx: PilotContext, *, decision_id: str, approval_id: str | None, snapshot: DatasetSnapshot, plan: TrainingPlan
) -> TrainingRun:
    """Commit the run row and its reservation. Idempotent per decision (a re-run graph node finds its run)."""
    run_id = f"run-{uuid.uuid4().hex[:10]}"
    label = ctx.instance_label(run_id)  # before the write transaction: it may create the installation id
    with ctx.store.session(write=True) as session:
        existing = session.exec(select(TrainingRun).where(TrainingRun.decision_id == decision_id)).first()
        if existing is not None:
            return existing
        # The estimate plus headroom: a run is stopped when its live burn would pass the reservation, and the
        # approver is shown this maximum (an estimate is only an estimate).
        reserved = reservation_for(plan.estimated_cost_usd, ctx.settings.budget)
        reserve(
            ctx.store,
            session,
            amount_usd=reserved,
            caps=ctx.settings.budget,
            run_id=run_id,
            note=f"{plan.offer.gpu_name} at ${plan.offer.dph_total:.3f}/h for ~{plan.expected_hours:.2f} h",
        )
        run = TrainingRun(
            id=run_id,
            decision_id=decision_id,
            approval_id=approval_id,
            snapshot_id=snapshot.id,
            status=RunStatus.PENDING,
            provider=ctx.gpu.name,
            label=label,
            offer_id=plan.offer.id,
            dph=plan.offer.dph_total,
            estimated_cost_usd=plan.estimated_cost_usd,
            config={"plan": plan.figures, "params": asdict(training_params(ctx)), "reserved_usd": reserved},
        )
        session.add(run)
        session.flush()
        record_event(
            session,
            entity_type=EntityType.TRAINING_RUN,
            entity_id=run_id,
            actor="supervisor",
            reason=f"run created for decision {decision_id}; estimated ${plan.estimated_cost_usd:.4f}, "
            f"${reserved:.4f} reserved",
            new=RunStatus.PENDING,
        )
    testpoints.reached("run_created")
    return run


def run_dir(ctx: PilotContext, run_id: str) -> Path:
    return ctx.settings.work_dir / "runs" / run_id


def fail_run(
    ctx: PilotContext, run_id: str, termination: RunTerminationReason, message: str, *, cost: float
) -> TrainingRun:
    with ctx.store.session(write=True) as session:
        run = switch_run_status(
            session,
            run_id,
            termination.to_status(),
            actor="system",
            reason=message,
            termination_reason=termination,
            status_message=message,
            actual_cost_usd=cost,
        )
        settle(session, run_id, cost, note=message[:200])
    return run


def end_not_rented(ctx: PilotContext, run_id: str, reason: str, *, cost: float) -> TrainingRun:
    """The effect gate refused the run's next rental: the run ends with what it spent — cancelled when the pilot is
    paused (the kill switch), failed otherwise; a run the kill switch already ended is returned as it is."""
    with ctx.store.session() as session:
        paused = is_paused(session)
    termination = RunTerminationReason.KILL_SWITCH if paused else RunTerminationReason.LAUNCH_FAILED
    try:
        return fail_run(ctx, run_id, termination, f"not rented: {reason}", cost=cost)
    except (ConflictError, TransitionError):
        with ctx.store.session() as session:
            run = session.get(TrainingRun, run_id, populate_existing=True)
        assert run is not None
        return run


def collect_run(ctx: PilotContext, run: TrainingRun, *, cost: float) -> TrainingRun:
    """Verify and store the adapter (safetensors only), record metrics, register the candidate version."""
    output_dir = run_dir(ctx, run.id) / "output"
    adapter_dir = output_dir / "adapter"
    present = sorted(p for p in adapter_dir.glob("*") if p.is_file()) if adapter_dir.is_dir() else []
    unsafe = [p.name for p in present if p.suffix in PICKLE_SUFFIXES]
    # Only weights and their config are kept; what a trainer writes beside them (README.md) is not an artifact.
    files = [p for p in present if p.suffix in SERVED_SUFFIXES]
    if not files or not (adapter_dir / ADAPTER_WEIGHTS).is_file() or unsafe:
        why = f"refused unsafe files {unsafe}" if unsafe else f"no {ADAPTER_WEIGHTS} in the job's output"
        return fail_run(ctx, run.id, RunTerminationReason.INVALID_OUTPUT, why, cost=cost)
    stored: dict[str, dict[str, Any]] = {}
    for path in files:
        ref = ctx.artifacts.put(f"runs/{run.id}/adapter/{path.name}", path)
        stored[path.name] = {"key": ref.key, "uri": ref.uri, "sha256": ref.sha256, "size": ref.size}
    metrics_file = output_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return register_candidate(ctx, run, stored, metrics, cost=cost)


def register_candidate(
    ctx: PilotContext, run: TrainingRun, stored: dict[str, dict[str, Any]], metrics: dict[str, Any], *, cost: float
) -> TrainingRun:
    """Record the verified adapter as a candidate version, settle the ledger, and end the run SUCCEEDED."""
    testpoints.reached("settling")
    with ctx.store.session(write=True) as session:
        snapshot = session.get(DatasetSnapshot, run.snapshot_id)
        version_id = _next_version_id(session)
        weights = stored[ADAPTER_WEIGHTS]
        session.add(
            ModelVersion(
                id=version_id,
                status=ModelStatus.CANDIDATE,
                run_id=run.id,
                snapshot_id=run.snapshot_id,
                snapshot_hash=snapshot.content_hash if snapshot else None,
                base_model=ctx.settings.training.base_model,
                adapter_uri=str(weights["uri"]).rsplit("/", 1)[0],
                adapter_sha256=str(weights["sha256"]),
                adapter_files=stored,
            )
        )
        record_event(
            session,
            entity_type=EntityType.MODEL_VERSION,
            entity_id=version_id,
            actor="system",
            reason=f"candidate from run {run.id}, adapter sha256 {weights['sha256'][:12]}",
            new=ModelStatus.CANDIDATE,
        )
        settle(session, run.id, cost, note="actual")
        run = switch_run_status(
            session,
            run.id,
            RunStatus.SUCCEEDED,
            actor="system",
            reason=f"adapter stored as {version_id}",
            metrics=metrics,
            actual_cost_usd=cost,
        )
    testpoints.reached("candidate_registered")
    return run


def version_for_run(ctx: PilotContext, run_id: str) -> ModelVersion | None:
    with ctx.store.session() as session:
        return session.exec(select(ModelVersion).where(ModelVersion.run_id == run_id)).first()


def _next_version_id(session: Session) -> str:
    count = session.exec(select(func.count()).select_from(ModelVersion)).one()
    return f"v{int(count) + 1}"
