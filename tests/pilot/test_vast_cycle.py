"""The issue's Done-when: a full supervisor cycle on the local Vast server and moto S3, with the real job.

The job really trains the tiny model on CPU inside the fake instance (through the onstart bootstrap, presigned URLs
and jobs.remote_entry); the adapter lands in S3 with its hash; the candidate is evaluated; the instance is destroyed
and verified gone; the ledger matches the server's charges. And interruptible mode: outbid mid-run, the run resumes
from the last complete uploaded checkpoint on another host.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlmodel import select
from test_remote_rig import AWS, Rig, make_rig, moto_endpoint

from pilot.data.ingest import ingest_lines
from pilot.runs.attempts import attempts_of
from pilot.runs.driver import launch_run, watch_run
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import ModelVersion, TrainingRun
from pilot.store.status import RunStatus
from pilot.supervisor.cycle import run_cycle
from subagents.data.samples import generate_demo_records
from tests.helpers.tiny_model import tiny_base_model

pytestmark = [pytest.mark.train, pytest.mark.slow]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server, url = moto_endpoint()
    yield url
    server.stop()


@pytest.fixture
def rig_factory(
    tmp_path: Path, make_settings: Callable[..., Settings], endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Rig]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS["aws_secret_access_key"])
    store = Store(f"sqlite:///{tmp_path / 'pilot.db'}")
    store.migrate()
    made: list[Rig] = []

    def factory(**options: object) -> Rig:
        base = str(tiny_base_model())
        built, _ = make_rig(tmp_path, store, make_settings, endpoint, stub=False, base_model=base, **options)  # type: ignore[arg-type]
        made.append(built)
        return built

    yield factory
    for built in made:
        for instance_id in built.server.live_instances():
            built.ctx.gpu.terminate(str(instance_id))
        built.server.stop()
    store.close()


def test_full_cycle_trains_on_the_rented_host_and_evaluates(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    settings = rig.ctx.settings.model_copy(
        update={
            "policy": rig.ctx.settings.policy.model_copy(
                update={"min_new_examples": 20, "approval_required_above_usd": 1000.0, "cooldown_minutes": 0}
            ),
            "evaluation": rig.ctx.settings.evaluation.model_copy(update={"min_items": 5, "max_new_tokens": 8}),
        }
    )
    rig.ctx.settings = settings
    ingest_lines(rig.store, generate_demo_records(240, seed=5), source="test")
    results = run_cycle(rig.ctx, ingest=False)
    log = "\n".join(line for r in results for line in r.log)
    with rig.store.session() as session:
        run = session.exec(select(TrainingRun)).one()
        version = session.exec(select(ModelVersion).where(ModelVersion.run_id == run.id)).one()
    assert run.status == RunStatus.SUCCEEDED, f"{run.status_message}\n{log}"
    # Real training happened on the host: the job's own metrics came back through the result upload.
    assert run.metrics["steps"] == settings.training.max_steps and run.metrics["train_tokens"] > 0
    # The adapter is in S3 under the run, its bytes match the recorded sha256 (and the object's metadata).
    weights = version.adapter_files["adapter_model.safetensors"]
    rig.ctx.artifacts.get(weights["key"], rig.tmp / "check.safetensors", sha256=version.adapter_sha256)
    assert weights["uri"].startswith("s3://")
    # The candidate was evaluated (whatever the gate said).
    assert version.eval_report, log
    assert "evaluate:" in log
    # Destroyed and verified gone; the ledger is what the server billed.
    assert rig.server.live_instances() == []
    rig.settle_worker()
    rig.settle_worker()
    actual, reserved = rig.ledger(run.id)
    assert reserved == 0 and actual == pytest.approx(rig.charged(), abs=1e-9) and actual > 0


def test_outbid_resumes_from_the_last_complete_checkpoint_on_another_host(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(remote={"interruptible": True, "save_steps": 2}, training={"max_steps": 30})
    run = launch_run(rig.ctx, rig.new_run(), rig.snapshot)
    first = str(run.instance_id)
    assert rig.server.create_bodies[0]["price"] is not None  # a bid, not on-demand
    marker = _wait_for_checkpoint(rig, run.id)
    rig.server.outbid(first)
    run = watch_run(rig.ctx, run.id, poll_s=0.05)
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    with rig.store.session() as session:
        attempts = attempts_of(session, run.id)
    assert len(attempts) == 2 and attempts[0].host != attempts[1].host
    assert "outbid" in attempts[0].end_reason
    resumed = attempts[1].resume_step
    assert resumed is not None and resumed >= marker["step"]
    assert run.metrics["resumed_from_step"] == resumed  # the job itself says it resumed there
    assert run.metrics["steps"] == 30
    assert rig.server.live_instances() == []
    rig.settle_worker()
    actual, reserved = rig.ledger(run.id)
    assert reserved == 0 and actual == pytest.approx(rig.charged(), abs=1e-9)


def _wait_for_checkpoint(rig: Rig, run_id: str, timeout_s: float = 120.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for slot in ("a", "b"):
            key = f"runs/{run_id}/attempt-1/checkpoint-{slot}/checkpoint.json"
            if rig.ctx.artifacts.exists(key):
                dest = rig.tmp / "marker.json"
                rig.ctx.artifacts.get(key, dest)
                return dict(json.loads(dest.read_text()))
        time.sleep(0.05)
    raise AssertionError("no checkpoint was uploaded")
