"""jobs.preference: DPO and KTO with a LoRA adapter; config and data errors; the losses; resume; SIGTERM."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs import preference
from jobs.common import EXIT_SIGTERM, JobConfigError, write_jsonl
from tests.helpers.tiny_model import demo_task_examples


def pref_rows(n: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """DPO pairs and KTO lines: the right answer against the source identifier copied unchanged."""
    dpo, kto = [], []
    for e in demo_task_examples(n, seed=seed):
        prompt, answer = e["messages"][:1], e["messages"][1]["content"]
        copied = prompt[0]["content"].split("`")[1]
        dpo.append({"id": e["id"], "prompt": prompt, "chosen": answer, "rejected": copied})
        kto.append({"id": e["id"], "prompt": prompt, "completion": answer, "label": True})
        kto.append({"id": e["id"] + "-bad", "prompt": prompt, "completion": copied, "label": False, "weight": 0.5})
    return dpo, kto


@pytest.fixture(scope="module")
def pref_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pref-data")
    dpo, kto = pref_rows(24, seed=5)
    write_jsonl(d / "dpo.jsonl", dpo)
    write_jsonl(d / "kto.jsonl", kto)
    return {"dpo": d / "dpo.jsonl", "kto": d / "kto.jsonl"}


def pref_config(
    finetune_config: Callable[..., dict[str, Any]],
    base: Path,
    files: dict[str, Path],
    out: Path,
    method: str,
    **kw: Any,
) -> dict[str, Any]:
    return {**finetune_config(base, files[method], out, batch_size=4, **kw), "method": method}


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_preference_job_trains_an_adapter(
    method: str,
    tmp_path: Path,
    quick_base: Path,
    pref_files: dict[str, Path],
    finetune_config: Callable[..., dict[str, Any]],
) -> None:
    cfg = preference.parse_config(pref_config(finetune_config, quick_base, pref_files, tmp_path / "o", method))
    metrics, code = preference.train(cfg)
    assert code == 0 and metrics["method"] == method and metrics["steps"] == 4
    assert math.isfinite(metrics["train_loss"]) and metrics["tokens_per_s"] > 0
    assert (tmp_path / "o" / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "o" / "adapter").glob("*.bin"))
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["method"] == method
    if method == "dpo":
        assert 0.0 <= metrics["reward_accuracy"] <= 1.0
    assert json.loads((tmp_path / "o" / "heartbeat.json").read_text())["step"] == 4


def test_the_reference_is_the_base_with_the_adapter_disabled(
    tmp_path: Path, quick_base: Path, pref_files: dict[str, Path], finetune_config: Callable[..., dict[str, Any]]
) -> None:
    """At step 0 the policy is the reference (LoRA B starts at 0): DPO's loss is log 2 exactly, then it falls."""
    from jobs.common import load_base_model, load_tokenizer, pick_device
    from jobs.finetune_lora import build_peft_model

    cfg = preference.parse_config(
        pref_config(finetune_config, quick_base, pref_files, tmp_path / "o", "dpo", learning_rate=5e-3)
    )
    tok = load_tokenizer(str(quick_base))
    model = build_peft_model(load_base_model(str(quick_base), dtype=torch.float32, device=pick_device()), cfg.base)
    items = preference.load_items(str(pref_files["dpo"]), "dpo", tok, 128)
    stats = preference.preference_step(model, items[:4], preference.PreferenceConfig(cfg.base, sft_weight=0.0), 0)
    assert stats.loss == pytest.approx(math.log(2), abs=1e-5) and stats.margin == pytest.approx(0.0, abs=1e-6)
    assert sum(1 for n, _ in model.named_parameters() if "lora_" in n) > 0  # one model, not two copies


def test_losses_match_the_formulas() -> None:
    pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])
    expected = -math.log(1 / (1 + math.exp(-0.1 * ((-1 + 2) - (-3 + 2)))))
    assert float(preference.dpo_loss(pc, pr, rc, rr, 0.1)) == pytest.approx(expected)
    ratio, kl = torch.tensor([2.0, 2.0]), torch.tensor(0.5)
    out = preference.kto_loss(ratio, torch.tensor([True, False]), kl, 0.1, 1.0, 2.0)
    sig = 1 / (1 + math.exp(-0.1 * 1.5))
    assert out.tolist() == pytest.approx([1 - sig, 2.0 * (1 - (1 - sig))])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "ppo"}, "method must be one of dpo, kto"),
        ({"beta": 0}, "beta must be > 0"),
        ({"sft_weight": -1}, "sft_weight must be >= 0"),
        ({"beta": "high"}, "beta must be int or float"),
        ({"packing": True}, "packing is not supported"),
        ({"eval_file": "eval.jsonl"}, "eval_file is not used"),
        ({"typo": 1}, "unknown key"),
    ],
)
def test_bad_config_is_refused(overrides: dict[str, Any], message: str, tmp_path: Path) -> None:
    cfg = {"base_model": "b", "train_file": "t", "output_dir": str(tmp_path), "method": "dpo", **overrides}
    with pytest.raises(JobConfigError, match=message):
        preference.parse_config(cfg)


@pytest.mark.parametrize(
    ("method", "row", "message"),
    [
        ("dpo", {"prompt": [{"role": "user", "content": "q"}], "chosen": "a"}, "needs string 'chosen' and 'rejected'"),
        ("dpo", {"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "a"}, "the same answer"),
        ("dpo", {"prompt": "q", "chosen": "a", "rejected": "b"}, "'messages' must be a non-empty list"),
        ("kto", {"prompt": [{"role": "user", "content": "q"}], "completion": "a", "label": "yes"}, "boolean 'label'"),
        ("kto", {"prompt": [{"role": "user", "content": "q"}], "completion": "a", "label": True}, "undesirable"),
        ("kto", {"prompt": [{"role": "user", "content": "q"}], "completion": "a", "label": False}, "desirable"),
        ("kto", {"prompt": [{"role": "user", "content": "q"}], "completion": "a", "label": True, "weight": -1}, ">= 0"),
    ],
)
def test_bad_lines_are_refused(
    method: str, row: dict[str, Any], message: str, tmp_path: Path, quick_base: Path
) -> None:
    from jobs.common import load_tokenizer

    write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(JobConfigError, match=message):
        preference.load_items(str(tmp_path / "bad.jsonl"), method, load_tokenizer(str(quick_base)), 64)


def test_resume_reproduces_the_uninterrupted_run(
    tmp_path: Path, quick_base: Path, pref_files: dict[str, Path], finetune_config: Callable[..., dict[str, Any]]
) -> None:
    from safetensors.torch import load_file

    def run(out: str, **kw: Any) -> None:
        cfg = pref_config(finetune_config, quick_base, pref_files, tmp_path / out, "kto", **kw)
        assert preference.train(preference.parse_config(cfg))[1] == 0

    run("a")
    run("b", save_steps=2)
    run("c", resume_from=str(tmp_path / "b" / "checkpoints" / "step-2"))
    state = json.loads((tmp_path / "b" / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["method"] == "kto"
    a = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    c = load_file(str(tmp_path / "c" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == c.keys()
    for k in a:
        torch.testing.assert_close(a[k], c[k], rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["resumed_from_step"] == 2
    with pytest.raises(JobConfigError, match="written by method 'kto'"):
        cfg = pref_config(finetune_config, quick_base, pref_files, tmp_path / "d", "dpo")
        preference.train(
            preference.parse_config({**cfg, "resume_from": str(tmp_path / "b" / "checkpoints" / "step-2")})
        )


def test_sigterm_checkpoints_and_exits_143(
    tmp_path: Path,
    quick_base: Path,
    pref_files: dict[str, Path],
    finetune_config: Callable[..., dict[str, Any]],
    sigterm_at_step: Callable[..., tuple[int, str]],
) -> None:
    out = tmp_path / "out"
    cfg = pref_config(finetune_config, quick_base, pref_files, out, "dpo", max_steps=100_000)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    code, err = sigterm_at_step("jobs.preference", tmp_path / "cfg.json", out)
    assert code == EXIT_SIGTERM, err
    [ckpt] = list((out / "checkpoints").iterdir())
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "optimizer.safetensors").is_file()
    assert json.loads((ckpt / "trainer_state.json").read_text())["method"] == "dpo"
    resumed = {**cfg, "max_steps": int(ckpt.name[5:]) + 1, "resume_from": "auto"}
    metrics, code = preference.train(preference.parse_config(resumed))
    assert code == 0 and metrics["resumed_from_step"] == int(ckpt.name[5:])


def test_bad_config_from_the_command_line(tmp_path: Path, run_job: Callable[..., Any]) -> None:
    (tmp_path / "cfg.json").write_text(
        json.dumps({"base_model": "b", "train_file": "t", "output_dir": "o", "beta": -1})
    )
    proc = run_job(["-m", "jobs.preference", "--config", str(tmp_path / "cfg.json")])
    assert proc.returncode == 2 and proc.stderr.strip() == "error: beta must be > 0"
