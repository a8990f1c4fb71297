"""Evaluation: the candidate and the champion (or the base model) answer the frozen golden split; the daemon
scores their outputs itself (normalised exact match) and applies the paired gate.

No number the training job reports about itself enters the verdict: the generation job only returns predictions
and per-item reference losses, for both sides alike. Adapters are fetched from the artifact store and verified
by sha256 before they are loaded.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from pilot.context import PilotContext
from pilot.registry import CHAMPION, get_version
from pilot.store.models import DatasetSnapshot, ModelVersion
from pilot.store.writers import alias_target
from subagents.evaluation import GateConfig, GateReport, PairedItem, compare, score_normalised
from tools.errors import PilotError
from tools.gpu.base import InstanceState, LaunchSpec

logger = logging.getLogger(__name__)


class EvaluationError(PilotError):
    """The evaluation could not be carried out (the generation job failed, the golden split is missing)."""


def fetch_adapter(ctx: PilotContext, version: ModelVersion, dest: Path) -> Path:
    """Copy a version's adapter files out of the artifact store, verifying each sha256."""
    for name, ref in sorted(version.adapter_files.items()):
        ctx.artifacts.get(str(ref["key"]), dest / name, sha256=str(ref["sha256"]))
    return dest


def _generate(ctx: PilotContext, *, adapter: Path | None, golden: Path, out: Path, label: str) -> dict[str, Any]:
    settings = ctx.settings
    config = {
        "base_model": settings.training.base_model,
        "adapter": str(adapter) if adapter else None,
        "input_file": str(golden),
        "output_file": str(out),
        "max_new_tokens": settings.evaluation.max_new_tokens,
        "batch_size": settings.evaluation.batch_size,
    }
    config_path = out.with_suffix(".config.json")
    config_path.write_text(json.dumps(config, indent=2))
    spec = LaunchSpec(
        label=label,
        offer_id=None,
        image="local",
        command=[sys.executable, "-m", "jobs.generate", "--config", str(config_path)],
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    instance = ctx.local.launch(spec)
    try:
        while (state := ctx.local.poll(instance.id)).state is InstanceState.RUNNING:
            time.sleep(0.2)
        if state.exit_code != 0:
            tail = ctx.local.logs(instance.id, tail=5)
            raise EvaluationError(f"generation for {label} exited with {state.exit_code}: {tail[-500:]}")
    finally:
        ctx.local.terminate(instance.id)
    summary_path = Path(f"{out}.summary.json")
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    predictions = {}
    with out.open() as fh:
        for line in fh:
            if line.strip():
                item = json.loads(line)
                predictions[str(item["id"])] = item
    summary["predictions"] = predictions
    return summary


def _golden_items(golden: Path) -> list[dict[str, Any]]:
    items = []
    with golden.open() as fh:
        for line in fh:
            if line.strip():
                example = json.loads(line)
                reference = next(m["content"] for m in reversed(example["messages"]) if m["role"] == "assistant")
                items.append({"id": str(example["id"]), "domain": example.get("domain", "default"), "ref": reference})
    return items


def gate_config(ctx: PilotContext) -> GateConfig:
    e = ctx.settings.evaluation
    return GateConfig(
        margin=e.margin,
        max_domain_regression=e.max_domain_regression,
        confidence=e.confidence,
        bootstrap_samples=e.bootstrap_samples,
        max_eval_loss_increase=e.max_eval_loss_increase,
        min_items=e.min_items,
    )


def evaluate_version(ctx: PilotContext, version_id: str) -> tuple[GateReport, dict[str, Any]]:
    """Run both sides on the golden split, score, gate. Returns the report and the stored evaluation record."""
    with ctx.store.session() as session:
        version = get_version(session, version_id)
        snapshot = session.get(DatasetSnapshot, version.snapshot_id) if version.snapshot_id else None
        champion_id = alias_target(session, CHAMPION)
        champion = get_version(session, champion_id) if champion_id and champion_id != version_id else None
    if snapshot is None or not (golden := Path(snapshot.path) / "golden.jsonl").is_file():
        raise EvaluationError(f"{version_id} has no golden split to be evaluated on")
    items = _golden_items(golden)
    workdir = ctx.settings.work_dir / "eval" / version_id
    workdir.mkdir(parents=True, exist_ok=True)
    label_base = f"learning-pilot/{ctx.settings.env}/eval-{version_id}"
    started = time.monotonic()
    cand = _generate(
        ctx,
        adapter=fetch_adapter(ctx, version, workdir / "candidate-adapter"),
        golden=golden,
        out=workdir / "candidate.jsonl",
        label=f"{label_base}-candidate",
    )
    champ = _generate(
        ctx,
        adapter=fetch_adapter(ctx, champion, workdir / "champion-adapter") if champion else None,
        golden=golden,
        out=workdir / "champion.jsonl",
        label=f"{label_base}-champion",
    )
    paired = []
    for item in items:
        c = cand["predictions"].get(item["id"], {}).get("prediction", "")
        h = champ["predictions"].get(item["id"], {}).get("prediction", "")
        paired.append(
            PairedItem(
                id=item["id"],
                domain=item["domain"],
                candidate=score_normalised(c, item["ref"]),
                champion=score_normalised(h, item["ref"]),
            )
        )
    report = compare(
        paired,
        candidate_eval_loss=cand.get("eval_loss"),
        champion_eval_loss=champ.get("eval_loss"),
        config=gate_config(ctx),
    )
    examples = [
        {
            "id": i["id"],
            "ref": i["ref"],
            "candidate": cand["predictions"].get(i["id"], {}).get("prediction"),
            "champion": champ["predictions"].get(i["id"], {}).get("prediction"),
        }
        for i in items[:5]
    ]
    record = {
        **report.to_dict(),
        "champion_version": champion.id if champion else None,
        "champion_label": champion.id if champion else f"base ({ctx.settings.training.base_model})",
        "golden_snapshot": snapshot.id,
        "golden_items": len(items),
        "scoring": "normalised exact match of generated answers, scored by the daemon",
        "examples": examples,
        "duration_s": round(time.monotonic() - started, 2),
    }
    logger.info("Evaluated %s: %s (%s)", version_id, report.verdict, report.reason)
    return report, record
