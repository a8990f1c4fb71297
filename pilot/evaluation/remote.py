"""Evaluation as a stage on a rented host: the candidate and the champion answer the golden set there, the
daemon downloads their predictions and scores them itself (pilot/evaluation/evaluate.py).

One stage = one short on-demand instance, labelled ``learning-pilot/<env>/<stage_id>`` (``stage_id`` =
``eval-<version>-<hex>``), launched through pilot/runs/remote.py's bootstrap (code archive, manifest of presigned URLs,
``host_spec``'s credential check) and running jobs/remote_entry.py's ``evaluate`` stage: jobs.generate once per
side, predictions and summary uploaded through presigned PUTs, the result (sha256 of every upload) last.

Invariants:
- Intent before side effect: the stage's budget reservation (``SpendEntry.run_id`` = ``stage_id``, $/h x
  (``evaluation.remote_max_minutes`` + loading timeout + one poll and 60 s to tear down), the most the stage may
  run and be billed) and an ``evaluation`` event are
  committed before an instance is rented. Whatever happens after, every instance carrying the label is destroyed
  and verified gone, and the reservation is settled with what the provider charged for the label (else elapsed
  time x $/h), before the stage's outcome is looked at.
- Adapters go to the host by their stored keys and sha256 (verified by the daemon before renting, and by the host
  on download). The host never sees a reference: it gets ``prompts.jsonl`` (each golden item's id and the
  messages before its reference answer; no reference, no tests, no domain), so echoing or inspecting what it got
  cannot score a point. The daemon keeps the golden file and scores here.
- Nothing the host reports about quality is used: not its summary's eval loss, not any extra field of a prediction
  line, not a loss (it had no reference to compute one from: the eval loss of a remote stage is None). Only each
  item's ``prediction`` (a string) is read, from files whose sha256 matches the result's. A missing, tampered or
  malformed predictions file is an ``EvaluationError``: the candidate is rejected with the reason.
- A stage is a durable job (pilot/evaluation/stages.py): ``open_stage`` rents it (the supervisor's ``evaluate`` node,
  which then waits with ``interrupt()``), a worker or ``drive_stage`` advances it one restartable step at a time
  under the stage's lease, and ``collect_stage`` reads its predictions once the host uploaded them.
- A stage does not retry on another host: a failed stage rejects the candidate (the next cycle may train again).
- Heartbeat and result are read within their size caps and schemas (pilot/runs/host.py); one refused is a host
  fault that fails the stage with the reason, never an exception out of the watcher.
- No heartbeat for ``training.heartbeat_timeout_s``, still loading after ``gpu.remote.loading_timeout_s``, or running
  past ``evaluation.remote_max_minutes``: the instance is destroyed and the stage fails.
- No training run carries a stage's label, so the reconciler asks ``live_stage_labels`` which owned instances are
  live stages (not orphans), and ``reconcile_stages`` ends the stages a dead daemon left open (reservation still
  active past the deadline): instances destroyed and verified gone, reservation settled.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlmodel import col, select

from pilot import testpoints
from pilot.context import PilotContext
from pilot.errors import BudgetError, ConflictError, TransitionError
from pilot.evaluation import stages
from pilot.evaluation.predictions import EvaluationError, read_predictions
from pilot.runs import attempts, host
from pilot.runs import lifecycle as runs
from pilot.settings import Settings
from pilot.spend.costs import cost_of_seconds
from pilot.spend.effects import Effect, EffectRefused, authorize
from pilot.spend.ledger import reserve
from pilot.store.models import EvalStage, SpendEntry, as_utc, utcnow
from pilot.store.status import EntityType, StageStatus
from pilot.store.writers import is_paused, record_event
from subagents.training import requirements_for
from tools.artifacts.base import sha256_file
from tools.errors import ArtifactError, PilotError
from tools.gpu.base import Offer

logger = logging.getLogger(__name__)

Side = Literal["candidate", "champion"]
SIDES: tuple[Side, ...] = ("candidate", "champion")
EVENT = EntityType.EVALUATION  # entity type of the stage's events (entity id: the stage id)
STAGE_PREFIX = "eval-"  # stage ids (and so ledger run ids and instance labels) start with this
_GRACE_S = 300.0  # after its deadline, a stage still holding its reservation is one whose daemon died
# Reserved past the deadline: the watcher sees the deadline up to one poll late, then destroys the instance and
# verifies it gone, and the provider bills until then. Without it a stage run to its limit costs more than reserved.
_TEARDOWN_S = 60.0


def evaluates_remotely(settings: Settings) -> bool:
    """``evaluation.where``; ``auto`` means remote for a rented provider and a base model of at least
    ``evaluation.remote_min_params_b`` billion parameters."""
    e = settings.evaluation
    match e.where:
        case "local":
            return False
        case "remote":
            return True
        case "auto":
            return (
                runs.is_remote(settings.gpu.provider) and settings.training.base_model_params_b >= e.remote_min_params_b
            )


# -- the stage ----------------------------------------------------------------------------------------------
def _choose_offer(ctx: PilotContext) -> Offer:
    """The cheapest on-demand offer that meets the job's requirements (a short stage is not worth a bid that
    can be outbid midway: it does not retry)."""
    requirements = requirements_for(runs.training_params(ctx), max_dph=ctx.settings.budget.max_dph)
    try:
        offers = [o for o in ctx.gpu.search_offers(requirements) if o.dph_total <= ctx.settings.budget.max_dph]
    except PilotError as exc:
        raise EvaluationError(f"offer search for the evaluation stage failed: {exc}") from exc
    if not offers:
        raise EvaluationError("no offer meets the evaluation stage's requirements")
    return min(offers, key=lambda o: (o.dph_total, o.id))


def _reserve(ctx: PilotContext, stage_id: str, label: str, version_id: str) -> EvalStage:
    offer = _choose_offer(ctx)
    dph = attempts.offer_dph(offer, None, ctx.settings.gpu.remote.disk_gb)
    settings = ctx.settings
    seconds = (
        settings.evaluation.remote_max_minutes * 60
        + settings.gpu.remote.loading_timeout_s
        + settings.training.poll_interval_s
        + _TEARDOWN_S
    )
    hours, amount = seconds / 3600, cost_of_seconds(dph, seconds)
    try:
        with ctx.store.session(write=True) as session:
            if is_paused(session):  # nothing is reserved either (the gate refuses the rental itself at launch)
                raise EvaluationError("the pilot is paused (kill switch): no instance is rented for the evaluation")
            reserve(
                ctx.store,
                session,
                amount_usd=amount,
                caps=ctx.settings.budget,
                run_id=stage_id,
                note=f"evaluation of {version_id}: {offer.gpu_name} at ${dph:.4f}/h for at most {hours:.2f} h",
            )
            record_event(
                session,
                entity_type=EVENT,
                entity_id=stage_id,
                actor="system",
                reason=f"evaluation of {version_id} on a rented host: ${amount:.4f} reserved for offer {offer.id} "
                f"({offer.gpu_name}, ${dph:.4f}/h)",
                data={"version": version_id, "label": label, "offer_id": offer.id, "dph": dph, "reserved_usd": amount},
            )
            row = EvalStage(
                id=stage_id,
                version_id=version_id,
                status=StageStatus.PENDING,
                label=label,
                offer_id=offer.id,
                gpu=offer.gpu_name,
                dph=dph,
                reserved_usd=amount,
            )
            session.add(row)
            session.flush()
            session.expunge(row)
    except BudgetError as exc:
        raise EvaluationError(f"no budget for the evaluation stage: {exc}") from exc
    return row


def prompts_only(golden: Path, dest: Path) -> int:
    """Write what a host may see of the golden set: per item, its id and the messages before the reference answer
    (the last assistant message). Nothing else of the line travels (no reference, tests, domain). Returns the count."""
    count = 0
    with golden.open() as src, dest.open("w") as out:
        for number, line in enumerate(src, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
                messages = example["messages"]
                last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
                prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages[:last]]
                item_id = str(example["id"])
            except (ValueError, KeyError, TypeError) as exc:
                raise EvaluationError(f"{golden}:{number}: not a golden example ({exc!r})") from exc
            if not prompt or prompt[-1]["role"] != "user":
                raise EvaluationError(f"{golden}:{number}: no user prompt before the reference answer")
            out.write(json.dumps({"id": item_id, "messages": prompt}, ensure_ascii=False) + "\n")
            count += 1
    return count


def _stage_inputs(
    ctx: PilotContext, stage_id: str, golden: Path, adapters: Mapping[Side, Mapping[str, Any] | None]
) -> dict[str, dict[str, Any]]:
    """``name -> {key, sha256, path}``: the code archive and the golden set's prompts (stored for this stage) and
    the adapter files (already stored, by their recorded sha256)."""
    scratch = ctx.settings.work_dir / "eval" / stage_id
    scratch.mkdir(parents=True, exist_ok=True)
    archive = scratch / "code.tar.gz"
    archive.write_bytes(host.code_archive())
    prompts = scratch / "prompts.jsonl"
    prompts_only(golden, prompts)
    inputs: dict[str, dict[str, Any]] = {}
    for name, path, rel in (("code", archive, "code.tar.gz"), ("prompts", prompts, "data/prompts.jsonl")):
        ref = ctx.artifacts.put(f"evals/{stage_id}/inputs/{path.name}", path)
        inputs[name] = {"key": ref.key, "sha256": ref.sha256, "path": rel}
    for side, files in adapters.items():
        for name, ref in sorted((files or {}).items()):
            inputs[f"{side}/{name}"] = {
                "key": str(ref["key"]),
                "sha256": str(ref["sha256"]),
                "path": f"adapters/{side}/{name}",
            }
    return inputs


def _manifest(
    ctx: PilotContext, stage: EvalStage, inputs: dict[str, dict[str, Any]], adapters: Mapping[Side, Any]
) -> dict[str, Any]:
    e = ctx.settings.evaluation
    get_s, put_s = host.url_lifetimes(ctx, run_s=e.remote_max_minutes * 60)
    prefix = f"evals/{stage.id}"

    def get(ref: dict[str, Any]) -> dict[str, Any]:
        return {"url": ctx.artifacts.presign_get(ref["key"], expires_s=get_s), "sha256": ref["sha256"]}

    def put(key: str) -> str:
        return ctx.artifacts.presign_put(key, expires_s=put_s)

    sides = {
        side: {
            "config": {
                "base_model": ctx.settings.training.base_model,
                "adapter": f"adapters/{side}" if adapters.get(side) else None,
                "input_file": "data/prompts.jsonl",
                "output_file": f"output/{side}.jsonl",
                "max_new_tokens": e.max_new_tokens,
                "batch_size": e.batch_size,
            }
        }
        for side in SIDES
    }
    return {
        "stage": "evaluate",
        "run_id": stage.id,
        "attempt": 1,
        "heartbeat_every_s": ctx.settings.gpu.remote.heartbeat_every_s,
        "job_module": ctx.host_modules.generate,
        "code": get(inputs["code"]),
        "inputs": {name: {**get(ref), "path": ref["path"]} for name, ref in inputs.items() if name != "code"},
        "sides": sides,
        "outputs": {
            "heartbeat": put(f"{prefix}/heartbeat.json"),
            "result": put(f"{prefix}/result.json"),
            "predictions": {side: put(f"{prefix}/output/{side}.jsonl") for side in SIDES},
            "summaries": {side: put(f"{prefix}/output/{side}.summary.json") for side in SIDES},
        },
    }


def _download(ctx: PilotContext, stage_id: str, result: Mapping[str, Any], golden_ids: list[str]) -> dict[str, Any]:
    scratch = ctx.settings.work_dir / "eval" / stage_id / "download"
    claimed = result.get("predictions")
    out: dict[str, Any] = {}
    for side in SIDES:
        meta = claimed.get(side) if isinstance(claimed, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            raise EvaluationError(f"the evaluation host uploaded no predictions for the {side}")
        dest = scratch / f"{side}.jsonl"
        try:
            key = f"evals/{stage_id}/output/{side}.jsonl"
            ctx.artifacts.get(key, dest, sha256=meta["sha256"], max_bytes=host.PREDICTIONS_LIMIT)
        except ArtifactError as exc:
            raise EvaluationError(f"the {side}'s predictions from the evaluation host were refused: {exc}") from exc
        predictions, eval_loss = read_predictions(dest, golden_ids, losses=False)
        out[side] = {"predictions": predictions, "eval_loss": eval_loss, "predictions_sha256": sha256_file(dest)}
    return out


def open_stage(
    ctx: PilotContext,
    *,
    version_id: str,
    golden: Path,
    adapters: Mapping[Side, Mapping[str, Any] | None],
    lease: str | None = None,
) -> str:
    """Reserve, stage the inputs, ask the effect gate (``lease``: the supervisor thread's) and rent the host; returns
    the stage id, ``launched``. The host is then advanced by pilot/evaluation/stages.py (a worker, or ``drive_stage``)
    and read by ``collect_stage``. Raises ``EvaluationError`` when the stage cannot start; nothing is left rented
    and the reservation is settled then.

    ``adapters``: each side's stored adapter files (``ModelVersion.adapter_files``; None for the base model), already
    verified by the caller."""
    stage_id = f"{STAGE_PREFIX}{version_id}-{uuid.uuid4().hex[:8]}"[:40]
    label = ctx.instance_label(stage_id)
    stage = _reserve(ctx, stage_id, label, version_id)
    assert stage.offer_id is not None
    why = "not launched"
    try:
        inputs = _stage_inputs(ctx, stage_id, golden, adapters)
        manifest = _manifest(ctx, stage, inputs, adapters)
        manifest_url = host.upload_manifest(
            ctx,
            f"evals/{stage_id}/manifest.json",
            manifest,
            ctx.settings.work_dir / "eval" / stage_id / "manifest.json",
        )
        spec = host.host_spec(
            ctx,
            label=label,
            offer_id=stage.offer_id,
            bid=None,
            manifest=manifest,
            manifest_url=manifest_url,
            secrets=host.secrets_to_withhold(ctx),
        )
        testpoints.reached("stage_inputs")
        try:
            authorize(
                ctx.store,
                Effect.START_STAGE,
                ctx.settings,
                owner=ctx.owner,
                lease=lease,
                stage_id=stage_id,
                price_usd=stage.reserved_usd,
            )
        except EffectRefused as exc:
            why = f"not rented: {exc.reason}"
            raise EvaluationError(f"the evaluation stage was not started: {exc.reason}") from exc
        try:
            instance = ctx.gpu.launch(spec)
        except PilotError as exc:
            why = f"launch on offer {stage.offer_id} failed: {exc}"
            raise EvaluationError(f"the evaluation stage could not start: {why}") from exc
        why = "the daemon stopped (an error)"
        try:
            stages.switch(
                ctx,
                stage_id,
                StageStatus.LAUNCHED,
                f"evaluation instance {instance.id} accepted on offer {stage.offer_id}",
                expected=StageStatus.PENDING,
                instance_id=instance.id,
            )
        except (ConflictError, TransitionError) as exc:
            why = f"the stage ended while the provider answered ({exc})"
            with ctx.store.session(write=True) as session:  # what the provider rented is destroyed by its id too
                row = session.get(EvalStage, stage_id, populate_existing=True)
                assert row is not None
                row.instance_id = instance.id
            raise EvaluationError(f"the evaluation stage was stopped: {why}") from exc
    except BaseException:
        stages.end_stage(ctx, stage_id, why, ok=False)
        raise
    return stage_id


def collect_stage(ctx: PilotContext, stage_id: str, golden_ids: list[str]) -> dict[str, Any]:
    """The predictions of a stage whose host uploaded them (``collecting``, or ``succeeded`` when collected before):
    downloaded, verified against the result's sha256 and read. Returns ``{"candidate": {...}, "champion": {...},
    "stage": {...}}`` (see ``generate_remote``). Raises ``EvaluationError`` for a stage that failed or was cancelled,
    or whose outputs are refused (the stage then fails)."""
    row = stages.get_stage(ctx, stage_id)
    status = StageStatus(row.status)
    if status not in (StageStatus.COLLECTING, StageStatus.SUCCEEDED):
        raise EvaluationError(f"the evaluation stage {stage_id} {row.status}: {row.end_reason or 'no reason given'}")
    scratch = ctx.settings.work_dir / "eval" / stage_id
    try:
        try:
            result = host.read_upload(ctx, f"evals/{stage_id}/result.json", scratch, "result")
        except host.HostFault as exc:
            raise EvaluationError(f"the evaluation host's result was refused: {exc}") from exc
        if result is None:
            raise EvaluationError("the evaluation host's result is gone or unreadable")
        sides = _download(ctx, stage_id, result, golden_ids)
    except EvaluationError as exc:
        stages.switch(ctx, stage_id, StageStatus.FAILED, f"predictions refused: {exc}"[:1000])
        raise
    if status is StageStatus.COLLECTING:
        stages.switch(ctx, stage_id, StageStatus.SUCCEEDED, "predictions downloaded and verified")
    row = stages.get_stage(ctx, stage_id)
    ended = as_utc(row.ended_at) if row.ended_at else utcnow()
    sides["stage"] = {
        "id": stage_id,
        "label": row.label,
        "provider": ctx.gpu.name,
        "offer_id": row.offer_id,
        "gpu": row.gpu,
        "dph": row.dph,
        "reserved_usd": row.reserved_usd,
        "cost_usd": row.actual_cost_usd,
        "instance_verified_gone": row.instance_id is None,
        "duration_s": round((ended - as_utc(row.created_at)).total_seconds(), 2),
    }
    return sides


def generate_remote(
    ctx: PilotContext,
    *,
    version_id: str,
    golden: Path,
    golden_ids: list[str],
    adapters: Mapping[Side, Mapping[str, Any] | None],
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float | None = None,
    lease: str | None = None,
) -> dict[str, Any]:
    """The whole stage in this process (``evaluate_version``'s blocking path): ``open_stage``, drive it until the host
    is done, ``collect_stage``. Returns each side's ``predictions`` (``id -> {"prediction", "loss"}``), its
    ``eval_loss`` computed here and the sha256 of its file, and ``stage``, the account for the record (id, offer, $/h,
    cost, duration). Raises ``EvaluationError`` when the stage cannot run or its outputs are refused; the instance is
    gone and the ledger settled either way (or, for a stage another process holds, when that process ends it)."""
    stage_id = open_stage(ctx, version_id=version_id, golden=golden, adapters=adapters, lease=lease)
    row = stages.drive_stage(ctx, stage_id, sleep=sleep, poll_s=poll_s)
    if not stages.is_ready(row):
        raise EvaluationError(f"the evaluation stage {stage_id} is {row.status}: another process holds it")
    return collect_stage(ctx, stage_id, golden_ids)


# -- reconciliation (pilot/service/reconcile.py calls these) ----------------------------------------------------------


def _stage_lifetime_s(settings: Settings) -> float:
    return settings.evaluation.remote_max_minutes * 60 + settings.gpu.remote.loading_timeout_s + _GRACE_S


def _open_stages(ctx: PilotContext) -> list[EvalStage]:
    """Stages not ended, and ended stages whose instance was not verified gone or whose money is not settled."""
    with ctx.store.session() as session:
        rows = session.exec(select(EvalStage)).all()
        active = {
            str(r)
            for r in session.exec(
                select(SpendEntry.run_id).where(
                    SpendEntry.kind == "reservation",
                    SpendEntry.active == True,  # noqa: E712
                    col(SpendEntry.run_id).startswith(STAGE_PREFIX),
                )
            ).all()
        }
    return [s for s in rows if not StageStatus(s.status).is_terminal or s.instance_id or s.id in active]


def live_stage_labels(ctx: PilotContext, *, now: datetime | None = None) -> set[str]:
    """Labels of evaluation stages that may still be running (reservation active, deadline not passed): the
    reconciler must not take their instances for orphans (no training run carries these labels)."""
    now = now or utcnow()
    lifetime = timedelta(seconds=_stage_lifetime_s(ctx.settings))
    return {
        s.label
        for s in _open_stages(ctx)
        if not StageStatus(s.status).is_terminal and now - as_utc(s.created_at) < lifetime
    }


def reconcile_stages(ctx: PilotContext, *, now: datetime | None = None) -> list[str]:
    """Stages whose daemon died (reservation still active past the stage's deadline), and ended stages whose
    instance was not confirmed gone: ended again by ``stages.end_stage`` (every instance with the label destroyed and
    verified gone, then settled, never below elapsed time x $/h). Returns the stage ids settled; a stage whose
    instance is still not verified gone stays open for the next pass."""
    now = now or utcnow()
    lifetime = timedelta(seconds=_stage_lifetime_s(ctx.settings))
    settled: list[str] = []
    for entry in _open_stages(ctx):
        if not StageStatus(entry.status).is_terminal and now - as_utc(entry.created_at) < lifetime:
            continue
        terminal = StageStatus(entry.status).is_terminal
        why = f"{entry.status}, instance not confirmed gone" if terminal else "abandoned (its daemon stopped)"
        gone, _ = stages.end_stage(ctx, entry.id, f"reconciler: evaluation stage {why}", ok=False)
        if gone:
            settled.append(entry.id)
    return settled
