"""``kill -9`` at every labelled point of a run on a rented host (local Vast server + moto S3, the real ``vastai``
client, the stub job), then a restart: after the start-up reconcile there is no orphan and no duplicate rental,
no record is lost, the ledger equals what the provider billed (±1%), and the run has either finished or ended
with a reason.

The process that crashes is tests/helpers/crash_harness.py, which drives the run as the daemon's worker does; it
exits with 137 at the point (``LEARNING_PILOT_CRASH_AT``). The restart is the same harness without the variable,
once the dead process's lease has expired (``scheduler.lease_ttl_s`` = 1 s here). Every point on SQLite; one point
per phase on PostgreSQL (``PG_POINTS``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr
from sqlalchemy import func
from sqlmodel import select
from test_remote_rig import Rig, make_rig

from pilot.runs.attempts import attempts_of
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.leases import holder, run_lease
from pilot.store.models import ExecutionRecordRow, SpendEntry, TrainingRun
from pilot.store.status import RunStatus

REPO = Path(__file__).resolve().parents[2]

POINTS = [
    "lease_taken",
    "step_start",
    "attempt_recorded",
    "rent_authorized",
    "provider_accepted",
    "attempt_launched",
    "launch_recorded",
    "loading",
    "running",
    "attempt_running",
    "heartbeat_recorded",
    "before_destroy",
    "after_destroy",
    "exited_destroyed",
    "collecting",
    "adapter_collected",
    "settling",
    "candidate_registered",
]
# With the first host failing to start its container (OCI), the points of a breach and of the relaunch.
BREACH_POINTS = ["breach_destroyed", "before_destroy", "attempt_recorded"]


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# On PostgreSQL, one point per phase of a run (the store's part is the same code; the full table runs on SQLite).
PG_POINTS = ["rent_authorized", "provider_accepted", "running", "before_destroy", "collecting", "settling"]


@pytest.fixture(params=["sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rig(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    endpoint: str,
    aws_env: None,
    store_kind: str,
    request: pytest.FixtureRequest,
) -> Iterator[Rig]:
    url = f"sqlite:///{tmp_path / 'pilot.db'}" if store_kind == "sqlite" else str(request.getfixturevalue("pg_url"))
    store = Store(url)
    store.migrate()
    built, _ = make_rig(tmp_path, store, make_settings, endpoint, stub_env={"STUB_STEP_S": "1.5"})
    settings = built.ctx.settings
    built.ctx.settings = settings.model_copy(
        update={
            "store": settings.store.model_copy(update={"url": store.url}),
            "scheduler": settings.scheduler.model_copy(update={"lease_ttl_s": 1.0}),
            # The harness polls with the provider's production pacing (show: one call per 2 s) on real time.
            "gpu": settings.gpu.model_copy(
                update={
                    "teardown_deadline_s": 20.0,
                    "remote": settings.gpu.remote.model_copy(update={"loading_timeout_s": 30.0}),
                }
            ),
            "training": settings.training.model_copy(update={"heartbeat_timeout_s": 30.0}),
        }
    )
    yield built
    for instance_id in built.server.live_instances():
        built.ctx.gpu.terminate(str(instance_id))
    built.server.stop()
    store.close()


def _harness(rig: Rig, run_id: str, *, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    settings_file = rig.tmp / "harness-settings.json"
    settings_file.write_text(json.dumps(_plain(rig.ctx.settings)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("LEARNING_PILOT_CRASH_AT", None)
    if crash_at is not None:
        env["LEARNING_PILOT_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "tests.helpers.crash_harness", str(settings_file), run_id],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _crash_and_restart(rig: Rig, point: str) -> TrainingRun:
    with rig.store.session() as s:
        records = s.exec(select(func.count()).select_from(ExecutionRecordRow)).one()
    run = rig.new_run()
    crashed = _harness(rig, run.id, crash_at=point)
    assert crashed.returncode == 137, f"{point} not reached: rc={crashed.returncode}\n{crashed.stderr[-3000:]}"
    deadline = time.monotonic() + 30
    with rig.store.session() as s:  # the dead process's lease expires (1 s without renewal)
        while holder(s, run_lease(run.id)) is not None:
            assert time.monotonic() < deadline, "the dead process's lease never expired"
            time.sleep(0.2)
            s.expire_all()
    restarted = _harness(rig, run.id, crash_at=None)
    assert restarted.returncode == 0, restarted.stderr[-3000:]

    with rig.store.session() as s:
        final = s.get(TrainingRun, run.id, populate_existing=True)
        attempts = attempts_of(s, run.id)
        spend = s.exec(select(SpendEntry).where(SpendEntry.category == "gpu")).all()
        assert s.exec(select(func.count()).select_from(ExecutionRecordRow)).one() == records  # no record lost
    assert final is not None and RunStatus(final.status).is_terminal
    assert final.status == RunStatus.SUCCEEDED or final.status_message  # finished, or ended with a reason
    assert rig.server.live_instances() == []  # no orphan
    created = len(rig.server.create_bodies)
    rented = {a.instance_id for a in attempts if a.instance_id}
    assert created == len(rented)  # every create is one attempt's instance: no duplicate rental
    assert not [e for e in spend if e.kind == "reservation" and e.active]
    rig.settle_worker()  # what was settled at the elapsed-time estimate becomes the provider's figure
    with rig.store.session() as s:
        spend = s.exec(select(SpendEntry).where(SpendEntry.category == "gpu")).all()
    actual = sum(e.amount_usd for e in spend if e.kind == "actual")
    assert actual == pytest.approx(rig.charged(), rel=0.01, abs=2e-6)
    return final


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_crash_at(rig: Rig, point: str) -> None:
    final = _crash_and_restart(rig, point)
    assert final.status == RunStatus.SUCCEEDED, final.status_message
    assert len(rig.server.create_bodies) == 1  # the restart continued the one host (or rented the first): never two


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("store_kind", ["postgres"])
@pytest.mark.parametrize("point", PG_POINTS)
def test_crash_at_on_postgres(rig: Rig, point: str) -> None:
    assert not rig.store.is_sqlite
    final = _crash_and_restart(rig, point)
    assert final.status == RunStatus.SUCCEEDED, final.status_message
    assert len(rig.server.create_bodies) == 1


@pytest.mark.slow
@pytest.mark.parametrize("point", BREACH_POINTS)
def test_crash_during_a_retry_on_another_host(rig: Rig, point: str) -> None:
    rig.server.oci_fail_next(1)
    final = _crash_and_restart(rig, point)
    with rig.store.session() as s:
        assert len(attempts_of(s, final.id)) >= 1
