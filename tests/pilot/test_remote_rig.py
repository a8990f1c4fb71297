"""Shared rig for the remote-run tests (no tests here): the local Vast server (the real ``vastai`` client),
moto S3 and a ``PilotContext`` pointing at both. Fault tests use a stub job (``STUB_JOB``) that behaves like
jobs.finetune_lora at the file level (heartbeat.json, adapter/, metrics.json) in a fraction of a second."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import textwrap
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer
from sqlmodel import select

from pilot.context import HostModules, PilotContext, build_context
from pilot.runs.attempts import resettle
from pilot.runs.driver import launch_run, watch_run
from pilot.runs.lifecycle import create_run, training_params
from pilot.settings import Settings
from pilot.spend.costs import reservation_for
from pilot.store import Store
from pilot.store.models import DatasetSnapshot, Decision, SpendEntry, TrainingRun, utcnow
from pilot.store.status import ApprovalKind
from pilot.supervisor import approvals
from subagents.training import count_tokens, plan_training, requirements_for
from tests.helpers.tiny_model import demo_task_examples
from tools.artifacts.s3 import S3ArtifactStore
from tools.gpu.vast import VastGpuProvider
from tools.gpu.vast_server import ShiftableClock, VastServer, load_offer_book

FIXTURE = Path(__file__).parent.parent / "fixtures" / "vast_offers.json"
VAST_KEY = "vast-secret-key-0123456789"
AWS = {"aws_access_key_id": "AKIATESTKEYID", "aws_secret_access_key": "s3-secret-access-key-abcdef"}

STUB_JOB = textwrap.dedent(
    '''
    """A stand-in for jobs.finetune_lora: same files, no torch. STUB_MODE: ok | fail | pickle | freeze | slow."""
    import json, os, signal, sys, time
    from pathlib import Path

    cfg = json.loads(Path(sys.argv[sys.argv.index("--config") + 1]).read_text())
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    mode = os.environ.get("STUB_MODE", "ok")
    steps = int(os.environ.get("STUB_STEPS", "3"))
    for step in range(steps):
        (out / "heartbeat.json").write_text(json.dumps({"step": step, "max_steps": steps, "time": time.time()}))
        time.sleep(float(os.environ.get("STUB_STEP_S", "0.05")))
        if mode == "freeze":
            os.kill(os.getppid(), signal.SIGSTOP)  # a wedged host: the entry point stops sending heartbeats
            time.sleep(120)
    if mode == "fail":
        print("stub: boom", flush=True)
        sys.exit(3)
    adapter = out / "adapter"
    adapter.mkdir(exist_ok=True)
    if mode == "pickle":
        (adapter / "adapter_model.safetensors").write_bytes(b"\\x80\\x04\\x95" + b"cos\\nsystem\\n" * 4)
    else:
        header = json.dumps({"__metadata__": {"stub": "1"}}).encode()
        (adapter / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    (out / "metrics.json").write_text(json.dumps({"steps": steps, "train_loss": 1.0}))
    '''
)


def moto_endpoint() -> tuple[ThreadedMotoServer, str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


@dataclass
class Rig:
    server: VastServer
    ctx: PilotContext
    store: Store
    snapshot: DatasetSnapshot
    tmp: Path
    sleeps: list[float] = field(default_factory=list)

    def new_run(self, *, estimate_usd: float | None = None) -> TrainingRun:
        """A run as the graph creates it, approved up to its reservation. ``estimate_usd`` prices it higher (a
        larger reservation and approval), for tests that need room to move to a pricier host."""
        with self.store.session(write=True) as session:
            decision = Decision(id=f"dec-{uuid.uuid4().hex[:8]}", thread_id="t", action="finetune", reason="test")
            session.add(decision)
        params = training_params(self.ctx)
        offers = self.ctx.gpu.search_offers(requirements_for(params, max_dph=self.ctx.settings.budget.max_dph))
        examples, tokens = count_tokens(Path(self.snapshot.path) / "train.jsonl")
        plan = plan_training(params, offers, train_examples=examples, train_tokens=tokens, remote=True)
        assert plan is not None
        if estimate_usd is not None:
            plan = dataclasses.replace(plan, estimated_cost_usd=estimate_usd)
        # As the graph does: a human approved what the run may spend at most (its reservation).
        ceiling = reservation_for(plan.estimated_cost_usd, self.ctx.settings.budget)
        with self.store.session(write=True) as session:
            approval = approvals.request_approval(
                session,
                decision=decision,
                kind=ApprovalKind.TRAINING,
                summary={"what": "test run"},
                cost_ceiling_usd=ceiling,
                expiry_minutes=60,
            )
            approvals.answer(session, approval.id, approve=True, actor="human:test")
        return create_run(self.ctx, decision_id=decision.id, approval_id=approval.id, snapshot=self.snapshot, plan=plan)

    def launch_and_watch(self, run: TrainingRun | None = None) -> TrainingRun:
        run = run or self.new_run()
        run = launch_run(self.ctx, run, self.snapshot)
        return watch_run(self.ctx, run.id, poll_s=0.05)

    def ledger(self, run_id: str) -> tuple[float, float]:
        """(actual spend, active reservations) of a run."""
        with self.store.session() as session:
            rows = session.exec(select(SpendEntry).where(SpendEntry.run_id == run_id)).all()
        actual = sum(r.amount_usd for r in rows if r.kind == "actual")
        reserved = sum(r.amount_usd for r in rows if r.kind == "reservation" and r.active)
        return actual, reserved

    def settle_worker(self) -> None:
        """The settle worker's pass once the re-reads are due: what was settled at the elapsed-time estimate (the
        estimate counts loading time the provider does not bill) becomes the provider's figure, unchanged on two
        reads (``pilot.spend.settlement``)."""
        later = utcnow() + timedelta(seconds=self.ctx.settings.budget.settle_recheck_s + 1)
        resettle(self.ctx, now=later)

    def charged(self) -> float:
        """What the Vast server billed in all (every instance ever created on it)."""
        return self.server.initial_credit - self.server.credit()


def make_rig(
    tmp: Path,
    store: Store,
    make_settings: Callable[..., Settings],
    endpoint: str,
    *,
    remote: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    server_options: dict[str, Any] | None = None,
    stub: bool = True,
    stub_env: dict[str, str] | None = None,
    base_model: str | None = None,
) -> tuple[Rig, VastServer]:
    bucket = f"lp-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **AWS).create_bucket(Bucket=bucket)
    options: dict[str, Any] = {"loading_s": 0.2, "workdir": tmp / "vast", **(server_options or {})}
    # The server enforces the contract's rate limits; its clock and the provider's waits are shared, so the
    # provider's production pacing and backoff move time on without the test sleeping through them.
    clock = ShiftableClock()
    server = VastServer(load_offer_book(FIXTURE), api_key=VAST_KEY, clock=clock, **options).start()
    stub_dir = tmp / "stub"
    stub_dir.mkdir(exist_ok=True)
    (stub_dir / "stub_job.py").write_text(STUB_JOB)
    remote_settings: dict[str, Any] = {
        "python": sys.executable,
        "loading_timeout_s": 3.0,
        "heartbeat_every_s": 0.2,
        "save_steps": 2,
        "max_attempts": 3,
        "job_env": {"HF_HUB_OFFLINE": "1"},
    }
    if stub:
        remote_settings.update(job_env={"PYTHONPATH": str(stub_dir), **(stub_env or {})})
    remote_settings.update(remote or {})
    training_settings: dict[str, Any] = {
        "base_model": base_model or "tiny-test-model",
        "base_model_params_b": 0.001,
        "lora_r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "seq_len": 64,
        "batch_size": 8,
        "max_steps": 4,
        "poll_interval_s": 0.05,
        "heartbeat_timeout_s": 2.0,
        "tokens_per_second_estimate": 20000,
    }
    training_settings.update(training or {})
    settings = make_settings(
        gpu={"provider": "vast", "vast": {"api_url": server.url, "api_key": VAST_KEY}, "remote": remote_settings},
        artifacts={"kind": "s3", "s3_bucket": bucket, "s3_endpoint_url": endpoint, "s3_region": "us-east-1"},
        training=training_settings,
    )
    ctx = build_context(settings, store=store)
    if stub:  # the host runs the stub instead of the real fine-tune (injected, not a setting)
        ctx.host_modules = HostModules(train="stub_job", generate=ctx.host_modules.generate)
    sleeps = clock.slept
    ctx.gpu = VastGpuProvider(
        VAST_KEY, api_url=server.url, request_timeout_s=5.0, sleep=clock.sleep, clock=clock, rng=random.Random(3)
    )
    ctx.artifacts = S3ArtifactStore(bucket, endpoint_url=endpoint, region="us-east-1", path_style=True, **AWS)
    snap_dir = tmp / "snapshot"
    snap_dir.mkdir(exist_ok=True)
    for name, n, seed in (("train", 24, 1), ("eval", 8, 2), ("golden", 8, 3)):
        rows = demo_task_examples(n, seed=seed)
        (snap_dir / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with store.session(write=True) as session:
        snapshot = DatasetSnapshot(
            id=f"snap-{uuid.uuid4().hex[:8]}", content_hash=uuid.uuid4().hex, path=str(snap_dir), train_count=24
        )
        session.add(snapshot)
    with store.session() as session:
        snapshot = session.get(DatasetSnapshot, snapshot.id)
    assert snapshot is not None
    return Rig(server, ctx, store, snapshot, tmp, sleeps), server
