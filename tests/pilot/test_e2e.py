"""The whole loop across processes, with real components: the cycle stops at the approval in one process, a human
approves from a second process through the CLI, and after a restart a third process finishes the same thread: a LoRA
job trains the tiny model through the local GPU provider, the candidate and the base answer the golden split, the
daemon scores their outputs, and the gate promotes or rejects with its reason."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import col, select

from pilot.settings import load_settings
from pilot.store import Store
from pilot.store.models import Approval, Decision, Event, ModelVersion, TrainingRun
from pilot.store.status import ModelStatus, RunStatus
from subagents.data.samples import generate_demo_records
from subagents.evaluation import score_normalised
from tests.helpers.tiny_model import tiny_base_model

pytestmark = [pytest.mark.train, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pilot.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        check=False,
    )


def test_approval_across_processes_then_train_evaluate_and_gate(tmp_path: Path) -> None:
    base = tiny_base_model()
    config = tmp_path / "pilot.toml"
    config.write_text(
        f"""
env = "e2e"
data_dir = "{tmp_path / "data"}"
[policy]
min_new_examples = 100
cooldown_minutes = 0
[training]
base_model = "{base}"
base_model_params_b = 0.001
lora_dropout = 0.0
modules_to_save = ["embed_tokens", "lm_head"]
seq_len = 64
batch_size = 32
learning_rate = 3e-3
max_steps = 160
poll_interval_s = 0.3
[evaluation]
min_items = 20
max_new_tokens = 16
batch_size = 64
"""
    )
    assert cli(config, "init").returncode == 0
    inbox = tmp_path / "data" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "records.jsonl").write_text("\n".join(generate_demo_records(700, seed=7)) + "\n")

    # Process 1: one cycle ingests, curates, decides to fine-tune, and stops at the approval.
    first = cli(config, "run", "--once")
    assert first.returncode == 0, first.stderr
    match = re.search(r"waiting for approval (apv-[0-9a-f]+)", first.stdout)
    assert match, first.stdout
    approval_id = match.group(1)
    status = json.loads(cli(config, "status", "--json").stdout)
    assert [a["id"] for a in status["pending_approvals"]] == [approval_id]
    assert status["runs"] == []  # nothing rented before the approval

    # Process 2: a human approves through the CLI.
    approved = cli(config, "approve", approval_id, "--by", "alice")
    assert approved.returncode == 0 and "human:alice" in approved.stdout

    # Process 3 (a restart): the waiting thread resumes and finishes.
    second = cli(config, "run", "--once")
    assert second.returncode == 0, second.stderr
    assert re.search(r"(PROMOTED|REJECTED) v1", second.stdout), second.stdout

    settings = load_settings(config)
    store = Store(settings.database_url)
    with store.session() as s:
        approval = s.get(Approval, approval_id)
        assert approval is not None and approval.status == "approved" and approval.decided_by == "human:alice"
        decision = s.get(Decision, approval.decision_id)
        assert decision is not None and decision.action == "finetune" and decision.finished_at is not None
        run = s.exec(select(TrainingRun).where(TrainingRun.decision_id == decision.id)).one()
        version = s.exec(select(ModelVersion).where(ModelVersion.run_id == run.id)).one()
        run_events = s.exec(select(Event).where(Event.entity_id == run.id).order_by(col(Event.id))).all()
        version_events = s.exec(select(Event).where(Event.entity_id == version.id).order_by(col(Event.id))).all()
        approval_events = s.exec(select(Event).where(Event.entity_id == approval_id).order_by(col(Event.id))).all()
    store.close()

    # A trained adapter, safetensors, its sha256 recorded and matching the stored bytes.
    assert run.status == RunStatus.SUCCEEDED and run.approval_id == approval_id
    weights = version.adapter_files["adapter_model.safetensors"]
    stored = Path(settings.artifacts_dir) / weights["key"]
    assert stored.suffix == ".safetensors"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == weights["sha256"] == version.adapter_sha256
    assert all(not name.endswith((".bin", ".pt", ".pkl")) for name in version.adapter_files)
    assert run.metrics["steps"] == 160 and run.metrics["train_loss"] < run.metrics.get("eval_loss", 99) + 5

    # The evaluation was computed from model outputs: re-score the candidate's predictions here.
    report = version.eval_report
    golden_file = settings.snapshots_dir / str(version.snapshot_id) / "golden.jsonl"
    golden = [json.loads(line) for line in golden_file.read_text().splitlines() if line]
    candidate_file = settings.work_dir / "eval" / version.id / "candidate.jsonl"
    predictions = {
        item["id"]: item["prediction"] for item in map(json.loads, candidate_file.read_text().splitlines()) if item
    }
    assert len(predictions) == len(golden) == report["n_items"] >= 20
    rescored = sum(score_normalised(predictions[g["id"]], g["messages"][-1]["content"]) for g in golden) / len(golden)
    assert rescored == pytest.approx(report["candidate_score"])
    assert report["champion_label"].startswith("base")

    # Promoted or rejected, with the reason, and one event per transition.
    assert version.status in (ModelStatus.PROMOTED, ModelStatus.REJECTED)
    assert report["reason"] and report["verdict"] in ("promote", "reject")
    assert [(e.old, e.new) for e in run_events if e.new] == [
        (None, "pending"),
        ("pending", "provisioning"),
        ("provisioning", "running"),
        ("running", "collecting"),
        ("collecting", "succeeded"),
    ]
    assert [e.new for e in version_events if e.new] == ["candidate", str(version.status)]
    assert [(e.old, e.new, e.actor) for e in approval_events] == [
        (None, "pending", "supervisor"),
        ("pending", "approved", "human:alice"),
    ]
    if version.status == ModelStatus.PROMOTED:
        models = json.loads(cli(config, "models", "--json").stdout)
        assert models["aliases"]["champion"] == version.id
        pointer = json.loads((Path(settings.data_dir) / "serving" / "current.json").read_text())
        assert pointer["adapter"] == version.id
