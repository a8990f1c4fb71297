"""Learning efficacy of the preference methods on CPU: records -> curation (rewards, failures kept) -> preference
data -> jobs.preference (KTO) or jobs.finetune_lora (SFT-only) on the tiny base -> greedy generation on a golden
set -> the gate's statistics (subagents.evaluation.compare: paired bootstrap CI and sign test).

The task where the failures carry the signal: "Return the identifier `x` in <style>.". The agent never gets
kebab-case right: every kebab-case attempt failed, answering with underscores (snake_case). The other styles
succeed. SFT-only training sees no kebab-case success, so it has no signal there; on the kebab-case golden items
it makes the characteristic mistake (underscores) more often than the base (0.68 vs 0.47 with the pinned seed).
KTO trains on the same successes (its SFT term) plus the failures as undesirable examples and makes it far less
often (0.25). The golden set is a trusted file of correct kebab-case answers (``evaluation.golden_path`` in the
daemon): the records' own golden split holds no kebab-case success to evaluate on.

Measured on this machine (30 steps each, beta 2, 80 golden items), by record seed: 7 (pinned) SFT 0.68 -> KTO
0.25, CI low +0.30; 2: 0.88 -> 0.46, CI low +0.28; 3: 0.80 -> 0.34, CI low +0.35 (all promote); 1: 0.44 -> 0.36,
CI [-0.05, +0.20], inconclusive. A tiny model at 30 steps is seed-sensitive: the test shows the mechanism on
a pinned dataset, not a guarantee for every dataset.

The gamed / noisy reward: records whose failures are labelled successful (mislabelled: no failure is left, so
the run is supervised, on the wrong answers), or whose success flags and ratings are random (KTO, whose own
training reward margin reads healthy): on the golden set the gate does not promote either over the better
champion (the KTO candidate above).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from jobs import finetune_lora, generate, preference
from jobs.common import write_jsonl
from subagents.data.curate import curate
from subagents.data.preference import preference_data
from subagents.data.rewards import RewardWeights
from subagents.data.samples import STYLES, VOCABULARY, convert
from subagents.data.schema import ExecutionRecord
from subagents.evaluation import GateConfig, GateReport, PairedItem, compare
from tests.helpers.tiny_model import tiny_base_model
from tests.jobs.test_jobs_learning import RECIPE as LEARNING_RECIPE
from tests.subagents.data.data_factories import record

pytestmark = [pytest.mark.train, pytest.mark.slow]

KEBAB = "kebab-case"
N_TASKS = 400
RECORD_SEED = 7
STEPS = 30
# The supervised learning test's recipe (LoRA r16 on all projections plus embed_tokens/lm_head), shortened.
RECIPE: dict[str, Any] = {
    **{k: v for k, v in LEARNING_RECIPE.items() if k != "packing"},
    "seq_len": 64,
    "batch_size": 16,
    "max_steps": STEPS,
    "heartbeat_every_s": 5.0,
}
KTO = {"method": "kto", "beta": 2.0}


def task(rng: random.Random, kebab_share: float) -> tuple[str, list[str], str]:
    names = list(STYLES)
    style = KEBAB if rng.random() < kebab_share else rng.choice([s for s in names if s != KEBAB])
    source_style = rng.choice([s for s in names if s != style])
    words = rng.sample(VOCABULARY, rng.choice((2, 3)))
    return style, words, convert(words, source_style)


def prompt(source: str, style: str) -> str:
    return f"Return the identifier `{source}` in {style}."


def agent_records(n: int, seed: int, *, noise: str | None = None) -> list[ExecutionRecord]:
    """Half the tasks ask for kebab-case and fail with the snake_case answer; the rest succeed. ``noise``:
    "mislabelled" marks the failures successful (all tests passing); "random" draws every record's success
    flag and rating at random."""
    rng = random.Random(seed)
    out = []
    for t in range(n):
        style, words, source = task(rng, 0.5)
        failed = style == KEBAB
        output = convert(words, "snake_case") if failed else convert(words, style)
        success, rating = not failed, None
        if noise == "mislabelled":
            success = True
        elif noise == "random":
            success, rating = rng.random() < 0.5, rng.randint(1, 5)
        out.append(
            record(
                record_id=f"t{t}",
                session_id=f"s{t}",
                task=f"Fix naming {t}",
                code_context="",
                error_context="",
                prompt=prompt(source, style),
                domain=STYLES[style],
                output=output,
                success=success,
                feedback={"rating": rating} if rating is not None else None,
                metrics={"tests_passed": 3 if success else 0, "tests_total": 3, "duration_s": 2.0},
            )
        )
    return out


def trusted_golden(n: int, seed: int) -> list[dict[str, Any]]:
    """Correct kebab-case answers for tasks the records never held."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        style, words, source = task(rng, 1.0)
        messages = [
            {"role": "user", "content": prompt(source, style)},
            {"role": "assistant", "content": "-".join(words)},
        ]
        rows.append({"id": f"golden-{i}", "domain": STYLES[style], "weight": 1.0, "messages": messages})
    return rows


def training_files(records: list[ExecutionRecord], d: Path) -> dict[str, Any]:
    """Curate with rewards (failures kept, screened, split by task cluster) and write the SFT and KTO files."""
    result = curate(records, rewards=RewardWeights())
    data = preference_data(result)
    d.mkdir(parents=True, exist_ok=True)
    write_jsonl(d / "train.jsonl", [json.loads(e.to_json()) for e in result.train])
    write_jsonl(d / "kto.jsonl", [json.loads(k.to_json()) for k in data.kto])
    return {"sft": d / "train.jsonl", "kto": d / "kto.jsonl", "figures": data.figures}


def train(base: Path, train_file: Path, out: Path, method: dict[str, Any] | None) -> dict[str, Any]:
    cfg = {"base_model": str(base), "train_file": str(train_file), "output_dir": str(out), **RECIPE}
    if method is None:
        metrics, code = finetune_lora.train(finetune_lora.parse_config(cfg))
    else:
        metrics, code = preference.train(preference.parse_config({**cfg, **method}))
    assert code == 0
    return metrics


def mistakes(base: Path, adapter: Path | None, golden: Path, out: Path) -> dict[str, bool]:
    """Per golden item: did the answer use underscores (the failed records' snake_case) where kebab-case was asked."""
    cfg = {"base_model": str(base), "adapter": str(adapter) if adapter else None, "input_file": str(golden),
           "output_file": str(out), "max_new_tokens": 24, "batch_size": 80}  # fmt: skip
    generate.run(generate.parse_config(cfg))
    with out.open() as fh:
        return {p["id"]: "_" in p["prediction"] for p in map(json.loads, fh)}


def gate(candidate: dict[str, bool], champion: dict[str, bool]) -> GateReport:
    """The gate's statistics on "no characteristic mistake" (1.0) per paired golden item."""
    items = [PairedItem(i, "cli-flags", float(not candidate[i]), float(not champion[i])) for i in sorted(champion)]
    return compare(items, candidate_eval_loss=None, champion_eval_loss=None, config=GateConfig())


def rate(m: dict[str, bool]) -> float:
    return sum(m.values()) / len(m)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pref-efficacy")
    base = tiny_base_model()
    golden = d / "golden.jsonl"
    write_jsonl(golden, trusted_golden(80, seed=99))
    files = training_files(agent_records(N_TASKS, RECORD_SEED), d / "data")
    train(base, files["sft"], d / "sft", None)
    kto_metrics = train(base, files["kto"], d / "kto", KTO)
    return {
        "dir": d,
        "base": base,
        "golden": golden,
        "figures": files["figures"],
        "kto_metrics": kto_metrics,
        "base_mistakes": mistakes(base, None, golden, d / "base.pred.jsonl"),
        "sft_mistakes": mistakes(base, d / "sft" / "adapter", golden, d / "sft.pred.jsonl"),
        "kto_mistakes": mistakes(base, d / "kto" / "adapter", golden, d / "kto.pred.jsonl"),
    }


def test_kto_makes_the_failures_mistake_significantly_less_often_than_sft(trained: dict[str, Any]) -> None:
    figures = trained["figures"]
    assert figures["undesirable"] >= 120 and figures["desirable"] >= 120  # the failures reached the KTO data
    base, sft, kto = (rate(trained[k]) for k in ("base_mistakes", "sft_mistakes", "kto_mistakes"))
    report = gate(trained["kto_mistakes"], trained["sft_mistakes"])
    print(f"mistake rate: base {base:.2f}, SFT-only {sft:.2f}, KTO {kto:.2f}; gate: {report.reason}")
    assert base >= 0.2 and sft >= 0.5  # base and SFT-only keep making it
    assert report.verdict == "promote" and report.ci_low > GateConfig().margin
    assert report.sign_test_p < 0.01


@pytest.mark.parametrize("noise", ["mislabelled", "random"])
def test_a_gamed_or_noisy_reward_is_not_promoted_over_a_better_champion(noise: str, trained: dict[str, Any]) -> None:
    d: Path = trained["dir"] / noise
    files = training_files(agent_records(N_TASKS, RECORD_SEED, noise=noise), d / "data")
    # Mislabelled failures leave no undesirable example: the data then holds successes only, trained supervised.
    method = KTO if files["figures"]["undesirable"] else None
    metrics = train(trained["base"], files["kto" if method else "sft"], d / "run", method)
    candidate = mistakes(trained["base"], d / "run" / "adapter", trained["golden"], d / "pred.jsonl")
    report = gate(candidate, trained["kto_mistakes"])
    print(f"{noise}: candidate mistake rate {rate(candidate):.2f} vs champion {rate(trained['kto_mistakes']):.2f}; "
          f"train metrics {metrics}; gate: {report.reason}")  # fmt: skip
    if method:  # its own training reward says it learned what the noisy labels asked for
        assert metrics["reward_margin"] > 0
    assert report.verdict != "promote"
    assert rate(candidate) > rate(trained["kto_mistakes"])
