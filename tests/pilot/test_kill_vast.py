"""The kill switch and the reconciler against the local Vast server at its real limits, with installation ids.

The server enforces the contract's rate limits (list 1 s, destroy and bulk destroy 3 s per key; 429 without
Retry-After); time is a ``ShiftableClock`` shared by the server and ``VastGpuProvider`` (production pacing and
backoff, base 1 s with jitter: a sleep moves the clock on instead of waiting). Two installations with the same env
share the account, each with its own store; instances of a third tool are on it too, over 3+ list pages.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from pilot.context import PilotContext, build_context
from pilot.runs.teardown import TeardownPolicy
from pilot.service import killswitch
from pilot.service.metrics import PilotMetrics
from pilot.service.reconcile import reconcile
from pilot.service.status import build_status
from pilot.settings import Settings
from pilot.spend.ledger import reserve, spend_summary
from pilot.store import Store
from pilot.store.models import Event, RunAttempt, SpendEntry, TrainingRun, utcnow
from pilot.store.status import AttemptStatus, RunStatus
from pilot.store.writers import is_paused
from tests import factories
from tools.gpu.base import instance_label
from tools.gpu.vast import VastGpuProvider
from tools.gpu.vast_server import ShiftableClock, VastServer, load_offer_book

FIXTURE = Path(__file__).parent.parent / "fixtures" / "vast_offers.json"
KEY = "kill-key"
LIST = "/api/v1/instances/"


@dataclass
class Side:
    """One installation: its store, its context (on the shared Vast account)."""

    ctx: PilotContext
    store: Store

    def run(self, seed: Callable[[str], str], *, run_id: str | None = None) -> tuple[TrainingRun, str]:
        """A run in flight for an hour, rented (``seed`` rents the instance for its label) with one attempt and a
        $2 reservation."""
        run_id = run_id or f"run-{uuid.uuid4().hex[:8]}"
        label = self.ctx.instance_label(run_id)
        instance_id = seed(label)
        started = utcnow() - timedelta(hours=1)
        with self.store.session(write=True) as session:
            run = factories.run(
                session,
                id=run_id,
                label=label,
                provider="vast",
                status=RunStatus.RUNNING,
                dph=0.5,
                instance_id=instance_id,
                created_at=started,
                started_at=started,
            )
            session.add(
                RunAttempt(
                    id=f"{run.id}-a1",
                    run_id=run.id,
                    n=1,
                    status=AttemptStatus.RUNNING,
                    offer_id="1",
                    dph=0.5,
                    instance_id=instance_id,
                    launched_at=utcnow() - timedelta(hours=1),
                )
            )
            reserve(self.store, session, amount_usd=2.0, caps=self.ctx.settings.budget, run_id=run.id)
            session.flush()
            session.expunge(run)
        return run, instance_id

    def reserved(self) -> float:
        with self.store.session() as session:
            return spend_summary(session).reserved_usd


@dataclass
class Rig:
    server: VastServer
    clock: ShiftableClock
    a: Side
    b: Side

    def seed(self, label: str) -> str:
        return str(self.server.seed_instances([label])[0])

    def live(self) -> set[str]:
        return {str(i) for i in self.server.live_instances()}


@pytest.fixture
def rig(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[Rig]:
    clock = ShiftableClock()
    with VastServer(load_offer_book(FIXTURE), api_key=KEY, workdir=tmp_path / "vast", clock=clock) as server:
        sides = []
        for name in ("a", "b"):
            settings = make_settings(data_dir=tmp_path / name, gpu={"provider": "fake", "teardown_deadline_s": 60})
            store = Store(f"sqlite:///{tmp_path / name / 'pilot.db'}")
            store.migrate()
            ctx = build_context(settings, store=store)
            ctx.gpu = VastGpuProvider(
                KEY, api_url=server.url, sleep=clock.sleep, clock=clock, rng=random.Random(7), request_timeout_s=5
            )
            sides.append(Side(ctx, store))
        yield Rig(server, clock, sides[0], sides[1])
        for side in sides:
            side.store.close()


def _account(rig: Rig, n_runs: int = 6) -> dict[str, list[str]]:
    """A's runs in flight, an orphan of A, B's live runs (same env, other installation), a third tool's instances:
    interleaved over 3+ list pages."""
    out: dict[str, list[str]] = {"a_runs": [], "a_orphan": [], "b_runs": [], "foreign": []}
    for k in range(n_runs):
        out["a_runs"].append(rig.a.run(rig.seed)[1])
        out["b_runs"].append(rig.b.run(rig.seed, run_id=f"run-b{k:03d}")[1])
        out["foreign"] += [rig.seed(f"someone-else/job-{k}-{j}") for j in range(9)]
    out["a_orphan"].append(rig.seed(rig.a.ctx.instance_label("run-crashed")))
    return out


def test_kill_clears_our_runs_and_orphans_and_never_another_installations(rig: Rig) -> None:
    world = _account(rig)
    assert len(rig.live()) > 50, "3+ list pages of 25"

    report = killswitch.engage(rig.a.ctx, actor="human:alice", reason="test")

    assert report.ok, report.problems
    ours = set(world["a_runs"] + world["a_orphan"])
    assert {i.instance_id for i in report.instances if i.gone} == ours
    assert not ours & rig.live()
    assert set(world["b_runs"] + world["foreign"]) <= rig.live(), "another installation's and foreign: untouched"
    assert sorted(report.other_installations) == sorted(rig.b.ctx.instance_label(f"run-b{k:03d}") for k in range(6))
    assert rig.a.reserved() == 0
    bulk = [r for r in rig.server.request_log if r.method == "DELETE"]
    assert len(bulk) == 2 and all(r.path == "/api/v0/instances/" for r in bulk), "known ids, then the orphan found"

    # Reported: status, the gauge, one event (not one per look).
    status = build_status(rig.a.ctx.settings, rig.a.store)
    assert status["installation"] == rig.a.ctx.installation
    assert status["other_installations"]["count"] == 6
    metrics = PilotMetrics(rig.a.store, rig.a.ctx.settings).render().decode()
    assert "learning_pilot_other_installation_instances 6.0" in metrics
    killswitch.engage(rig.a.ctx, actor="human:alice", reason="again")
    reconcile(rig.a.ctx)
    with rig.a.store.session() as session:
        events = session.exec(select(Event).where(Event.entity_id == "other_installations")).all()
    assert len(events) == 1 and "another installation" in events[0].reason

    # B's own kill then clears B, and leaves nothing of A to find.
    report_b = killswitch.engage(rig.b.ctx, actor="human:bob", reason="test")
    assert report_b.ok and set(world["b_runs"]) & rig.live() == set()
    assert set(world["foreign"]) <= rig.live()


def test_a_429_storm_during_a_kill_still_converges(rig: Rig) -> None:
    world = _account(rig, n_runs=3)
    rig.server.fail_next(429, 6, method="DELETE")  # the bulk destroy refused for a while, 429 with no Retry-After
    report = killswitch.engage(rig.a.ctx, actor="human:alice", reason="storm")
    assert report.ok, report.problems
    assert not set(world["a_runs"] + world["a_orphan"]) & rig.live()
    assert set(world["b_runs"]) <= rig.live()
    assert rig.a.reserved() == 0


def test_bulk_destroy_partially_failing_during_a_kill_is_finished(rig: Rig) -> None:
    world = _account(rig, n_runs=4)
    rig.server.bulk_destroy_leaves(2)  # answers success, leaves two alive
    report = killswitch.engage(rig.a.ctx, actor="human:alice", reason="partial")
    assert report.ok, report.problems
    assert not set(world["a_runs"] + world["a_orphan"]) & rig.live()
    destroys = [r for r in rig.server.request_log if r.method == "DELETE" and r.status == 200]
    assert len(destroys) >= 2, "what the first bulk call left was destroyed by a later call"


def test_a_kill_whose_list_fails_destroys_what_the_store_knows_and_says_so(rig: Rig) -> None:
    world = _account(rig, n_runs=3)
    rig.server.fail_next(429, 100_000, path=LIST)
    report = killswitch.engage(rig.a.ctx, actor="human:alice", reason="no list", policy=TeardownPolicy(20))
    assert report.paused and not report.ok
    assert any("could not list instances" in p for p in report.problems)
    assert not set(world["a_runs"]) & rig.live(), "destroyed from the store's ids even though nothing could be listed"
    assert set(world["a_orphan"]) <= rig.live(), "the orphan cannot be found without a list: left for the reconciler"
    assert rig.a.reserved() > 0, "not verified gone: reservations kept"
    rig.server.clear_faults()
    reconcile(rig.a.ctx)
    assert not set(world["a_runs"] + world["a_orphan"]) & rig.live()
    assert rig.a.reserved() == 0


def test_an_unverified_destroy_keeps_the_reservation_until_the_reconciler_confirms(rig: Rig) -> None:
    run, instance = rig.a.run(rig.seed)
    rig.server.fail_next(429, 100_000, method="DELETE")
    report = killswitch.engage(rig.a.ctx, actor="human:alice", reason="stuck", policy=TeardownPolicy(20))
    assert not report.ok and report.runs_cancelled[0]["reservation_kept"] is True
    assert instance in rig.live()
    assert rig.a.reserved() == pytest.approx(2.0), "the reservation stays while the instance may bill"
    with rig.a.store.session() as session:
        assert session.get(RunAttempt, f"{run.id}-a1").status == AttemptStatus.ENDING  # type: ignore[union-attr]
        assert session.get(TrainingRun, run.id).status == RunStatus.CANCELLED  # type: ignore[union-attr]

    rig.server.clear_faults()
    rig.clock.sleep(3600)  # an hour later the destroy goes through
    pass_report = reconcile(rig.a.ctx)
    assert instance not in rig.live()
    assert rig.a.reserved() == 0
    assert [s["run_id"] for s in pass_report.settled] == [run.id]
    with rig.a.store.session() as session:
        assert session.get(RunAttempt, f"{run.id}-a1").status == AttemptStatus.ENDED  # type: ignore[union-attr]
        actual = session.exec(select(SpendEntry).where(SpendEntry.run_id == run.id, SpendEntry.kind == "actual")).one()
    assert actual.amount_usd >= 0.5 * 1.0 - 1e-6, "at least an hour at $0.50/h: never settled at $0"


def test_reconcilers_of_two_installations_never_destroy_each_others_live_instances(rig: Rig) -> None:
    run, a_live = rig.a.run(rig.seed)
    a_orphan = rig.seed(rig.a.ctx.instance_label("run-gone-a"))
    _, b_live = rig.b.run(rig.seed, run_id="run-b-live")
    b_orphan = rig.seed(rig.b.ctx.instance_label("run-gone-b"))
    old_ours = rig.seed(instance_label(rig.a.ctx.settings.env, run.id))  # old format, a run A knows: ours
    old_unknown = rig.seed(instance_label(rig.a.ctx.settings.env, "run-nobody"))  # old format, unknown: not ours
    rig.clock.sleep(3600)  # they all bill for an hour

    report_a = reconcile(rig.a.ctx)
    assert sorted(report_a.orphans_destroyed) == sorted([a_orphan, old_ours])
    assert {a_live, b_live, b_orphan, old_unknown} <= rig.live()
    assert set(report_a.other_installations) == {
        rig.b.ctx.instance_label("run-b-live"),
        rig.b.ctx.instance_label("run-gone-b"),
        instance_label(rig.a.ctx.settings.env, "run-nobody"),
    }
    report_b = reconcile(rig.b.ctx)
    assert report_b.orphans_destroyed == [b_orphan]
    assert {a_live, b_live, old_unknown} <= rig.live()
    billed = {s["run_id"]: s["cost_usd"] for s in report_a.settled}
    assert billed["orphan-run-gone-a"] > 0.2, "what the unknown orphan billed (an hour) reaches the ledger"
    assert billed[f"orphan-{run.id}"] > 0.2, "a live run's stray instance: its own entry, the run's left reserved"
    assert rig.a.reserved() == pytest.approx(2.0)


def test_reconcile_over_three_pages_with_a_429_every_third_request_converges_in_two_passes(rig: Rig) -> None:
    orphans = [rig.seed(rig.a.ctx.instance_label(f"run-lost-{k}")) for k in range(5)]
    for k in range(70):
        rig.seed(f"someone-else/{k}")
    rig.server.fail_every(3, 429)
    passes = 0
    while set(orphans) & rig.live() and passes < 5:
        passes += 1
        reconcile(rig.a.ctx)
    assert passes <= 2 and not set(orphans) & rig.live()
    assert any(r.status == 429 for r in rig.server.request_log)


def _broken(rig: Rig, *, key: str = KEY, url: str | None = None) -> None:
    """Point installation A's provider at the account with a wrong key, or at an address nothing listens on."""
    rig.a.ctx.gpu = VastGpuProvider(
        key,
        api_url=url or rig.server.url,
        sleep=rig.clock.sleep,
        clock=rig.clock,
        rng=random.Random(7),
        request_timeout_s=2,
    )


def _assert_paused_and_reported(rig: Rig, report: killswitch.KillReport, live_before: set[str]) -> None:
    assert report.paused and not report.ok and report.problems
    with rig.a.store.session() as session:
        assert is_paused(session), "the pause is committed whatever the provider does"
    assert live_before <= rig.live(), "nothing could be destroyed"
    assert rig.a.reserved() > 0, "instances not verified gone keep their reservations"


def test_a_kill_with_an_invalid_provider_key_still_pauses_and_says_what_it_could_not_do(rig: Rig) -> None:
    world = _account(rig, n_runs=2)
    _broken(rig, key="revoked-key")
    report = killswitch.engage(rig.a.ctx, actor="human:alice", reason="bad key", policy=TeardownPolicy(10))
    _assert_paused_and_reported(rig, report, set(world["a_runs"]))
    assert any("401" in p or "key" in p.lower() for p in report.problems), report.problems


def test_a_kill_with_the_provider_unreachable_still_pauses_and_says_so(rig: Rig) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    world = _account(rig, n_runs=2)
    _broken(rig, url=dead)
    report = killswitch.engage(rig.a.ctx, actor="human:alice", reason="no provider", policy=TeardownPolicy(10))
    _assert_paused_and_reported(rig, report, set(world["a_runs"]))


def test_a_kill_while_another_process_holds_the_database_lock_pauses_once_it_is_free(rig: Rig) -> None:
    """SQLite locked by another writer for less than the busy timeout: the pause waits for it, then commits first."""
    import sqlite3
    import threading

    world = _account(rig, n_runs=2)
    blocker = sqlite3.connect(rig.a.store.engine.url.database, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(2.0, blocker.commit)
    release.start()
    try:
        report = killswitch.engage(rig.a.ctx, actor="human:alice", reason="locked")
    finally:
        release.join()
        blocker.close()
    assert report.paused and report.ok, report.problems
    assert report.duration_s >= 1.5, "the lock was held: the pause waited for it"
    with rig.a.store.session() as session:
        assert is_paused(session)
    assert not set(world["a_runs"] + world["a_orphan"]) & rig.live()
