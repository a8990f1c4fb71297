"""jobs.finetune_lora: outputs, config errors, packing and weights, checkpoints, resume, SIGTERM."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs import finetune_lora
from jobs.common import EXIT_SIGTERM, load_adapter, load_base_model, load_tokenizer, run_main

pytestmark = pytest.mark.train

METRIC_KEYS = {
    "train_loss", "eval_loss", "steps", "epochs", "train_examples", "train_tokens", "tokens_per_s",
    "peak_memory_mb", "duration_s", "precision", "device", "stopped_early", "resumed_from_step",
}  # fmt: skip


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def run_inprocess(tmp_path: Path, cfg: dict[str, Any]) -> int:
    return run_main(finetune_lora.main, ["--config", str(write_config(tmp_path / "cfg.json", cfg))])


def test_finetune_writes_adapter_metrics_heartbeat_and_checkpoints(
    tmp_path: Path, quick_base: Path, demo_files: dict[str, Path], finetune_config: Callable[..., Any]
) -> None:
    out = tmp_path / "out"
    cfg = finetune_config(quick_base, demo_files["train"], out, eval_file=str(demo_files["eval"]), save_steps=2)
    cfg["max_steps"] = 5
    assert run_inprocess(tmp_path, cfg) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    assert metrics["steps"] == 5 and metrics["train_examples"] == 48
    assert metrics["precision"] == "fp32" and metrics["device"] == "cpu"
    assert metrics["eval_loss"] > 0 and metrics["train_tokens"] > 0 and metrics["tokens_per_s"] > 0
    assert metrics["resumed_from_step"] is None and metrics["stopped_early"] is False
    assert metrics["epochs"] == pytest.approx(5 * 8 / 48, abs=1e-3)
    assert [step for step, _ in metrics["loss_curve"]] == [1, 2, 3, 4, 5]  # the dashboard's loss chart
    assert metrics["eval_curve"] and metrics["eval_curve"][-1][0] == 5

    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert not [p for p in adapter.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    heartbeat = json.loads((out / "heartbeat.json").read_text())
    assert heartbeat["step"] == 5 and heartbeat["max_steps"] == 5 and heartbeat["loss"] > 0
    # Periodic checkpoints at 2 and 4, each marked complete, state naming its step and seed.
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-4"]
    for name in ckpts:
        d = out / "checkpoints" / name
        assert (d / "COMPLETE").is_file() and (d / "adapter_model.safetensors").is_file()
        state = json.loads((d / "trainer_state.json").read_text())
        assert state["step"] == int(name[5:]) and state["seed"] == 0

    # The adapter loads with peft onto a fresh base and changes the model's output.
    tok = load_tokenizer(str(quick_base))
    base = load_base_model(str(quick_base), dtype=torch.float32, device=torch.device("cpu"))
    ids = torch.tensor([tok("User: hi", add_special_tokens=False)["input_ids"]])
    before = base(input_ids=ids).logits.detach().clone()
    peft_model = load_adapter(base, adapter)
    after = peft_model(input_ids=ids).logits
    assert not torch.allclose(before, after)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate_typo": 1}, "unknown key"),
        ({"lora": {"r": 0}}, "lora.r"),
        ({"lora": {"rank": 8}}, "lora: unknown key"),
        ({"lr_schedule": "exp"}, "lr_schedule"),
        ({"batch_size": True}, "batch_size"),
        ({"max_steps": None, "epochs": 0}, "epochs"),
        ({"early_stopping_patience": 2}, "needs an eval_file"),
        ({"lora": {"target_modules": ["no_such_module"]}}, "lora"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(
    tmp_path: Path,
    quick_base: Path,
    demo_files: dict[str, Path],
    finetune_config: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
    change: dict[str, Any],
    message: str,
) -> None:
    cfg = finetune_config(quick_base, demo_files["train"], tmp_path / "out")
    cfg.update(change)
    assert run_inprocess(tmp_path, cfg) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_missing_config_and_missing_train_file(
    tmp_path: Path, quick_base: Path, finetune_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(finetune_lora.main, ["--config", str(tmp_path / "nope.json")]) == 2
    cfg = finetune_config(quick_base, tmp_path / "no-train.jsonl", tmp_path / "out")
    assert run_inprocess(tmp_path, cfg) == 2
    assert "no-train.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("form", [["-m", "jobs.finetune_lora"], ["jobs/finetune_lora.py"]])
def test_bad_config_from_the_command_line(
    tmp_path: Path, run_job: Callable[..., subprocess.CompletedProcess[str]], form: list[str]
) -> None:
    cfg = write_config(tmp_path / "cfg.json", {"base_model": "x", "train_file": "y"})
    proc = run_job([*form, "--config", str(cfg)])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: config: missing required key(s): output_dir"]


def test_packed_and_padded_batches_give_the_same_loss(quick_base: Path, demo_files: dict[str, Path]) -> None:
    """Padding-free packing must be exactly the per-example loss: no attention across examples."""
    tok = load_tokenizer(str(quick_base))
    examples = finetune_lora.load_examples(str(demo_files["train"]), tok, 128)[:6]
    model = load_base_model(str(quick_base), dtype=torch.float32, device=torch.device("cpu")).eval()
    cfg = finetune_lora.parse_config({"base_model": "b", "train_file": "t", "output_dir": "o"})
    run = finetune_lora._Run(cfg, model, torch.device("cpu"), torch.float32, None)
    with torch.no_grad():
        packed = finetune_lora.collate(examples, packing=True, pad_id=tok.pad_token_id)
        padded = finetune_lora.collate(examples, packing=False, pad_id=tok.pad_token_id)
        assert packed.input_ids.shape[0] == 1 and packed.attention_mask is None
        assert packed.input_ids.numel() == packed.n_tokens  # no padding at all
        lp, _ = run.step_loss([packed], train=False)
        lq, _ = run.step_loss([padded], train=False)
    assert lp == pytest.approx(lq, rel=1e-4)


def test_example_weights_scale_the_loss(quick_base: Path, demo_files: dict[str, Path]) -> None:
    tok = load_tokenizer(str(quick_base))
    ex = finetune_lora.load_examples(str(demo_files["train"]), tok, 128)[:4]
    model = load_base_model(str(quick_base), dtype=torch.float32, device=torch.device("cpu")).eval()
    cfg = finetune_lora.parse_config({"base_model": "b", "train_file": "t", "output_dir": "o"})
    run = finetune_lora._Run(cfg, model, torch.device("cpu"), torch.float32, None)
    zeroed = [finetune_lora.Example(e.ids, e.n_prompt, 0.0 if i % 2 else 1.0) for i, e in enumerate(ex)]
    doubled = [finetune_lora.Example(e.ids, e.n_prompt, 2.0) for e in ex]
    with torch.no_grad():
        base_loss, plain = run.step_loss([finetune_lora.collate(ex, packing=True, pad_id=0)], train=False)
        half, _ = run.step_loss([finetune_lora.collate(zeroed, packing=True, pad_id=0)], train=False)
        double, _ = run.step_loss([finetune_lora.collate(doubled, packing=False, pad_id=0)], train=False)
    assert base_loss == pytest.approx(plain)
    assert double == pytest.approx(2 * base_loss, rel=1e-5)
    assert 0 < half < base_loss


def test_lr_schedules_and_batch_plan() -> None:
    f = finetune_lora.lr_factor
    assert [round(f(s, 10, 2, "linear"), 3) for s in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 0.5, 0.125]
    assert f(9, 10, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert f(7, 10, 2, "constant") == 1.0
    plan = finetune_lora.BatchPlan(10, batch_size=2, grad_accum=2, seed=3)
    assert plan.steps_per_epoch == 3
    epoch0 = [i for s in range(3) for mb in plan.micro_batches(s) for i in mb]
    assert sorted(epoch0) == list(range(10))  # every example once per epoch
    again = finetune_lora.BatchPlan(10, batch_size=2, grad_accum=2, seed=3)
    assert again.micro_batches(4) == plan.micro_batches(4)  # order is a function of (seed, step)


def test_resume_continues_the_step_count(
    tmp_path: Path, quick_base: Path, demo_files: dict[str, Path], finetune_config: Callable[..., Any]
) -> None:
    out = tmp_path / "out"
    cfg = finetune_config(quick_base, demo_files["train"], out, save_steps=3, max_steps=3)
    assert run_inprocess(tmp_path, cfg) == 0
    assert (out / "checkpoints" / "step-3" / "COMPLETE").is_file() is False  # no checkpoint at the final step
    cfg.update(max_steps=6, save_steps=2)
    assert run_inprocess(tmp_path, cfg) == 0
    (out / "checkpoints" / "step-6").mkdir()  # incomplete (no COMPLETE): must be ignored by "auto"
    cfg.update(max_steps=7, resume_from="auto")
    assert run_inprocess(tmp_path, cfg) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 4 and metrics["steps"] == 7


def test_resume_reproduces_the_uninterrupted_run(
    tmp_path: Path, quick_base: Path, demo_files: dict[str, Path], finetune_config: Callable[..., Any]
) -> None:
    """Adapter, optimizer and data order all come back: resumed weights equal a straight run's."""
    straight = finetune_config(quick_base, demo_files["train"], tmp_path / "a", max_steps=4)
    assert run_inprocess(tmp_path, straight) == 0
    first = finetune_config(quick_base, demo_files["train"], tmp_path / "b", max_steps=4, save_steps=2)
    assert run_inprocess(tmp_path, first) == 0
    resumed = dict(first, resume_from=str(tmp_path / "b" / "checkpoints" / "step-2"), output_dir=str(tmp_path / "c"))
    assert run_inprocess(tmp_path, resumed) == 0
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    c = load_file(str(tmp_path / "c" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == c.keys()
    for k in a:
        torch.testing.assert_close(a[k], c[k], rtol=1e-4, atol=1e-5)


def test_resume_from_incomplete_checkpoint_is_refused(
    tmp_path: Path,
    quick_base: Path,
    demo_files: dict[str, Path],
    finetune_config: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "ck").mkdir()
    cfg = finetune_config(quick_base, demo_files["train"], tmp_path / "out", resume_from=str(tmp_path / "ck"))
    assert run_inprocess(tmp_path, cfg) == 2
    assert "not a complete checkpoint" in capsys.readouterr().err


def test_early_stopping_stops_and_keeps_the_best_adapter(
    tmp_path: Path, quick_base: Path, demo_files: dict[str, Path], finetune_config: Callable[..., Any]
) -> None:
    # A learning rate this high makes the eval loss worse after the first evaluations.
    cfg = finetune_config(
        quick_base,
        demo_files["train"],
        tmp_path / "out",
        eval_file=str(demo_files["eval"]),
        eval_every=1,
        early_stopping_patience=1,
        max_steps=40,
        learning_rate=0.5,
        lr_schedule="constant",
        warmup_ratio=0.0,
    )
    assert run_inprocess(tmp_path, cfg) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["stopped_early"] is True and m["steps"] < 40
    assert m["best_step"] < m["steps"]


def test_sigterm_writes_a_complete_checkpoint_and_exits_143(
    tmp_path: Path,
    quick_base: Path,
    demo_files: dict[str, Path],
    finetune_config: Callable[..., Any],
    sigterm_at_step: Callable[..., tuple[int, str]],
) -> None:
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "cfg.json", finetune_config(quick_base, demo_files["train"], out, max_steps=100_000))
    code, err = sigterm_at_step("jobs.finetune_lora", cfg, out)
    assert code == EXIT_SIGTERM, err
    ckpts = [d for d in (out / "checkpoints").iterdir()]
    assert len(ckpts) == 1 and (ckpts[0] / "COMPLETE").is_file()
    step = json.loads((ckpts[0] / "trainer_state.json").read_text())["step"]
    assert ckpts[0].name == f"step-{step}" and step >= 2
    assert (ckpts[0] / "adapter_model.safetensors").is_file() and not (out / "metrics.json").exists()


def test_the_loss_curve_is_bounded_and_keeps_the_step_numbers() -> None:
    curve = finetune_lora.loss_curve([float(i) for i in range(1000)], first_step=100, points=200)
    assert len(curve) == 200 and curve[0] == [105, 2.0] and curve[-1] == [1100, 997.0]
    assert finetune_lora.loss_curve([]) == []
