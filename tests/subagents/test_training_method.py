"""The training subagent's choice of method (supervised, DPO, KTO) and the preference job's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from subagents.training import (
    METHOD_FILES,
    METHOD_MODULES,
    PreferenceParams,
    TrainingParams,
    choose_method,
    count_tokens,
    expected_hours,
    job_config,
    kto_weights,
    preference_params,
)

RULES = {"enabled": True, "min_pairs": 50, "min_undesirable": 50}


@pytest.mark.parametrize(
    ("preference", "enabled", "method", "words"),
    [
        ({"pairs": 80, "desirable": 300, "undesirable": 90, "pair_sources": {"outcome": 80}}, True, "dpo", "80 pairs"),
        ({"pairs": 10, "desirable": 300, "undesirable": 90}, True, "kto", "90 failed attempts"),
        ({"pairs": 10, "desirable": 300, "undesirable": 20}, True, "sft", "too few"),
        ({"pairs": 10, "desirable": 0, "undesirable": 90}, True, "sft", "too few"),
        ({}, True, "sft", "no preference data"),
        ({"pairs": 80, "desirable": 300, "undesirable": 90}, False, "sft", "are off"),
    ],
)
def test_method_from_what_the_data_holds(preference: dict, enabled: bool, method: str, words: str) -> None:
    choice = choose_method(preference, train_examples=300, **{**RULES, "enabled": enabled})
    assert choice.method == method and words in choice.reason
    assert choice.figures["train_examples"] == 300 and choice.figures["min_pairs"] == 50
    assert METHOD_FILES[method] and METHOD_MODULES[method].startswith("jobs.")


def test_kto_weights_keep_the_recommended_balance() -> None:
    assert kto_weights(100, 100) == (1.0, 1.0)
    good, bad = kto_weights(50, 200)  # rare successes are up-weighted
    assert 1.0 <= good * 50 / (bad * 200) <= 4 / 3
    good, bad = kto_weights(400, 100)  # rare failures are up-weighted
    assert 1.0 <= good * 400 / (bad * 100) <= 4 / 3 + 1e-6
    assert kto_weights(0, 10) == (1.0, 1.0)


def params() -> TrainingParams:
    return TrainingParams(
        base_model="b", base_model_params_b=0.001, lora_r=4, lora_alpha=8, lora_dropout=0.0,
        target_modules=["q_proj"], modules_to_save=[], seq_len=64, batch_size=4, grad_accum=1,
        learning_rate=1e-3, max_steps=10, epochs=1.0, warmup_ratio=0.0, seed=0, tokens_per_second_estimate=1000.0,
    )  # fmt: skip


def test_preference_job_config_and_pricing(tmp_path: Path) -> None:
    pref = PreferenceParams("dpo", beta=0.2)
    cfg = job_config(
        params(), train_file=tmp_path / "dpo.jsonl", eval_file=tmp_path / "e", output_dir=tmp_path, preference=pref
    )
    assert cfg["method"] == "dpo" and cfg["beta"] == 0.2 and cfg["eval_file"] is None
    assert "method" not in job_config(params(), train_file=tmp_path / "t", eval_file=None, output_dir=tmp_path)
    assert preference_params({"method": "dpo", "preference": {"method": "dpo", "beta": 0.2}}) == pref
    assert preference_params({"method": "sft"}) is None and preference_params({}) is None
    one = expected_hours(params(), 1000, remote=False)
    assert expected_hours(params(), 1000, remote=False, cost_factor=3.0) == pytest.approx(3 * one)


def test_count_tokens_reads_preference_lines(tmp_path: Path) -> None:
    (tmp_path / "dpo.jsonl").write_text(
        '{"prompt": [{"role": "user", "content": "aaaa"}], "chosen": "bbbb", "rejected": "cccc"}\n'
    )
    assert count_tokens(tmp_path / "dpo.jsonl") == (1, 3 + 8)
