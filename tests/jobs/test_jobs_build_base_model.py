"""jobs.build_base_model and the cached tiny_base_model() helper."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from jobs.build_base_model import STYLES, format_identifier
from tests.helpers.tiny_model import build_hash, demo_task_examples, tiny_base_model

pytestmark = pytest.mark.train


def test_build_from_the_command_line(tmp_path: Path, run_job: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    out = tmp_path / "base"
    proc = run_job(["jobs/build_base_model.py", "--out", str(out), "--steps", "2", "--seed", "7"])
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "build_info.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    info = json.loads((out / "build_info.json").read_text())
    assert info["pretrain_steps"] == 2 and info["seed"] == 7 and info["parameters"] > 100_000
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["num_hidden_layers"] == 2
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and {"<pad>", "<s>", "</s>", "<unk>"} <= set(tok.get_vocab())
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # the temp build dir was renamed away


def test_bad_arguments_fail(tmp_path: Path, run_job: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    proc = run_job(["-m", "jobs.build_base_model", "--out", str(tmp_path / "b"), "--steps", "-1"])
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --steps must be >= 0"


def test_the_build_does_not_depend_on_the_callers_thread_count(tmp_path: Path) -> None:
    # The cache key is the build code's hash: the weights must not change with OMP_NUM_THREADS (make test runs
    # its jobs on one thread each). Unpinned, 1 and 4 threads differ after 20 steps.
    import torch

    from jobs.build_base_model import BUILD_THREADS, build

    threads = torch.get_num_threads()
    try:
        for n in (1, 4):
            torch.set_num_threads(n)
            info = build(tmp_path / f"t{n}", steps=20)
            assert torch.get_num_threads() == n and info["threads"] == BUILD_THREADS  # the caller's count is back
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "t1" / "model.safetensors").read_bytes() == (tmp_path / "t4" / "model.safetensors").read_bytes()


def test_tiny_base_model_is_cached_by_content_hash() -> None:
    first = tiny_base_model()
    assert first.name == f"tiny-base-{build_hash()}"
    assert (first / "build_info.json").is_file()
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_base_model() == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt


def test_demo_task_examples_follow_the_spec() -> None:
    examples = demo_task_examples(50, seed=3)
    assert examples == demo_task_examples(50, seed=3)
    assert len({e["id"] for e in examples}) == 50
    domains = dict(zip(STYLES.values(), STYLES, strict=True))
    for e in examples:
        assert set(e) == {"id", "domain", "weight", "messages"} and e["weight"] == 1.0
        prompt, answer = e["messages"][0]["content"], e["messages"][1]["content"]
        style = domains[e["domain"]]
        assert prompt.startswith("Rename the identifier `") and prompt.endswith(f"` to {style}.")
        source = prompt.split("`")[1]
        assert source != answer
        if style in ("snake_case", "kebab-case", "UPPER_SNAKE_CASE"):
            words = answer.replace("-", "_").lower().split("_")
            assert 2 <= len(words) <= 3 and format_identifier(words, style) == answer
