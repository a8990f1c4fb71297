"""Evaluation as a stage on a rented host: the candidate and the champion answer the golden set there, the
daemon downloads their predictions and scores them itself (pilot/evaluation/evaluate.py).

One stage = one short on-demand instance, labelled ``learning-pilot/<env>/<stage_id>`` (``stage_id`` =
``eval-<version>-<hex>``), launched through pilot/runs/remote.py's bootstrap (code archive, manifest of presigned URLs,
``host_spec``'s credential check) and running jobs/remote_entry.py's ``evaluate`` stage: jobs.generate once per
side, predictions and summary uploaded through presigned PUTs, the result (sha256 of every upload) last.

Invariants:
- Intent before side effect: the stage's budget reservation (``SpendEntry.run_id`` = ``stage_id``, $/h x
  (``evaluation.remote_max_minutes`` + loading timeout), the most the stage may run) and an ``evaluation`` event are
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
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlmodel import col, select

from pilot import testpoints
from pilot.context import PilotContext
from pilot.errors import BudgetError, ConflictError, TransitionError
from pilot.evaluation.predictions import EvaluationError, read_predictions
from pilot.runs import attempts, host, remote
from pilot.runs import lifecycle as runs
from pilot.runs.teardown import destroy_all, teardown_policy
from pilot.settings import Settings
from pilot.spend.costs import cost_of_seconds
from pilot.spend.effects import Effect, EffectRefused, authorize
from pilot.spend.ledger import reserve, settle
from pilot.store.models import EvalStage, SpendEntry, as_utc, utcnow
from pilot.store.status import EntityType, StageStatus
from pilot.store.writers import is_paused, record_event, switch_stage_status
from subagents.training import requirements_for
from tools.artifacts.base import sha256_file
from tools.errors import ArtifactError, PilotError
from tools.gpu.base import InstanceState, Offer, instance_label

logger = logging.getLogger(__name__)

Side = Literal["candidate", "champion"]
SIDES: tuple[Side, ...] = ("candidate", "champion")
EVENT = EntityType.EVALUATION  # entity type of the stage's events (entity id: the stage id)
STAGE_PREFIX = "eval-"  # stage ids (and so ledger run ids and instance labels) start with this
_GRACE_S = 300.0  # after its deadline, a stage still holding its reservation is one whose daemon died


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
@dataclass
class _Stage:
    id: str
    label: str
    offer: Offer
    dph: float
    reserved_usd: float
    started: float
    instance_id: str | None = None
    launched_at: float | None = None
    ended_at: float | None = None

    def elapsed_cost(self) -> float:
        """Elapsed time x $/h, for ``label_cost``'s fallback."""
        if self.launched_at is None or self.instance_id is None:
            return 0.0
        return cost_of_seconds(self.dph, (self.ended_at or time.time()) - self.launched_at)


def _row(ctx: PilotContext, stage_id: str) -> EvalStage:
    with ctx.store.session() as session:
        row = session.get(EvalStage, stage_id, populate_existing=True)
    assert row is not None, stage_id
    return row


def _switch(
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


def _reserve(ctx: PilotContext, stage_id: str, label: str, version_id: str) -> _Stage:
    offer = _choose_offer(ctx)
    dph = attempts.offer_dph(offer, None, ctx.settings.gpu.remote.disk_gb)
    seconds = ctx.settings.evaluation.remote_max_minutes * 60 + ctx.settings.gpu.remote.loading_timeout_s
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
            session.add(
                EvalStage(
                    id=stage_id,
                    version_id=version_id,
                    status=StageStatus.PENDING,
                    label=label,
                    offer_id=offer.id,
                    gpu=offer.gpu_name,
                    dph=dph,
                    reserved_usd=amount,
                )
            )
    except BudgetError as exc:
        raise EvaluationError(f"no budget for the evaluation stage: {exc}") from exc
    return _Stage(stage_id, label, offer, dph, amount, time.time())


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
    ctx: PilotContext, stage: _Stage, inputs: dict[str, dict[str, Any]], adapters: Mapping[Side, Any]
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


def _watch(
    ctx: PilotContext, stage: _Stage, *, sleep: Callable[[float], None], poll_s: float
) -> tuple[dict[str, Any] | None, str | None]:
    """Poll until the host exits or a limit passes: (the uploaded result, None) or (None, why it failed)."""
    assert stage.instance_id is not None and stage.launched_at is not None
    remote_settings = ctx.settings.gpu.remote
    deadline = ctx.settings.evaluation.remote_max_minutes * 60 + remote_settings.loading_timeout_s
    scratch = ctx.settings.work_dir / "eval" / stage.id
    live = remote.Liveness()
    for _ in range(10_000_000):  # bounded: every branch sleeps or ends, and the deadline ends the stage
        now = time.time()
        row = _row(ctx, stage.id)
        if StageStatus(row.status).is_terminal:
            return None, f"the stage was {row.status} ({row.end_reason or 'no reason'})"
        if now - stage.launched_at > deadline:
            return None, f"still running after {deadline / 60:.1f} min"
        try:
            instance = ctx.gpu.poll(stage.instance_id)
        except PilotError as exc:
            logger.warning("Evaluation %s: polling instance %s failed: %s", stage.id, stage.instance_id, exc)
            sleep(poll_s)
            continue
        match instance.state:
            case InstanceState.LOADING:
                if now - stage.launched_at > remote_settings.loading_timeout_s:
                    return None, f"instance {instance.id} still loading after {now - stage.launched_at:.0f} s"
            case InstanceState.RUNNING:
                if row.status == StageStatus.LAUNCHED:
                    _switch(ctx, stage.id, StageStatus.RUNNING, f"the evaluation runs on {instance.id}")
                testpoints.reached("stage_running")
                live.running_since = live.running_since or now
                try:
                    beat = host.read_upload(ctx, f"evals/{stage.id}/heartbeat.json", scratch, "heartbeat")
                except host.HostFault as exc:
                    return None, f"host fault: {exc}"
                if beat is not None and beat.get("seq") != live.seq:
                    live.seq, live.seen_at = beat.get("seq"), now
                silent = now - max(live.seen_at or 0.0, live.running_since)
                if silent > ctx.settings.training.heartbeat_timeout_s:
                    return None, f"no heartbeat from instance {instance.id} for {silent:.0f} s"
            case InstanceState.EXITED:
                try:
                    result = host.read_upload(ctx, f"evals/{stage.id}/result.json", scratch, "result")
                except host.HostFault as exc:
                    return None, f"host fault: {exc}"
                if instance.exit_code != 0 or result is None or result.get("status") != "ok":
                    tail = (result or {}).get("log_tail") or []
                    last = f": {str(tail[-1])[:300]}" if tail else ""
                    why = (result or {}).get("error") or "no result uploaded"
                    return None, f"the evaluation host exited with code {instance.exit_code} ({why}){last}"
                return result, None
            case InstanceState.STOPPED | InstanceState.GONE:
                what = "vanished" if instance.state is InstanceState.GONE else f"stopped ({instance.detail})"
                return None, f"instance {instance.id} {what}"
        sleep(poll_s)
    raise AssertionError("unreachable: the deadline ends every stage")


def _end(ctx: PilotContext, stage: _Stage, why: str, *, ok: bool) -> tuple[bool, float]:
    """Destroy every instance with the stage's label and verify it gone; settle the reservation with the
    provider's charges. Returns (all verified gone, cost)."""
    ids = {stage.instance_id} if stage.instance_id else set()
    try:
        ids |= {i.id for i in ctx.gpu.list_owned(stage.label) if i.label == stage.label}
    except PilotError as exc:
        logger.warning("Evaluation %s: cannot list instances of %s: %s", stage.id, stage.label, exc)
    gone = all(t.gone for t in destroy_all(ctx.gpu, sorted(ids), teardown_policy(ctx.settings)))
    stage.ended_at = time.time()
    cost = attempts.label_cost(ctx, stage.label, since=stage.started, fallback_usd=stage.elapsed_cost())
    verdict = "destroyed and verified gone" if gone else "NOT verified gone (the reconciler will retry)"
    with ctx.store.session(write=True) as session:
        settle(session, stage.id, cost, note=f"evaluation stage: {why}"[:200])
        record_event(
            session,
            entity_type=EVENT,
            entity_id=stage.id,
            actor="system",
            reason=f"evaluation stage ended ({why[:300]}); instance(s) {', '.join(sorted(ids)) or 'none'} {verdict}; "
            f"${cost:.4f} settled",
            data={"instances": sorted(ids), "gone": gone, "cost_usd": cost},
        )
        row = session.get(EvalStage, stage.id, populate_existing=True)
        assert row is not None
        row.actual_cost_usd = cost
        if gone:
            row.instance_id = None
        if not StageStatus(row.status).is_terminal:
            status = StageStatus.COLLECTING if ok else StageStatus.FAILED
            switch_stage_status(session, stage.id, status, actor="system", reason=f"stage ended: {why}"[:1000])
    if not gone:
        logger.error(
            "Failed to terminate evaluation instance(s) %s. Terminate them manually to avoid accumulating charges.",
            ", ".join(sorted(ids)),
        )
    return gone, cost


def _download(ctx: PilotContext, stage: _Stage, result: Mapping[str, Any], golden_ids: list[str]) -> dict[str, Any]:
    scratch = ctx.settings.work_dir / "eval" / stage.id / "download"
    claimed = result.get("predictions")
    out: dict[str, Any] = {}
    for side in SIDES:
        meta = claimed.get(side) if isinstance(claimed, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            raise EvaluationError(f"the evaluation host uploaded no predictions for the {side}")
        dest = scratch / f"{side}.jsonl"
        try:
            key = f"evals/{stage.id}/output/{side}.jsonl"
            ctx.artifacts.get(key, dest, sha256=meta["sha256"], max_bytes=host.PREDICTIONS_LIMIT)
        except ArtifactError as exc:
            raise EvaluationError(f"the {side}'s predictions from the evaluation host were refused: {exc}") from exc
        predictions, eval_loss = read_predictions(dest, golden_ids, losses=False)
        out[side] = {"predictions": predictions, "eval_loss": eval_loss, "predictions_sha256": sha256_file(dest)}
    return out


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
    """Run the generation stage for both sides on a rented host (``lease``: the supervisor thread's, checked by
    the effect gate right before the host is rented).

    ``adapters``: each side's stored adapter files (``ModelVersion.adapter_files``; None for the base model), already
    verified by the caller. Returns ``{"candidate": {...}, "champion": {...}, "stage": {...}}``: each side's
    ``predictions`` (``id -> {"prediction", "loss"}``), its ``eval_loss`` computed here and the sha256 of its file;
    ``stage`` is the account for the record (id, instance, offer, $/h, cost, duration). Raises ``EvaluationError``
    when the stage cannot run or its outputs are refused; the instance is gone and the ledger settled either way.
    """
    poll_s = poll_s if poll_s is not None else ctx.settings.training.poll_interval_s
    stage_id = f"{STAGE_PREFIX}{version_id}-{uuid.uuid4().hex[:8]}"[:40]
    label = instance_label(ctx.settings.env, stage_id)
    stage = _reserve(ctx, stage_id, label, version_id)
    why = "not launched"
    result: dict[str, Any] | None = None
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
            offer_id=stage.offer.id,
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
        stage.launched_at = time.time()
        try:
            instance = ctx.gpu.launch(spec)
        except PilotError as exc:
            why = f"launch on offer {stage.offer.id} failed: {exc}"
            raise EvaluationError(f"the evaluation stage could not start: {why}") from exc
        stage.instance_id = instance.id
        why = "the daemon stopped watching (an error)"
        try:
            _switch(
                ctx,
                stage_id,
                StageStatus.LAUNCHED,
                f"evaluation instance {instance.id} accepted on offer {stage.offer.id}",
                expected=StageStatus.PENDING,
                instance_id=instance.id,
            )
        except (ConflictError, TransitionError) as exc:
            why = f"the stage ended while the provider answered ({exc})"
            raise EvaluationError(f"the evaluation stage was stopped: {why}") from exc
        result, failure = _watch(ctx, stage, sleep=sleep, poll_s=poll_s)
        why = failure or "the host exited 0"
        if failure is not None:
            raise EvaluationError(f"the evaluation stage failed: {failure}")
    finally:
        gone, cost = _end(ctx, stage, why, ok=result is not None)
    assert result is not None
    try:
        sides = _download(ctx, stage, result, golden_ids)
    except EvaluationError as exc:
        _switch(ctx, stage_id, StageStatus.FAILED, f"predictions refused: {exc}"[:1000])
        raise
    _switch(ctx, stage_id, StageStatus.SUCCEEDED, "predictions downloaded and verified")
    sides["stage"] = {
        "id": stage_id,
        "label": label,
        "provider": ctx.gpu.name,
        "instance_id": stage.instance_id,
        "offer_id": stage.offer.id,
        "gpu": stage.offer.gpu_name,
        "dph": stage.dph,
        "reserved_usd": stage.reserved_usd,
        "cost_usd": cost,
        "instance_verified_gone": gone,
        "duration_s": round((stage.ended_at or time.time()) - stage.started, 2),
    }
    return sides


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
    """Stages whose daemon died (reservation still active past the stage's deadline): every instance with the
    stage's label is destroyed and verified gone, then the reservation is settled with the provider's charges
    for the label (without a charges API: the whole reservation, since what was spent is unknown). Returns the
    stage ids settled; a stage whose instance is not verified gone stays open for the next pass."""
    now = now or utcnow()
    lifetime = timedelta(seconds=_stage_lifetime_s(ctx.settings))
    settled: list[str] = []
    for entry in _open_stages(ctx):
        if not StageStatus(entry.status).is_terminal and now - as_utc(entry.created_at) < lifetime:
            continue
        stage_id, label = entry.id, entry.label
        try:
            found = [i.id for i in ctx.gpu.list_owned(label) if i.label == label]
        except PilotError as exc:
            logger.warning("Reconciler: cannot list instances of evaluation stage %s: %s", stage_id, exc)
            continue
        if not all(t.gone for t in destroy_all(ctx.gpu, found, teardown_policy(ctx.settings))):
            continue
        if isinstance(ctx.gpu, attempts.ChargesProvider):
            cost = attempts.label_cost(ctx, label, since=as_utc(entry.created_at).timestamp(), fallback_usd=0.0)
        else:
            cost = float(entry.reserved_usd)
        why = f"evaluation stage {stage_id} abandoned (its daemon stopped); "
        why += f"instance(s) {', '.join(found)} destroyed and verified gone; " if found else "no instance left; "
        with ctx.store.session(write=True) as session:
            settle(session, stage_id, cost, note=f"reconciler: abandoned evaluation stage {stage_id}"[:200])
            record_event(
                session,
                entity_type=EVENT,
                entity_id=stage_id,
                actor="system",
                reason=f"reconciler: {why}${cost:.4f} settled",
                data={"instances": found, "cost_usd": cost},
            )
            row = session.get(EvalStage, stage_id, populate_existing=True)
            assert row is not None
            row.instance_id, row.actual_cost_usd = None, cost
            if not StageStatus(row.status).is_terminal:
                switch_stage_status(session, stage_id, StageStatus.FAILED, actor="system", reason=f"reconciler: {why}")
        settled.append(stage_id)
    return settled
