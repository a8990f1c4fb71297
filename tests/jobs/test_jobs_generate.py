"""jobs.generate: output format, batch independence, adapter safety."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobs import finetune_lora, generate
from jobs.common import run_main, write_jsonl
from tests.helpers.tiny_model import demo_task_examples

pytestmark = pytest.mark.train


def gen_config(base: Path, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    inp = tmp_path / "items.jsonl"
    if not inp.exists():
        write_jsonl(inp, demo_task_examples(6, seed=5))
    cfg = {
        "base_model": str(base),
        "adapter": None,
        "input_file": str(inp),
        "output_file": str(tmp_path / "pred.jsonl"),
        "max_new_tokens": 12,
        "batch_size": 4,
    }
    cfg.update(overrides)
    return cfg


def run_generate(tmp_path: Path, cfg: dict[str, Any]) -> int:
    path = tmp_path / "gen.json"
    path.write_text(json.dumps(cfg))
    return run_main(generate.main, ["--config", str(path)])


def read_preds(path: str) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def test_generate_writes_predictions_and_summary(tmp_path: Path, quick_base: Path) -> None:
    cfg = gen_config(quick_base, tmp_path)
    assert run_generate(tmp_path, cfg) == 0
    preds = read_preds(cfg["output_file"])
    assert [p["id"] for p in preds] == [f"demo-{i:05d}" for i in range(6)]
    for p in preds:
        assert set(p) == {"id", "prediction", "loss"}
        assert isinstance(p["prediction"], str) and p["prediction"] == p["prediction"].strip()
        assert "</s>" not in p["prediction"] and p["loss"] > 0
    summary = json.loads(Path(cfg["output_file"] + ".summary.json").read_text())
    assert summary["items"] == 6 and summary["adapter"] is None and summary["duration_s"] >= 0
    assert summary["eval_loss"] == pytest.approx(sum(p["loss"] for p in preds) / 6)

    # Left padding makes each row independent of its neighbours: batch size 1 gives the same answers.
    one = gen_config(quick_base, tmp_path, batch_size=1, output_file=str(tmp_path / "one.jsonl"))
    assert run_generate(tmp_path, one) == 0
    singles = read_preds(one["output_file"])
    assert [p["prediction"] for p in singles] == [p["prediction"] for p in preds]
    assert [p["loss"] for p in singles] == pytest.approx([p["loss"] for p in preds], rel=1e-4)


def test_generate_with_adapter_changes_losses(
    tmp_path: Path, quick_base: Path, demo_files: dict[str, Path], finetune_config: Callable[..., Any]
) -> None:
    cfg = finetune_config(quick_base, demo_files["train"], tmp_path / "ft", max_steps=3, learning_rate=5e-3)
    finetune_lora.train(finetune_lora.parse_config(cfg))
    plain = gen_config(quick_base, tmp_path)
    assert run_generate(tmp_path, plain) == 0
    tuned = gen_config(
        quick_base, tmp_path, adapter=str(tmp_path / "ft" / "adapter"), output_file=str(tmp_path / "t.jsonl")
    )
    assert run_generate(tmp_path, tuned) == 0
    a, b = read_preds(plain["output_file"]), read_preds(tuned["output_file"])
    assert [x["loss"] for x in a] != pytest.approx([x["loss"] for x in b])
    summary = json.loads(Path(tuned["output_file"] + ".summary.json").read_text())
    assert summary["adapter"] == tuned["adapter"]


def test_generate_refuses_a_pickled_adapter(
    tmp_path: Path, quick_base: Path, run_job: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    cfg_path = tmp_path / "gen.json"
    cfg_path.write_text(json.dumps(gen_config(quick_base, tmp_path, adapter=str(adapter))))
    proc = run_job(["jobs/generate.py", "--config", str(cfg_path)])
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: refusing adapter {adapter}: pickled weight file(s) adapter_model.bin"
    ]
    assert not Path(tmp_path / "pred.jsonl").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": 0.7}, "unknown key"), ({"adapter": 3}, "adapter")],
)
def test_generate_bad_config(
    tmp_path: Path, quick_base: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], message: str
) -> None:
    cfg = gen_config(quick_base, tmp_path)
    cfg.update(change)
    assert run_generate(tmp_path, cfg) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_generate_rejects_items_without_a_prompt(tmp_path: Path, quick_base: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"id": "x", "messages": [{"role": "assistant", "content": "an answer to nothing"}]}])
    assert run_generate(tmp_path, gen_config(quick_base, tmp_path, input_file=str(bad))) == 2


def test_a_prompt_alone_gets_the_same_prediction_and_no_loss(tmp_path: Path, quick_base: Path) -> None:
    """What a rented evaluation host gets: the messages before the reference (pilot/evaluation/remote.py)."""
    full = gen_config(quick_base, tmp_path)
    assert run_generate(tmp_path, full) == 0
    prompts = tmp_path / "prompts.jsonl"
    rows = [json.loads(line) for line in Path(full["input_file"]).read_text().splitlines()]
    write_jsonl(prompts, [{"id": r["id"], "messages": r["messages"][:-1]} for r in rows])
    alone = gen_config(quick_base, tmp_path, input_file=str(prompts), output_file=str(tmp_path / "alone.jsonl"))
    assert run_generate(tmp_path, alone) == 0
    with_reference, without = read_preds(full["output_file"]), read_preds(alone["output_file"])
    assert [p["prediction"] for p in without] == [p["prediction"] for p in with_reference]
    assert all(p["loss"] is None for p in without)
    assert json.loads(Path(alone["output_file"] + ".summary.json").read_text())["eval_loss"] is None
