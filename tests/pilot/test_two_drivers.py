"""Two processes on one store (here: two contexts with their own engines and lease owners, on SQLite and on
PostgreSQL) drive the same run through a host loss — ``run --once`` next to the daemon's jobs worker, or two
daemons around a leader change. Exactly one of them advances it: one instance per attempt, one relaunch."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_remote_rig import Rig, make_rig

from pilot.context import build_context
from pilot.runs.attempts import attempts_of
from pilot.runs.driver import watch_run
from pilot.service.workers import advance_runs
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import TrainingRun
from pilot.store.status import RunStatus
from tools.gpu.base import InstanceState


@pytest.fixture
def rig(
    tmp_path: Path, store: Store, make_settings: Callable[..., Settings], endpoint: str, aws_env: None
) -> Iterator[Rig]:
    built, _ = make_rig(tmp_path, store, make_settings, endpoint, stub_env={"STUB_STEP_S": "1.5"})
    yield built
    for instance_id in built.server.live_instances():
        built.ctx.gpu.terminate(str(instance_id))
    built.server.stop()


@pytest.mark.parametrize("first", ["once", "worker"])
def test_once_and_the_daemon_worker_never_double_a_rental(rig: Rig, first: str) -> None:
    """``first``: who takes the run's lease first. "once": ``run --once`` holds it and drives, the worker's passes
    skip the run. "worker": a worker pass holds it for the launch, so ``run --once`` may find it taken and return at
    once (as it did on a loaded CI machine); the worker's later passes, or ``--once``, drive it on. Either way one
    instance per attempt and one relaunch."""
    from pilot.store.leases import run_lease
    from pilot.store.models import Lease

    # The second process: its own engine on the same database, its own lease owner, the same provider.
    other = build_context(rig.ctx.settings, store=Store(rig.store.url))
    other.gpu, other.host_modules = rig.ctx.gpu, rig.ctx.host_modules
    run = rig.new_run()
    results: dict[str, TrainingRun] = {}
    once = threading.Thread(target=lambda: results.setdefault("once", watch_run(rig.ctx, run.id, poll_s=0.05)))
    deadline = time.monotonic() + 120
    if first == "worker":
        advance_runs(other)  # the launch, under the worker's lease
        once.start()
    else:
        once.start()
        while True:  # ``--once`` holds the lease before the worker's first pass
            assert time.monotonic() < deadline and once.is_alive()
            with rig.store.session() as s:
                lease = s.get(Lease, run_lease(run.id), populate_existing=True)
            if lease is not None and lease.owner == rig.ctx.owner:
                break
            time.sleep(0.01)

    worker_steps = 0
    lost_host = False
    current: TrainingRun | None = None
    while True:  # the daemon's jobs worker runs beside it, pass after pass, until the run ends
        assert time.monotonic() < deadline
        advance_runs(other)
        worker_steps += 1
        with rig.store.session() as s:
            current = s.get(TrainingRun, run.id, populate_existing=True)
        assert current is not None
        if RunStatus(current.status).is_terminal and not once.is_alive():
            break
        instance = current.instance_id
        if not lost_host and instance is not None and rig.ctx.gpu.poll(instance).state is InstanceState.RUNNING:
            rig.server.host_offline(instance)  # a host loss while both are watching
            lost_host = True
        time.sleep(0.05)
    once.join()
    other.store.close()

    assert lost_host and worker_steps > 5
    assert current.status == RunStatus.SUCCEEDED, current.status_message
    if first == "once":
        assert results["once"].status == RunStatus.SUCCEEDED  # it drove the run to its end
    with rig.store.session() as s:
        attempts = attempts_of(s, run.id)
    assert len(attempts) == 2  # the first host and exactly one relaunch
    assert len(rig.server.create_bodies) == 2  # one instance per attempt, nothing doubled
    assert len({a.instance_id for a in attempts}) == 2
    assert rig.server.live_instances() == []


def test_a_driver_that_lost_its_lease_stops_and_the_new_one_finishes(rig: Rig) -> None:
    """A leader change mid-run: the first daemon's lease is taken over (its renewals stopped, as when a frozen or
    partitioned process loses leadership); it stops at its next step, the new one drives the run to its end, and a
    host loss after the change is relaunched once, by the new driver only."""
    from pilot.store.leases import run_lease
    from pilot.store.models import Lease

    other = build_context(rig.ctx.settings, store=Store(rig.store.url))
    other.gpu, other.host_modules = rig.ctx.gpu, rig.ctx.host_modules
    run = rig.new_run()
    results: dict[str, TrainingRun] = {}
    first = threading.Thread(target=lambda: results.setdefault("first", watch_run(rig.ctx, run.id, poll_s=0.05)))
    first.start()
    deadline = time.monotonic() + 60
    while True:  # the first driver is renting and watching
        with rig.store.session() as s:
            live = s.get(TrainingRun, run.id, populate_existing=True)
        assert time.monotonic() < deadline
        if live is not None and live.instance_id and rig.ctx.gpu.poll(live.instance_id).state is InstanceState.RUNNING:
            break
        time.sleep(0.05)
    with rig.store.session(write=True) as s:  # the new leader takes the lease over
        lease = s.get(Lease, run_lease(run.id))
        assert lease is not None and lease.owner == rig.ctx.owner
        lease.owner, lease.epoch = other.owner, lease.epoch + 1
    first.join(timeout=30)
    assert not first.is_alive()  # it noticed and stopped
    assert not RunStatus(results["first"].status).is_terminal
    rig.server.host_offline(str(live.instance_id))
    while True:  # the new leader's worker drives it to its end
        assert time.monotonic() < deadline + 120
        advance_runs(other)
        with rig.store.session() as s:
            current = s.get(TrainingRun, run.id, populate_existing=True)
        if current is not None and RunStatus(current.status).is_terminal:
            break
        time.sleep(0.05)
    other.store.close()
    assert current.status == RunStatus.SUCCEEDED, current.status_message
    with rig.store.session() as s:
        attempts = attempts_of(s, run.id)
    assert len(attempts) == 2 and len(rig.server.create_bodies) == 2
    assert rig.server.live_instances() == []
