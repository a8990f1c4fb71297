"""Evaluation: the candidate and the champion (or the base model) answer the frozen golden split; the daemon
scores their outputs itself (normalised exact match) and applies the paired gate.

No number the training job reports about itself enters the verdict: the generation job only returns predictions
and per-item reference losses, for both sides alike. Adapters are fetched from the artifact store and verified
(every file's sha256, safetensors/json only: pickled weights are refused) before anything loads them; a refused
adapter is an ``IntegrityError`` and the graph rejects the candidate.

The golden set is ``evaluation.golden_path`` when configured (a trusted, curated file), else the candidate
snapshot's golden split. Only a trusted file protects against poisoned records: a split drawn from the same
records carries the same wrong labels. The stored record names the golden source, its sha256, and how many of
its prompts also appear in the candidate's training split (contamination inflates the candidate's score).
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
from subagents.data.split import split_key
from subagents.evaluation import GateConfig, GateReport, PairedItem, compare, score_normalised
from tools.artifacts.base import sha256_file
from tools.errors import IntegrityError, PilotError
from tools.gpu.base import InstanceState, LaunchSpec
from tools.serving.base import verify_adapter_dir

logger = logging.getLogger(__name__)


class EvaluationError(PilotError):
    """The evaluation could not be carried out (the generation job failed, the golden split is missing)."""


def fetch_adapter(ctx: PilotContext, version: ModelVersion, dest: Path) -> Path:
    """Copy a version's adapter files out of the artifact store and verify the directory exactly as a deploy
    target would (sha256 of every file, safetensors weights, nothing pickled). Raises ``IntegrityError``."""
    if not version.adapter_files:
        raise IntegrityError(f"model version {version.id} has no stored adapter files")
    expected: dict[str, str] = {}
    for name, ref in sorted(version.adapter_files.items()):
        ctx.artifacts.get(str(ref["key"]), dest / name, sha256=str(ref["sha256"]))
        expected[name] = str(ref["sha256"])
    verify_adapter_dir(dest, expected)
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
    """The golden items; a malformed file (bad JSON, no assistant answer, a repeated id) is an EvaluationError
    naming the line: a gate must not run on a set it cannot read exactly."""
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    with golden.open() as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
                reference = next(m["content"] for m in reversed(example["messages"]) if m["role"] == "assistant")
                item_id = str(example["id"])
            except (ValueError, KeyError, TypeError, StopIteration) as exc:
                raise EvaluationError(f"{golden}:{number}: not a golden example ({exc!r})") from exc
            if item_id in seen:
                raise EvaluationError(f"{golden}:{number}: id {item_id!r} appears twice")
            seen.add(item_id)
            items.append({"id": item_id, "domain": example.get("domain", "default"), "ref": str(reference)})
    return items


def _prompts(path: Path) -> set[str]:
    keys = set()
    if path.is_file():
        with path.open() as fh:
            for line in fh:
                if line.strip():
                    example = json.loads(line)
                    prompt = next((m["content"] for m in example["messages"] if m["role"] == "user"), "")
                    keys.add(split_key(str(prompt)))
    return keys


def _train_overlap(train: Path, golden: Path) -> int:
    """Golden prompts that the candidate also trained on (by the split key: case and spacing folded)."""
    return len(_prompts(train) & _prompts(golden))


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
    trusted = ctx.settings.evaluation.golden_path
    golden = trusted if trusted is not None else Path(snapshot.path) / "golden.jsonl" if snapshot else None
    if golden is None or not golden.is_file():
        raise EvaluationError(f"{version_id} has no golden set to be evaluated on ({golden or 'no snapshot'})")
    items = _golden_items(golden)
    overlap = _train_overlap(Path(snapshot.path) / "train.jsonl", golden) if snapshot is not None else 0
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
        "golden_snapshot": snapshot.id if snapshot else None,
        "golden_source": str(golden) if trusted is not None else "snapshot golden split",
        "golden_sha256": sha256_file(golden),
        "golden_items": len(items),
        "golden_prompts_in_train": overlap,
        "confidence": ctx.settings.evaluation.confidence,
        "scoring": "normalised exact match of generated answers, scored by the daemon",
        "examples": examples,
        "duration_s": round(time.monotonic() - started, 2),
    }
    logger.info("Evaluated %s: %s (%s)", version_id, report.verdict, report.reason)
    return report, record
