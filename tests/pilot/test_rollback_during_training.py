"""Live quality does not wait for a run: the daemon's monitoring job rolls a regressed champion back while a run
trains on a rented host (local Vast server + moto S3), and the run is undisturbed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_remote_rig import Rig, make_rig

from pilot.data.ingest import ingest_lines
from pilot.service.daemon import Jobs, build_scheduler
from pilot.service.leader import LeaderElection
from pilot.service.metrics import PilotMetrics
from pilot.serving import registry
from pilot.serving.deploy import pointer_path
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import TrainingRun
from pilot.store.status import RunStatus
from tests.pilot.test_efficacy_rollback import add_version, live_records, promote


@pytest.fixture
def rig(
    store_url: str, make_settings: Callable[..., Settings], endpoint: str, aws_env: None, tmp_path: Path
) -> Iterator[Rig]:
    store = Store(store_url)  # SQLite, and PostgreSQL (conftest's store_url)
    store.migrate()
    built, _ = make_rig(
        tmp_path, store, make_settings, endpoint, stub_env={"STUB_STEP_S": "1.0"}, training={"max_steps": 6}
    )
    built.ctx.settings = built.ctx.settings.model_copy(
        update={
            "monitoring": built.ctx.settings.monitoring.model_copy(
                update={"min_records": 30, "alpha": 0.01, "min_drop": 0.05, "window_hours": 6, "interval_s": 60.0}
            ),
            "knowledge": built.ctx.settings.knowledge.model_copy(update={"enabled": False}),
        }
    )
    yield built
    for instance_id in built.server.live_instances():
        built.ctx.gpu.terminate(str(instance_id))
    built.server.stop()
    store.close()


def test_a_regression_is_rolled_back_while_a_run_trains(rig: Rig, tmp_path: Path) -> None:
    ctx, store = rig.ctx, rig.store
    add_version(ctx, "v1", tmp_path)
    add_version(ctx, "v2", tmp_path)
    ingest_lines(store, live_records(80, seed=2, failure_rate=0.15, version="v1", minutes_ago=300), source="t")
    promote(ctx, "v1")
    promote(ctx, "v2")

    run = rig.new_run()
    done: dict[str, TrainingRun] = {}
    trainer = threading.Thread(target=lambda: done.setdefault("run", rig.launch_and_watch(run)), daemon=True)
    trainer.start()
    deadline = time.monotonic() + 60
    while True:  # the run is on its host and training
        with store.session() as s:
            live = s.get(TrainingRun, run.id, populate_existing=True)
        assert live is not None and time.monotonic() < deadline, "the run never started"
        if live.status == RunStatus.RUNNING:
            break
        time.sleep(0.1)

    # The new champion fails live while the run trains; the daemon's monitoring job (its own schedule) acts.
    ingest_lines(store, live_records(40, seed=3, failure_rate=0.8, version="v2", minutes_ago=-1), source="t")
    leader = LeaderElection(store)
    jobs = Jobs(ctx, PilotMetrics(store, ctx.settings), leader)
    scheduler = build_scheduler(ctx, jobs)
    monitoring = scheduler.get_job("monitoring")
    assert monitoring.trigger.interval.total_seconds() == ctx.settings.monitoring.interval_s  # not tied to a cycle
    started = time.monotonic()
    try:
        jobs.monitoring()
    finally:
        leader.release()  # on PostgreSQL: the leader lock's own connection
    took = time.monotonic() - started

    with store.session() as s:
        assert registry.alias_target(s, registry.CHAMPION) == "v1"
        during = s.get(TrainingRun, run.id, populate_existing=True)
    assert json.loads(pointer_path(ctx.settings).read_text())["adapter"] == "v1"
    assert took < ctx.settings.monitoring.interval_s  # one interval: 60 s here, 300 by default (9 s seen loaded)
    assert during is not None and during.status == RunStatus.RUNNING  # the run undisturbed

    trainer.join(timeout=120)
    assert done["run"].status == RunStatus.SUCCEEDED, done["run"].status_message
    assert rig.server.live_instances() == []
