"""The issue's "done when", the whole loop across processes with real components.

A product that only changed its OpenAI base URL sends its coding agent's calls through the gateway (aiohttp on
loopback, in this process) with the real ``openai`` client, and reports each outcome through ``POST /v1/feedback``
(``PilotClient.feedback``). The upstream is the fake OpenAI server, answering each prompt with the demo records'
answer to it (right or wrong, as the record says), and the product reports that record's outcome: the joined
execution records are the demo data, arrived through the gateway. Then, in separate processes through the CLI, a
cycle counts them as new examples, decides to fine-tune and stops at the approval; a human approves from a second
process; after a restart a third process finishes the same thread: a LoRA job trains the tiny model through the
local GPU provider, the candidate and the base answer the golden split, the daemon scores their outputs, and the
gate promotes with its reason and a canary of 40% of sessions. The gateway routes that share to the new adapter
within seconds (no restart), by the canary's stable hash, streamed and not; the canary's answers are worse, the
product says so through feedback, a fourth process's monitor rolls the version back, and the gateway sends every
session to the base model again.

The deploy target is the pointer file, so the test loads the adapter on the fake upstream itself (what vLLM's
runtime LoRA API does for the vllm target; tools/serving/vllm.py has its own tests). This test replaced
tests/gateway/test_e2e_gateway.py (the same routing checks, on a fixture version instead of a trained one), and
keeps what its inbox-fed predecessor proved: the approval across processes, the restart, the run's and the
approval's events, the adapter's sha256, the re-scored golden predictions and the gate's reason. The tiny model
scores about 0.49 on the golden split here (the base 0.0), so ``evaluation.min_score`` is 0.3 (docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlmodel import col, select

from pilot.client import PilotClient
from pilot.serving import canary, registry
from pilot.settings import load_settings
from pilot.store import Store
from pilot.store.models import (
    Approval,
    Decision,
    Event,
    ExecutionRecordRow,
    GatewayCall,
    ModelVersion,
    TrainingRun,
)
from pilot.store.status import CallStatus, DecisionAction, ModelStatus, RunStatus
from subagents.data.samples import DOMAINS, generate_demo_records, split_words
from subagents.evaluation import score_normalised
from tests.helpers.gateway_rig import Rig, start_rig
from tests.helpers.tiny_model import tiny_base_model
from tools.serving.canary import bucket
from tools.serving.openai_fake import FakeOpenAIServer

pytestmark = [pytest.mark.train, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SHARE = 0.4  # the canary's first step


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pilot.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        check=False,
    )


class Upstream:
    """What the fake upstream answers: the demo records' answer to each prompt; the adapter ``degraded`` (once
    it exists) loses the separators of most right answers (by a hash of the prompt)."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.degraded = ""

    def add(self, record: dict[str, Any]) -> bool:
        """Whether the record's prompt is new or has the same answer (a prompt answered both ways is skipped)."""
        return self.answers.setdefault(record["prompt"], record["output"]) == record["output"]

    def __call__(self, model: str, text: str) -> str:
        right = self.answers.get(text)
        if right is None:
            return f"{model}: {text}"
        if model == self.degraded and zlib.crc32(text.encode()) % 5:
            return "".join(split_words(right))
        return right


def demo_calls(n: int, seed: int, upstream: Upstream, **kwargs: Any) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in generate_demo_records(n, seed=seed, malformed=0.0, **kwargs)]
    return [r for r in records if upstream.add(r)]


def report_outcome(pilot: PilotClient, request_id: str, record: dict[str, Any]) -> None:
    """The product's outcome of one call: the record's tests, its human rating if any, its task's domain."""
    feedback = record["feedback"] or {}
    pilot.feedback(
        request_id=request_id,
        success=record["success"],
        tests_passed=record["metrics"]["tests_passed"],
        tests_total=record["metrics"]["tests_total"],
        rating=feedback.get("rating"),
        comment=feedback.get("comment"),
        domain=record["domain"],
    )


def product_traffic(rig: Rig, records: list[dict[str, Any]]) -> None:
    """The product's calls (sync client, the record's session), then their outcomes through feedback."""
    client = openai.OpenAI(base_url=rig.url, api_key="product-key", max_retries=0)
    ids = []
    for record in records:
        raw = client.chat.completions.with_raw_response.create(
            model="agent",
            messages=[{"role": "user", "content": record["prompt"]}],
            extra_headers={"X-Session-Id": record["session_id"]},
        )
        assert raw.parse().choices[0].message.content == record["output"]
        ids.append(raw.headers["x-request-id"])
    client.close()
    with PilotClient(rig.root, token=rig.feedback_token) as pilot:
        for rid, record in zip(ids, records, strict=True):
            report_outcome(pilot, rid, record)
    rig.drain()


async def streamed_traffic(url: str, records: list[dict[str, Any]], offset: int) -> list[tuple[str, str, str]]:
    """(request id, served version, answer) of one streamed call per record, session ``user-<offset + i>``."""
    c = openai.AsyncOpenAI(base_url=url, api_key="product-key", max_retries=0)
    out = []
    for i, record in enumerate(records):
        raw = await c.chat.completions.with_raw_response.create(
            model="agent",
            stream=True,
            messages=[{"role": "user", "content": record["prompt"]}],
            user=f"user-{offset + i}",
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in raw.parse() if chunk.choices])
        out.append((raw.headers["x-request-id"], raw.headers["x-pilot-model-version"], text))
    await c.close()
    return out


def served_version(client: openai.OpenAI, session: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="agent", messages=[{"role": "user", "content": "hi"}], extra_headers={"X-Session-Id": session}
    )
    return str(raw.headers["x-pilot-model-version"])


def wait_until_served(client: openai.OpenAI, version: str, session: str, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while served_version(client, session) != version:
        assert time.monotonic() - start < timeout, f"the gateway did not switch to {version} in {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - start


def write_config(tmp_path: Path, base: Path, upstream_url: str) -> Path:
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
min_score = 0.3
max_new_tokens = 16
batch_size = 64
[gateway]
upstream_url = "{upstream_url}"
port = 0
route_refresh_s = 0.5
[deploy]
canary = true
canary_steps = [{SHARE}, 1.0]
[monitoring]
min_records = 30
alpha = 0.01
min_drop = 0.05
window_hours = 6
"""
    )
    return config


def test_gateway_traffic_trains_promotes_a_canary_and_rolls_back(tmp_path: Path) -> None:
    base = tiny_base_model()
    upstream = Upstream()
    fake = FakeOpenAIServer(base_model=str(base), responder=upstream).start()
    config = write_config(tmp_path, base, fake.url)
    init = cli(config, "init")
    if init.returncode:
        fake.stop()
        pytest.fail(init.stderr)
    settings = load_settings(config)
    rig = start_rig(settings, Store(settings.database_url), fake)
    try:
        check_the_loop(rig, config, upstream)
    finally:
        rig.stop()


def check_the_loop(rig: Rig, config: Path, upstream: Upstream) -> None:
    settings, store = rig.settings, rig.store

    # 0. The product's traffic on the base model, and its outcomes: the joined records are the training data.
    calls = demo_calls(700, 7, upstream)
    product_traffic(rig, calls)
    with store.session() as s:
        rows = s.exec(select(ExecutionRecordRow)).all()
        statuses = set(s.exec(select(GatewayCall.status)).all())
    assert len(rows) == len(calls) > 600 and statuses == {CallStatus.LABELLED}
    assert all(r.domain in DOMAINS for r in rows)
    records = [json.loads(r.payload) for r in rows]
    assert all(r["model_version"] is None and "gateway" in r["tags"] for r in records)

    # Process 1: one cycle curates the joined records, decides to fine-tune, and stops at the approval.
    first = cli(config, "run", "--once")
    assert first.returncode == 0, first.stderr
    match = re.search(r"waiting for approval (apv-[0-9a-f]+)", first.stdout)
    assert match, first.stdout
    approval_id = match.group(1)
    status = json.loads(cli(config, "status", "--json").stdout)
    assert [a["id"] for a in status["pending_approvals"]] == [approval_id]
    assert status["runs"] == []  # nothing rented before the approval
    successes = sum(r["success"] for r in records)
    with store.session() as s:
        approval = s.get(Approval, approval_id)
        assert approval is not None
        decision = s.get(Decision, approval.decision_id)
    assert decision is not None and decision.action == DecisionAction.FINETUNE
    assert 100 <= decision.figures["new_examples"] <= successes  # curation drops duplicates
    assert set(decision.figures["per_domain_new"]) == set(DOMAINS)

    # Process 2: a human approves through the CLI.
    approved = cli(config, "approve", approval_id, "--by", "alice")
    assert approved.returncode == 0 and "human:alice" in approved.stdout

    # Process 3 (a restart): the waiting thread resumes, trains, evaluates and promotes with a canary.
    second = cli(config, "run", "--once")
    assert second.returncode == 0, second.stderr
    assert re.search(r"PROMOTED v1 .*canary: 40% of sessions first", second.stdout), second.stdout
    check_training_and_gate(config, store, approval_id)

    # The gateway routes the canary's sessions to the adapter within seconds, with no restart.
    product = openai.OpenAI(base_url=rig.url, api_key="product-key", max_retries=0)
    rig.upstream.load_adapter("v1")
    sessions = [f"user-{i}" for i in range(100, 200)]
    expected = {s: "v1" if bucket(s) < SHARE else "base" for s in sessions}
    on_canary = [s for s in sessions if expected[s] == "v1"]
    on_base = [s for s in sessions if expected[s] == "base"]
    assert 30 <= len(on_canary) <= 50  # the hash's share of these 100 sessions, and enough for the monitor
    assert wait_until_served(product, "v1", on_canary[0]) < 5.0
    assert served_version(product, on_base[0]) == "base"

    # Each session gets the version of its hash bucket, streamed (async), and again non-streamed (20 of them).
    upstream.degraded = "v1"
    later = demo_calls(130, 8, upstream, failure_rate=0.0)[:100]
    served = asyncio.run(streamed_traffic(rig.url, later, 100))
    assert {f"user-{100 + i}": v for i, (_, v, _) in enumerate(served)} == expected
    upstream_models = [body["model"] for _, body, _ in rig.upstream.requests[-100:]]
    assert upstream_models.count("v1") == len(on_canary)  # the adapter's name on the upstream (vLLM LoRA)
    assert set(upstream_models) == {"v1", str(settings.training.base_model)}
    again = on_canary[:10] + on_base[:10]
    assert {s: served_version(product, s) for s in again} == {s: expected[s] for s in again}

    # v1 does worse live: the product grades the canary's answers and reports through feedback (the base's calls
    # here stay unlabelled; its outcomes above are the baseline).
    canary_calls = [(rid, text, r) for (rid, version, text), r in zip(served, later, strict=True) if version == "v1"]
    with PilotClient(rig.root, token=rig.feedback_token) as pilot:
        for rid, text, record in canary_calls:
            pilot.feedback(request_id=rid, success=text == record["output"], domain=record["domain"])
    rig.drain()
    wrong = sum(text != record["output"] for _, text, record in canary_calls)
    assert wrong >= 0.6 * len(canary_calls)

    # Process 4: the next cycle's monitor rolls v1 back on those joined outcomes; the gateway follows without a
    # restart and sends every session, the canary's too, to the base model.
    third = cli(config, "run", "--once")
    assert third.returncode == 0, third.stderr
    assert "monitor: rolled back v1 -> base" in third.stdout, third.stdout
    with store.session() as s:
        assert registry.alias_target(s, registry.CHAMPION) is None and canary.get_rollout(s) is None
        rollback = s.exec(select(Decision).where(Decision.action == DecisionAction.ROLLBACK)).one()
        version = s.get(ModelVersion, "v1")
    assert version is not None and version.status == ModelStatus.ROLLED_BACK
    assert rollback.figures["champion"]["total"] == len(on_canary)
    assert rollback.figures["baseline"]["total"] == len(calls)
    assert wait_until_served(product, "base", on_canary[0]) < 5.0
    assert {served_version(product, s) for s in on_canary} == {"base"}
    assert rig.upstream.requests[-1][1]["model"] == str(settings.training.base_model)
    product.close()


def check_training_and_gate(config: Path, store: Store, approval_id: str) -> None:
    """The approval, the run, the adapter, the evaluation and the gate, as the store and the files record them."""
    settings = load_settings(config)
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
    assert all(g["messages"][0]["content"].lower().startswith("user: rename the") for g in golden)  # the calls
    candidate_file = settings.work_dir / "eval" / version.id / "candidate.jsonl"
    predictions = {
        item["id"]: item["prediction"] for item in map(json.loads, candidate_file.read_text().splitlines()) if item
    }
    assert len(predictions) == len(golden) == report["n_items"] >= 20
    rescored = sum(score_normalised(predictions[g["id"]], g["messages"][-1]["content"]) for g in golden) / len(golden)
    assert rescored == pytest.approx(report["candidate_score"])
    assert report["champion_label"].startswith("base")

    # Promoted, with the reason, and one event per transition.
    assert version.status == ModelStatus.PROMOTED and report["verdict"] == "promote" and report["reason"]
    assert [(e.old, e.new) for e in run_events if e.new] == [
        (None, "pending"),
        ("pending", "provisioning"),
        ("provisioning", "running"),
        ("running", "collecting"),
        ("collecting", "succeeded"),
    ]
    assert [e.new for e in version_events if e.new] == ["candidate", "promoted", f"{SHARE:.0%}"]  # the canary starts
    assert [(e.old, e.new, e.actor) for e in approval_events] == [
        (None, "pending", "supervisor"),
        ("pending", "approved", "human:alice"),
    ]
    models = json.loads(cli(config, "models", "--json").stdout)
    assert models["aliases"]["champion"] == version.id
    pointer = json.loads((Path(settings.data_dir) / "serving" / "current.json").read_text())
    assert pointer["adapter"] == version.id
