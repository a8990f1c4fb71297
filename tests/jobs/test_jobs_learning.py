"""The one learning test: LoRA fine-tuning of the cached tiny base really learns the demo task.

Recipe: LoRA r=16, alpha=32 on all linear projections plus
modules_to_save=["embed_tokens", "lm_head"], packing, batch 32, lr 3e-3, 5% warmup, linear decay,
150 steps on 600 examples. The base is pre-trained to copy identifiers only, so it scores ~0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs import finetune_lora, generate
from jobs.common import write_jsonl
from tests.helpers.tiny_model import demo_task_examples, tiny_base_model

pytestmark = [pytest.mark.train, pytest.mark.slow]

RECIPE: dict[str, Any] = {
    "lora": {
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": "all-linear",
        "modules_to_save": ["embed_tokens", "lm_head"],
    },
    "packing": True,
    "seq_len": 128,
    "batch_size": 32,
    "learning_rate": 3e-3,
    "warmup_ratio": 0.05,
    "lr_schedule": "linear",
    "max_steps": 150,  # 0.71 exact match here (120 steps: 0.67; the test asks 0.5)
}


def exact_match(base: Path, adapter: Path | None, held: Path, out: Path) -> float:
    cfg = {"base_model": str(base), "adapter": str(adapter) if adapter else None, "input_file": str(held),
           "output_file": str(out), "max_new_tokens": 24, "batch_size": 50}  # fmt: skip
    generate.run(generate.parse_config(cfg))
    with open(held) as fh:
        refs = {r["id"]: r["messages"][-1]["content"] for r in map(json.loads, fh)}
    with open(out) as fh:
        preds = [json.loads(line) for line in fh]
    return sum(p["prediction"] == refs[p["id"]] for p in preds) / len(preds)


def test_finetuning_lifts_exact_match_from_zero(tmp_path: Path) -> None:
    base = tiny_base_model()
    train = demo_task_examples(600, seed=11)
    seen = {e["messages"][0]["content"] for e in train}
    held = [e for e in demo_task_examples(110, seed=12) if e["messages"][0]["content"] not in seen][:100]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "held.jsonl", held)

    before = exact_match(base, None, tmp_path / "held.jsonl", tmp_path / "base.jsonl")
    cfg = {"base_model": str(base), "train_file": str(tmp_path / "train.jsonl"), "output_dir": str(tmp_path / "ft")}
    metrics, code = finetune_lora.train(finetune_lora.parse_config({**cfg, **RECIPE}))
    assert code == 0 and metrics["steps"] == 150
    after = exact_match(base, tmp_path / "ft" / "adapter", tmp_path / "held.jsonl", tmp_path / "ft.jsonl")
    print(f"exact match: base {before:.2f} -> fine-tuned {after:.2f}; {metrics}")
    assert before <= 0.05
    assert after >= 0.5
