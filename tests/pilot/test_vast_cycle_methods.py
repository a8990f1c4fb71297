"""Each training method end to end through the local Vast server and moto S3, with the real job on CPU.

A supervisor cycle on records whose snapshot holds preference data (and GRPO prompts with tests): the method is
chosen from the data, the run is rented (interruptible), trains, uploads a complete checkpoint, is outbid, resumes
from that checkpoint on another host and finishes; the adapter comes back to S3 with its hash, the candidate is
evaluated and gated, the instances are destroyed and the ledger matches the server's charges.

Parametrized over the methods; ``METHOD_SETTINGS`` holds what makes the chooser pick each one, so adding
``"grpo"`` to the parametrization is the only change once jobs/grpo.py is on main.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from test_remote_rig import Rig, make_rig
from test_vast_cycle import _wait_for_checkpoint

from pilot.data.ingest import ingest_lines
from pilot.runs.attempts import attempts_of
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import DatasetSnapshot, ModelVersion, TrainingRun
from pilot.store.status import RunStatus
from pilot.supervisor.cycle import run_cycle
from subagents.evaluation import _VERDICTS
from tests.helpers.tiny_model import tiny_base_model
from tests.subagents.data.data_factories import attempt_records, code_attempt_records

pytestmark = [pytest.mark.train, pytest.mark.slow]

# What makes choose_method pick each method on the records below (reinforcement.* settings).
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "dpo": {"min_pairs": 10, "allow_rl": False},
    "kto": {"min_pairs": 10_000, "min_undesirable": 10, "allow_rl": False},
    "grpo": {"min_rl_prompts": 10, "min_rl_failure_share": 0.1, "grpo_max_new_tokens": 16},
}


@pytest.fixture
def rig(tmp_path: Path, make_settings: Callable[..., Settings], endpoint: str, aws_env: None) -> Iterator[Rig]:
    store = Store(f"sqlite:///{tmp_path / 'pilot.db'}")
    store.migrate()
    built, _ = make_rig(
        tmp_path,
        store,
        make_settings,
        endpoint,
        stub=False,
        base_model=str(tiny_base_model()),
        remote={"interruptible": True, "save_steps": 2},
        training={"max_steps": 16},
    )
    yield built
    for instance_id in built.server.live_instances():
        built.ctx.gpu.terminate(str(instance_id))
    built.server.stop()
    store.close()


def outbid_after_a_checkpoint(rig: Rig, done: dict[str, Any]) -> None:
    """In the background, as the provider would: once the run's first host uploaded a complete checkpoint,
    outbid that host (the cycle is driving the run meanwhile)."""
    try:
        deadline = time.monotonic() + 300
        run = None
        while run is None or run.instance_id is None:
            assert time.monotonic() < deadline, "no run was launched"
            time.sleep(0.05)
            with rig.store.session() as session:
                run = session.exec(select(TrainingRun)).first()
        done["marker"] = _wait_for_checkpoint(rig, run.id, timeout_s=300)
        rig.server.outbid(str(run.instance_id))
        done["outbid"] = str(run.instance_id)
    except BaseException as exc:  # reported by the test, not lost in the thread
        done["error"] = exc


@pytest.mark.parametrize("method", ["dpo", "kto", "grpo"])
def test_method_trains_resumes_after_an_outbid_and_is_gated(method: str, rig: Rig) -> None:
    s = rig.ctx.settings
    rig.ctx.settings = s.model_copy(
        update={
            "policy": s.policy.model_copy(
                update={"min_new_examples": 20, "approval_required_above_usd": 1000.0, "cooldown_minutes": 0}
            ),
            "evaluation": s.evaluation.model_copy(update={"min_items": 5, "max_new_tokens": 8}),
            "reinforcement": s.reinforcement.model_copy(update={"choose_method": True, **METHOD_SETTINGS[method]}),
        }
    )
    records = [*attempt_records(60), *code_attempt_records(30)]
    ingest_lines(rig.store, [r.model_dump_json() for r in records], source="test")
    done: dict[str, Any] = {}
    watcher = threading.Thread(target=outbid_after_a_checkpoint, args=(rig, done), daemon=True)
    watcher.start()
    results = run_cycle(rig.ctx, ingest=False)
    watcher.join(timeout=5)
    log = "\n".join(line for r in results for line in r.log)
    assert "error" not in done, f"{done.get('error')!r}\n{log}"
    with rig.store.session() as session:
        run = session.exec(select(TrainingRun)).one()
        snap = session.get(DatasetSnapshot, run.snapshot_id)
        version = session.exec(select(ModelVersion).where(ModelVersion.run_id == run.id)).one()
        attempts = attempts_of(session, run.id)
    assert snap is not None and {"kto", "dpo", "grpo"} <= set(snap.manifest["preference_files"])
    assert run.config["plan"]["method"] == method, log
    assert run.status == RunStatus.SUCCEEDED, f"{run.status_message}\n{log}"
    # Outbid after a complete checkpoint; resumed from it on another host; finished every step.
    assert done["outbid"] == attempts[0].instance_id and "outbid" in (attempts[0].end_reason or "")
    assert len(attempts) == 2 and attempts[0].host != attempts[1].host
    resumed = attempts[1].resume_step
    assert resumed is not None and resumed >= done["marker"]["step"]
    assert run.metrics["resumed_from_step"] == resumed and run.metrics["steps"] == 16
    assert run.metrics["method"] == method  # the job on the host says which method it trained
    # The adapter came back with its hash; the candidate was evaluated and gated.
    weights = version.adapter_files["adapter_model.safetensors"]
    rig.ctx.artifacts.get(weights["key"], rig.tmp / "check.safetensors", sha256=version.adapter_sha256)
    assert version.eval_report.get("verdict") in _VERDICTS and version.eval_report.get("reason"), log
    assert "evaluate:" in log
    # Destroyed and verified gone; the ledger is what the server billed.
    assert rig.server.live_instances() == []
    rig.settle_worker()
    rig.settle_worker()
    actual, reserved = rig.ledger(run.id)
    assert reserved == 0 and actual == pytest.approx(rig.charged(), abs=1e-9) and actual > 0
