"""The kill switch engaged at every labelled point of the loop (pilot/testpoints.py), on the local Vast server and
moto S3 with the contract's client: afterwards no instance is live (asked of the provider), nothing was rented,
promoted, deployed or stepped after the kill's commit, every job is terminal, and the ledger equals what the
provider billed.

Points on a training run (the stub job on the rented host): after the reservation, after the attempt is recorded,
after the provider accepted a create (not yet recorded), after it is recorded, while loading, while running,
between two hosts (the first destroyed after a host loss), after the job exited and its host was destroyed,
while collecting the adapter, during settlement. On an evaluation stage: while it stages its inputs, while it
runs. On serving: after the gate passed (before promoting), after promoting (before deploying), before a canary
step.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select
from test_remote_rig import Rig, make_rig

from pilot import testpoints
from pilot.context import PilotContext
from pilot.data.ingest import ingest_lines
from pilot.runs.attempts import attempts_of
from pilot.runs.teardown import TeardownPolicy
from pilot.service import killswitch
from pilot.service.reconcile import reconcile
from pilot.serving import canary
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.leases import acquire, thread_lease
from pilot.store.models import AliasHistory, EvalStage, Event, SpendEntry, TrainingRun
from pilot.store.status import AttemptStatus, EntityType, RunStatus, StageStatus
from pilot.store.writers import alias_target
from pilot.supervisor import model_nodes
from pilot.supervisor.monitor import watch_live_quality
from tests.pilot.test_efficacy_rollback import add_version, live_records, promote

FAST_TEARDOWN = TeardownPolicy(deadline_s=10.0)


@dataclass
class Kill:
    """Engages the kill switch the first time ``point`` is reached; remembers how many creates the provider had
    seen then (nothing may be rented after it)."""

    ctx: PilotContext
    point: str
    server: Any = None
    creates_at_kill: int | None = None
    report: Any = None
    seen: list[str] = field(default_factory=list)

    def __call__(self, name: str) -> None:
        self.seen.append(name)
        if name != self.point or self.report is not None:
            return
        self.creates_at_kill = len(self.server.create_bodies) if self.server is not None else None
        self.report = killswitch.engage(self.ctx, actor="human:test", reason=f"kill at {name}", policy=FAST_TEARDOWN)


@pytest.fixture(params=["sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sqlite_store(tmp_path: Path, store_kind: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    """The rig's store: SQLite, or PostgreSQL where a test parametrizes ``store_kind``."""
    url = f"sqlite:///{tmp_path / 'pilot.db'}" if store_kind == "sqlite" else str(request.getfixturevalue("pg_url"))
    s = Store(url)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def rig(
    tmp_path: Path,
    sqlite_store: Store,
    make_settings: Callable[..., Settings],
    endpoint: str,
    aws_env: None,
) -> Iterator[Rig]:
    built, _ = make_rig(tmp_path, sqlite_store, make_settings, endpoint, stub_env={"STUB_STEP_S": "0.4"})
    yield built
    for instance_id in built.server.live_instances():
        built.ctx.gpu.terminate(str(instance_id))
    built.server.stop()


@contextlib.contextmanager
def armed(ctx: PilotContext, point: str, server: Any) -> Iterator[Kill]:
    kill = Kill(ctx, point, server)
    remove = testpoints.install(kill)
    try:
        yield kill
    finally:
        remove()


def assert_stopped_and_settled(rig: Rig, kill: Kill) -> None:
    assert kill.report is not None, f"{kill.point} was never reached (seen: {sorted(set(kill.seen))})"
    assert kill.report.paused
    reconcile(rig.ctx, state=None)  # whatever the kill could not finish, the next pass does
    # What was settled at the elapsed-time estimate is re-read from the provider once it is due (the settle worker).
    rig.settle_worker()
    assert rig.server.live_instances() == []  # asked of the provider
    assert len(rig.server.create_bodies) == kill.creates_at_kill  # nothing rented after the kill
    with rig.store.session() as s:
        runs = s.exec(select(TrainingRun)).all()
        attempts = [a for r in runs for a in attempts_of(s, r.id)]
        stages = s.exec(select(EvalStage)).all()
        spend = s.exec(select(SpendEntry).where(SpendEntry.category == "gpu")).all()
    assert all(RunStatus(r.status).is_terminal for r in runs)
    assert all(AttemptStatus(a.status).is_terminal for a in attempts), [(a.id, a.status) for a in attempts]
    assert all(StageStatus(s.status).is_terminal for s in stages)
    assert not [e for e in spend if e.kind == "reservation" and e.active]
    actual = sum(e.amount_usd for e in spend if e.kind == "actual")
    assert actual == pytest.approx(rig.charged(), rel=0.01, abs=1e-6)  # the ledger is what the provider billed


RUN_POINTS = [
    "run_created",
    "attempt_recorded",
    "provider_accepted",
    "launch_recorded",
    "loading",
    "running",
    "exited_destroyed",
    "collecting",
    "settling",
]


@pytest.mark.parametrize("point", RUN_POINTS)
def test_kill_during_a_training_run(rig: Rig, point: str) -> None:
    if point == "loading":
        rig.server.loading_s = 2.0  # long enough for a poll to see the host still loading
    with armed(rig.ctx, point, rig.server) as kill:
        run = rig.launch_and_watch()
    assert_stopped_and_settled(rig, kill)
    assert run.status in (RunStatus.CANCELLED, RunStatus.SUCCEEDED, RunStatus.FAILED)
    if point in ("run_created", "attempt_recorded"):
        assert rig.server.create_bodies == [] and run.status == RunStatus.CANCELLED


@pytest.mark.postgres
@pytest.mark.parametrize("store_kind", ["postgres"])
@pytest.mark.parametrize("point", ["run_created", "provider_accepted", "running", "collecting", "settling"])
def test_kill_during_a_training_run_on_postgres(rig: Rig, point: str) -> None:
    assert not rig.store.is_sqlite
    with armed(rig.ctx, point, rig.server) as kill:
        run = rig.launch_and_watch()
    assert_stopped_and_settled(rig, kill)
    assert run.status in (RunStatus.CANCELLED, RunStatus.SUCCEEDED, RunStatus.FAILED)


def test_kill_between_two_hosts(rig: Rig) -> None:
    """The first host goes offline; the kill lands after it is destroyed and before another is rented."""
    offline: list[str] = []

    def offline_once(name: str) -> None:
        if name == "running" and not offline:
            with rig.store.session() as s:
                live = s.exec(select(TrainingRun)).first()
            assert live is not None and live.instance_id is not None
            offline.append(live.instance_id)
            rig.server.host_offline(live.instance_id)

    remove_offline = testpoints.install(offline_once)
    try:
        with armed(rig.ctx, "breach_destroyed", rig.server) as kill:
            run = rig.launch_and_watch()
    finally:
        remove_offline()
    assert_stopped_and_settled(rig, kill)
    assert run.status == RunStatus.CANCELLED
    with rig.store.session() as s:
        attempts = attempts_of(s, run.id)
    assert len(attempts) == 1  # no second host
    assert run.actual_cost_usd is not None and run.actual_cost_usd > 0  # the first host's bill was settled, not $0


@pytest.mark.parametrize("store_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("point", ["stage_inputs", "stage_running"])
def test_kill_during_an_evaluation_stage(rig: Rig, point: str, tmp_path: Path) -> None:
    from test_remote_eval import STUB_GENERATE  # the host answers with a stub, as in the stage tests

    from pilot.context import HostModules
    from pilot.evaluation.evaluate import EvaluationError
    from pilot.evaluation.remote import generate_remote

    stub = tmp_path / "stub"
    stub.mkdir(exist_ok=True)
    (stub / "stub_generate.py").write_text(STUB_GENERATE)
    rig.ctx.host_modules = HostModules(train=rig.ctx.host_modules.train, generate="stub_generate")
    golden = Path(rig.snapshot.path) / "golden.jsonl"
    ids = [str(json.loads(line)["id"]) for line in golden.read_text().splitlines() if line.strip()]
    with armed(rig.ctx, point, rig.server) as kill, pytest.raises(EvaluationError):
        generate_remote(
            rig.ctx,
            version_id="v9",
            golden=golden,
            golden_ids=ids,
            adapters={"candidate": None, "champion": None},
            poll_s=0.05,
        )
    assert_stopped_and_settled(rig, kill)


def _serving_ctx(rig: Rig, tmp_path: Path) -> PilotContext:
    ctx = rig.ctx
    add_version(ctx, "v1", tmp_path)
    add_version(ctx, "v2", tmp_path)
    promote(ctx, "v1")
    return ctx


def _serving_events(rig: Rig, after_id: int) -> list[Event]:
    with rig.store.session() as s:
        return list(
            s.exec(
                select(Event).where(
                    col(Event.id) > after_id,
                    col(Event.entity_type).in_([EntityType.MODEL_ALIAS, EntityType.DEPLOYMENT, EntityType.CANARY]),
                )
            ).all()
        )


def _last_event_id(rig: Rig) -> int:
    with rig.store.session() as s:
        ids = s.exec(select(Event.id).order_by(col(Event.id).desc())).first()
    return int(ids or 0)


@pytest.mark.parametrize("store_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("point", ["gate_passed", "promoted"])
def test_kill_around_promotion(rig: Rig, point: str, tmp_path: Path) -> None:
    ctx = _serving_ctx(rig, tmp_path)
    state: Any = {"cycle_id": "k1", "version_id": "v2", "verdict": "promote", "reason": "test gate", "log": []}
    with rig.store.session(write=True) as s:
        assert acquire(s, thread_lease("cycle-k1"), ctx.owner, ttl_s=60)
    with armed(ctx, point, rig.server) as kill:
        out = model_nodes.gate(ctx, state)
    after = _last_event_id(rig) if point == "gate_passed" else None
    assert kill.report is not None
    with rig.store.session() as s:
        champion = alias_target(s, "champion")
        moves = s.exec(select(AliasHistory).where(AliasHistory.alias == "champion")).all()
    if point == "gate_passed":
        assert champion == "v1" and "NOT PROMOTED" in out["outcome"]  # nothing promoted after the kill
        assert after is not None
    else:
        # Promoted before the kill committed; the deploy that would follow is refused, and the kill switch put the
        # last stable champion back on the serving target.
        assert "not deployed" in out["outcome"] and "paused" in out["outcome"]
        assert [m.new_version for m in moves][-1] == "v2"
    with rig.store.session() as s:
        kill_at = s.exec(
            select(Event.id).where(Event.entity_type == EntityType.INCIDENT).order_by(col(Event.id).desc())
        ).first()
    late = [e for e in _serving_events(rig, int(kill_at or 0)) if e.entity_type == EntityType.DEPLOYMENT]
    assert late == []  # nothing deployed after the kill (the kill switch's own revert is not an event here)
    assert rig.server.live_instances() == []


@pytest.mark.parametrize("store_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_kill_before_a_canary_step(rig: Rig, tmp_path: Path) -> None:
    ctx = rig.ctx
    ctx.settings = ctx.settings.model_copy(
        update={
            "deploy": ctx.settings.deploy.model_copy(update={"canary": True, "canary_steps": (0.1, 0.5, 1.0)}),
            "monitoring": ctx.settings.monitoring.model_copy(update={"min_records": 30, "window_hours": 6}),
        }
    )
    add_version(ctx, "v1", tmp_path)
    add_version(ctx, "v2", tmp_path)
    promote(ctx, "v1")
    promote(ctx, "v2")
    with rig.store.session(write=True) as s:
        canary.start_rollout(s, ctx.settings, "v2", actor="supervisor")
    ingest_lines(rig.store, live_records(60, seed=1, failure_rate=0.2, version="v1", minutes_ago=120), source="t")
    ingest_lines(rig.store, live_records(40, seed=2, failure_rate=0.2, version="v2", minutes_ago=-1), source="t")
    with armed(ctx, "live_check", rig.server) as kill:
        outcome = watch_live_quality(ctx)
    assert kill.report is not None and outcome.action == "hold" and "paused" in outcome.line
    with rig.store.session() as s:
        rollout = canary.get_rollout(s)
    assert rollout is not None and rollout.share == 0.1  # not stepped after the kill
