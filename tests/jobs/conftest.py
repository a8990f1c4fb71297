"""Fixtures for the jobs/ tests: a quickly built (barely trained) base model and config factories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobs.build_base_model import build
from jobs.common import write_jsonl
from tests.helpers.tiny_model import REPO_ROOT, demo_task_examples


@pytest.fixture(scope="session")
def quick_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture and tokenizer as the real tiny base, 3 pre-training steps: for mechanics tests."""
    out = tmp_path_factory.mktemp("quick-base") / "model"
    build(out, steps=3, seed=0)
    return out


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("demo-data")
    files = {"train": d / "train.jsonl", "eval": d / "eval.jsonl"}
    write_jsonl(files["train"], demo_task_examples(48, seed=1))
    write_jsonl(files["eval"], demo_task_examples(16, seed=2))
    return files


def _finetune_config(base: Path, train: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "base_model": str(base),
        "train_file": str(train),
        "output_dir": str(out),
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "seq_len": 128,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "max_steps": 4,
        "heartbeat_every_s": 0.2,
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def finetune_config() -> Callable[..., dict[str, Any]]:
    """Factory: finetune_config(base, train_file, output_dir, **overrides) -> a small valid config."""
    return _finetune_config


def _job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)  # the jobs must find their own package, as on a rented host
    return env


@pytest.fixture
def job_env() -> dict[str, str]:
    return _job_env()


def _run_job(args: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=_job_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def run_job() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Factory: run_job([args...]) runs `python args...` as the daemon does, in the repo root."""
    return _run_job


def _sigterm_at_step(module: str, config: Path, out: Path, step: int = 2) -> tuple[int, str]:
    """Run ``python -m module --config config``, SIGTERM it once its heartbeat reports ``step``; (exit code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--config", str(config)],
        cwd=REPO_ROOT,
        env=_job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            hb = out / "heartbeat.json"
            if hb.is_file() and json.loads(hb.read_text())["step"] >= step:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        else:
            pytest.fail(f"training never reached step {step}")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


@pytest.fixture
def sigterm_at_step() -> Callable[..., tuple[int, str]]:
    """Factory: sigterm_at_step(module, config_path, output_dir, step=2) -> (exit code, stderr)."""
    return _sigterm_at_step
