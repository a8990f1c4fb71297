"""Learning efficacy of GRPO on CPU: an SFT champion that makes a characteristic bug -> jobs.grpo from it (rewards
from the lines' tests in jobs.host_sandbox) -> greedy generation on a golden set -> the golden tests run in the
control plane's sandbox (tools.sandbox.run_python) -> the gate's statistics (subagents.evaluation.compare).

The code task: "For the <words> job, write `f` that returns its argument plus one.", tests ``f(1) == 2`` and
``f(-4) == -3``. The champion is the tiny base fine-tuned (supervised, 40 steps) on records whose answers are
45% right (``f = lambda x: x + 1``) and 55% the characteristic bug (``x - 1``), merged into its base: its samples
pass the tests only sometimes, and its greedy answers to the golden prompts mostly or always carry the bug. GRPO
from it (a fresh adapter on the merged champion, k = 4 samples per prompt, 6 prompts per step, 10 steps) is
rewarded only by the tests.

The champion's greedy pass rate depends on the tiny base's float details, which differ between CPUs (the base
is built on the machine: the same build is bit for bit the same on one machine, not across machine kinds): on an
AMD EPYC machine (2026-12-07) the champion passed 0.00 and GRPO 0.97 (diff +0.975, 95% CI [+0.94, +1.00]); on
the machine of the figures below, 0.35. So the test asks that the champion pass at most 60% of the golden items
greedily and that its samples in the first GRPO step pass sometimes, not a band for the greedy rate.

It runs twice: with one optimiser update per set of samples (mu = 1, the default) and with two (mu = 2, where the
second update is clipped against the sampling policy). On the AMD EPYC machine mu = 2 reached 1.00 (CI [+1.00,
+1.00]).

Measured on this machine with the same recipe (lr 1e-3): record seed 0 (pinned) champion 0.35 -> GRPO 0.76 on
80 golden items, diff +0.41, 95% CI [+0.30, +0.51], sign test p=2e-10: promote; the mean reward of a step's
samples went 0.08 -> 0.75 over the 10 steps. Seed 2: 0.10 -> 0.66, promote. At lr 2e-3 seed 0 reached 0.84 but
seed 2 collapsed (0.10 -> 0.00, rejected), hence 1e-3. The test took 150-180 s while other work shared the 2 cores
(load average ~5): SFT ~60 s, GRPO ~60-70 s, two golden evaluations with 160 sandboxed runs; the 60 s target
was not shown on an idle machine. A tiny model at 10 steps is seed-sensitive: the test shows the mechanism on
pinned data, not a guarantee for every dataset (docs/reinforcement.md has the figures).
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs import finetune_lora, generate, grpo
from jobs.build_base_model import WORDS
from jobs.common import load_adapter, load_base_model, load_tokenizer, write_jsonl
from subagents.evaluation import GateConfig, GateReport, PairedItem, compare
from tests.helpers.tiny_model import tiny_base_model
from tests.jobs.test_jobs_learning import RECIPE as LEARNING_RECIPE
from tools.sandbox import SandboxLimits, run_python

pytestmark = [pytest.mark.train, pytest.mark.slow]

RECORD_SEED = 0
RIGHT_SHARE = 0.45
SFT = {**LEARNING_RECIPE, "max_steps": 40, "seq_len": 64, "heartbeat_every_s": 5.0}
GRPO: dict[str, Any] = {
    "method": "grpo",
    "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
    "seq_len": 96,
    "batch_size": 6,
    "learning_rate": 1e-3,
    "warmup_ratio": 0.0,
    "lr_schedule": "constant",
    "max_steps": 10,
    "max_new_tokens": 32,
    "num_generations": 4,
    "heartbeat_every_s": 5.0,
    "seed": RECORD_SEED,
}
GOLDEN_LIMITS = SandboxLimits(cpu_seconds=2, wall_seconds=5)


def task(rng: random.Random) -> tuple[str, str]:
    """(prompt, tests) of one "plus one" task; the words only vary the prompt."""
    prompt = f"For the {' '.join(rng.sample(WORDS, 2))} job, write `f` that returns its argument plus one."
    return prompt, "from solution import f\nassert f(1) == 2\nassert f(-4) == -3\n"


def data(d: Path) -> list[dict[str, Any]]:
    """Writes the SFT records (right or buggy answers) and the GRPO lines; returns the golden items."""
    rng = random.Random(RECORD_SEED)
    sft, lines = [], []
    for i in range(400):
        prompt, tests = task(rng)
        op = "+" if rng.random() < RIGHT_SHARE else "-"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"f = lambda x: x {op} 1"}]
        sft.append({"id": f"r{i}", "weight": 1.0, "messages": messages})
        lines.append({"prompt": messages[:1], "tests": tests, "task_id": f"cluster-{i}"})
    write_jsonl(d / "sft.jsonl", sft)
    write_jsonl(d / "grpo.jsonl", lines)
    grng = random.Random(1000 + RECORD_SEED)
    golden = [dict(zip(("prompt", "tests"), task(grng), strict=True), id=f"golden-{i}") for i in range(80)]
    write_jsonl(d / "golden.jsonl", [{"id": g["id"], "messages": [{"role": "user", "content": g["prompt"]}]}
                                     for g in golden])  # fmt: skip
    return golden


def champion(base: Path, d: Path) -> Path:
    """SFT on the records, then the adapter merged into the base: the model GRPO starts from."""
    cfg = {"base_model": str(base), "train_file": str(d / "sft.jsonl"), "output_dir": str(d / "sft"), **SFT}
    assert finetune_lora.train(finetune_lora.parse_config(cfg))[1] == 0
    model = load_base_model(str(base), dtype=torch.float32, device=torch.device("cpu"))
    merged = load_adapter(model, d / "sft" / "adapter").merge_and_unload()
    merged.save_pretrained(str(d / "champion"), safe_serialization=True)
    load_tokenizer(str(base)).save_pretrained(str(d / "champion"))
    return d / "champion"


def golden_passes(model: Path, adapter: Path | None, golden: list[dict[str, Any]], out: Path) -> dict[str, float]:
    """Greedy answers to the golden prompts, their tests run in the control plane's sandbox; 1.0 = passed."""
    cfg = {"base_model": str(model), "adapter": str(adapter) if adapter else None, "input_file": str(out.parent /
           "golden.jsonl"), "output_file": str(out), "max_new_tokens": 32, "batch_size": 80}  # fmt: skip
    generate.run(generate.parse_config(cfg))
    with out.open() as fh:
        preds = {p["id"]: p["prediction"] for p in map(json.loads, fh)}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda g: run_python(preds[g["id"]], g["tests"], GOLDEN_LIMITS), golden))
    assert all(r.evaluated for r in results), results[0].detail  # the golden tests really ran
    return {g["id"]: float(r.passed) for g, r in zip(golden, results, strict=True)}


def gate(candidate: dict[str, float], champ: dict[str, float]) -> GateReport:
    items = [PairedItem(i, "code", candidate[i], champ[i]) for i in sorted(champ)]
    return compare(items, candidate_eval_loss=None, champion_eval_loss=None, config=GateConfig())


@pytest.mark.parametrize("num_iterations", [1, 2])  # mu: optimiser updates per set of samples (clipped from the 2nd)
def test_grpo_raises_the_golden_pass_rate_over_the_champion(tmp_path: Path, num_iterations: int) -> None:
    golden = data(tmp_path)
    champ_model = champion(tiny_base_model(), tmp_path)
    champ = golden_passes(champ_model, None, golden, tmp_path / "champion.pred.jsonl")
    cfg = {"base_model": str(champ_model), "train_file": str(tmp_path / "grpo.jsonl"),
           "output_dir": str(tmp_path / "grpo"), **GRPO, "num_iterations": num_iterations}  # fmt: skip
    metrics, code = grpo.train(grpo.parse_config(cfg))
    assert code == 0 and metrics["steps"] == GRPO["max_steps"] and metrics["num_iterations"] == num_iterations
    cand = golden_passes(champ_model, tmp_path / "grpo" / "adapter", golden, tmp_path / "grpo.pred.jsonl")
    report = gate(cand, champ)
    rate_champ, rate_cand = sum(champ.values()) / len(champ), sum(cand.values()) / len(cand)
    print(f"golden pass rate: champion {rate_champ:.2f}, GRPO (mu={num_iterations}) {rate_cand:.2f}; clipped "
          f"{metrics['clip_fraction']:.4f}; reward curve {metrics['reward_curve']}; gate: {report.reason}")  # fmt: skip
    assert rate_champ <= 0.6  # the champion mostly makes the characteristic bug (greedy: 0.00 or 0.35, see above)
    assert 0 < metrics["reward_mean_first"] < 0.6  # its samples pass only sometimes: there is a signal to learn
    assert metrics["reward_mean_last"] > metrics["reward_mean_first"]
    assert metrics["zero_variance_groups"] < metrics["groups"]
    assert report.verdict == "promote" and report.ci_low > GateConfig().margin
    assert report.sign_test_p < 0.01
