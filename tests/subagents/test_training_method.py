"""The training subagent's choice of method (supervised, DPO, KTO, GRPO), the jobs' configs and method prices."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from subagents.methods import describe_method
from subagents.training import (
    INIT_ADAPTER_FILES,
    METHOD_FILES,
    METHOD_MODULES,
    GrpoParams,
    PreferenceParams,
    TrainingParams,
    choose_method,
    count_tokens,
    expected_hours,
    job_config,
    kto_weights,
    method_params,
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


GRPO = {"prompts_with_tests": 64, "clusters": 60, "attempts": 100, "failures": 41, "failure_share": 0.41}


@pytest.mark.parametrize(
    ("grpo", "extra", "method", "words"),
    [
        (GRPO, {}, "grpo", "GRPO: 64 prompts with tests (>= 50), 41% of their 100 attempts failed"),
        ({**GRPO, "failure_share": 0.1}, {}, "dpo", "GRPO: 10% of the attempts at the 64 prompts with tests failed"),
        ({**GRPO, "prompts_with_tests": 12}, {}, "dpo", "only 12 prompts with tests (< 50) for GRPO"),
        (GRPO, {"allow_rl": False}, "dpo", "GRPO is off"),
        (GRPO, {"enabled": False}, "sft", "are off"),
        (GRPO, {"min_rl_failure_share": 0.5}, "dpo", "(< 50%)"),
    ],
)
def test_grpo_first_when_tests_and_failures_are_there(grpo: dict, extra: dict, method: str, words: str) -> None:
    preference = {"pairs": 80, "desirable": 300, "undesirable": 90, "grpo": grpo}
    choice = choose_method(preference, train_examples=300, **{**RULES, **extra})
    assert choice.method == method and words in choice.reason, choice.reason
    assert choice.figures["prompts_with_tests"] == grpo["prompts_with_tests"]
    assert choice.figures["rl_failure_share"] == grpo["failure_share"]


def test_grpo_job_config_has_the_keys_jobs_grpo_reads(tmp_path: Path) -> None:
    cfg = job_config(
        params(), train_file=tmp_path / "grpo.jsonl", eval_file=tmp_path / "e", output_dir=tmp_path,
        preference=GrpoParams(),
    )  # fmt: skip
    shared = job_config(params(), train_file=tmp_path / "grpo.jsonl", eval_file=None, output_dir=tmp_path)
    grpo_keys = {"method", "num_generations", "max_new_tokens", "temperature", "top_p", "beta", "epsilon",
                 "num_iterations", "test_timeout_s", "sandbox"}  # fmt: skip
    assert set(cfg) == set(shared) | grpo_keys and "packing" not in cfg and cfg["eval_file"] is None
    assert (cfg["method"], cfg["num_generations"], cfg["beta"], cfg["epsilon"]) == ("grpo", 4, 0.0, 0.2)
    assert (cfg["temperature"], cfg["test_timeout_s"], cfg["sandbox"], cfg["num_iterations"]) == (1.0, 5.0, "auto", 1)
    older = asdict(GrpoParams())
    del older["num_iterations"]  # a plan stored before the key existed: one update per set of samples
    assert method_params({"method": "grpo", "grpo": older}) == GrpoParams(num_iterations=1)
    figures = {"method": "grpo", "grpo": asdict(GrpoParams(num_generations=8))}
    assert method_params(figures) == GrpoParams(num_generations=8) and preference_params(figures) is None
    assert method_params({"method": "kto", "preference": {"method": "kto"}}) == PreferenceParams("kto")
    with pytest.raises(ValueError, match="no grpo parameters"):
        method_params({"method": "grpo"})
    assert METHOD_FILES["grpo"] == "grpo.jsonl" and METHOD_MODULES["grpo"] == "jobs.grpo"


def test_describe_method_for_people() -> None:
    choice = choose_method({"pairs": 0, "desirable": 9, "undesirable": 0, "grpo": GRPO}, train_examples=9, **RULES)
    plan = {
        "method": choice.method,
        "method_reason": choice.reason,
        "method_figures": choice.figures,
        "cost_factor": 6.0,
    }
    described = describe_method(plan)
    assert described["data"] == "64 prompts with tests, 41% of their 100 attempts failed"
    assert described["method"] == "grpo" and described["reason"] == choice.reason and described["cost_factor"] == 6.0
    old = describe_method({"train_examples": 120})  # a plan from before methods existed reads as supervised
    assert (old["method"], old["data"], old["reason"], old["cost_factor"]) == (
        "sft",
        "120 successful examples",
        "",
        1.0,
    )


def test_grpo_init_from_the_champion_only_when_its_lora_fits(tmp_path: Path) -> None:
    from subagents.training import ChampionAdapter, choose_init, init_adapter_files

    p = replace(params(), target_modules=["q_proj", "v_proj"])
    ours = asdict(p)
    files = {n: {"key": f"runs/r/adapter/{n}", "sha256": "a" * 64, "uri": "u", "size": 1} for n in INIT_ADAPTER_FILES}

    def champ(**kw: Any) -> ChampionAdapter:
        return ChampionAdapter(**{"version": "v3", "base_model": p.base_model, "params": ours, "adapter_files": files,
                                  **kw})  # fmt: skip

    init = choose_init(p, champ())
    assert init["from"] == "champion" and init["summary"] == "champion v3"
    assert init["adapter_files"] == {n: {"key": f"runs/r/adapter/{n}", "sha256": "a" * 64} for n in files}
    reordered = champ(params={**ours, "target_modules": list(reversed(ours["target_modules"]))})
    assert choose_init(p, reordered)["from"] == "champion"  # a set of modules, not a sequence
    assert choose_init(p, None)["summary"] == "base (no champion)"
    assert choose_init(p, champ(base_model="other/base"))["summary"] == (
        f"base (champion v3's LoRA differs: base_model 'other/base' != {p.base_model!r})"
    )
    assert choose_init(p, champ(params={**ours, "lora_alpha": 1, "modules_to_save": ["lm_head"]}))["summary"] == (
        f"base (champion v3's LoRA differs: lora_alpha 1 != {p.lora_alpha}, modules_to_save ['lm_head'] != "
        f"{p.modules_to_save!r})"
    )
    assert choose_init(p, champ(params=None))["summary"] == "base (champion v3's training params are not recorded)"
    partial = champ(adapter_files={"adapter_model.safetensors": files["adapter_model.safetensors"]})
    assert choose_init(p, partial)["summary"] == "base (champion v3 has no stored adapter_config.json)"
    plan = {"method": "grpo", "grpo": asdict(GrpoParams()), "init": init}
    assert init_adapter_files(plan) == init["adapter_files"]
    assert init_adapter_files({**plan, "init": choose_init(p, None)}) == {}
    assert init_adapter_files({**plan, "method": "sft"}) == {}
    cfg = job_config(p, train_file=tmp_path / "g", eval_file=None, output_dir=tmp_path, preference=GrpoParams(),
                     init_adapter=tmp_path / "init_adapter")  # fmt: skip
    assert cfg["init_adapter"] == str(tmp_path / "init_adapter")
    with pytest.raises(ValueError, match="init_adapter is read by the grpo job only"):
        job_config(p, train_file=tmp_path / "t", eval_file=None, output_dir=tmp_path, init_adapter=tmp_path)
    described = describe_method({"method": "grpo", "method_figures": {}, "init": init})
    assert described["init"] == "champion v3" and described["data"].endswith("; init: champion v3")
