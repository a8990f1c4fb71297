"""The store on SQLite and on a real PostgreSQL: transitions, compare-and-set, events, aliases, pause flag."""

from __future__ import annotations

import itertools

import pytest
from sqlmodel import col, select

from pilot.errors import ConflictError, NotFound, TransitionError
from pilot.store import Store
from pilot.store.models import Event, PilotState, TrainingRun
from pilot.store.status import ALLOWED_EDGES, ApprovalStatus, ModelStatus, RunStatus, RunTerminationReason, is_allowed
from pilot.store.writers import alias_target, is_paused, move_alias, set_paused, switch_run_status
from tests import factories


def _events(store: Store, entity_id: str) -> list[Event]:
    with store.session() as s:
        return list(s.exec(select(Event).where(Event.entity_id == entity_id).order_by(col(Event.id))).all())


def test_migrate_is_idempotent_and_ready(store: Store) -> None:
    store.migrate()
    store.check_ready()
    with store.session() as s:
        assert s.exec(select(PilotState)).all() == []


def test_a_run_walks_the_happy_path_with_one_event_per_transition(store: Store) -> None:
    with store.session(write=True) as s:
        run = factories.run(s)
    path = [RunStatus.PROVISIONING, RunStatus.RUNNING, RunStatus.COLLECTING, RunStatus.SUCCEEDED]
    for new in path:
        with store.session(write=True) as s:
            switch_run_status(s, run.id, new, actor="system", reason=f"to {new}")
    events = _events(store, run.id)
    assert [(e.old, e.new) for e in events] == list(itertools.pairwise([RunStatus.PENDING, *path]))
    assert all(e.actor == "system" and e.reason.startswith("to ") for e in events)
    with store.session() as s:
        final = s.get(TrainingRun, run.id)
        assert final is not None and final.status == RunStatus.SUCCEEDED
        assert final.started_at is not None and final.finished_at is not None


def test_a_disallowed_transition_changes_nothing_and_writes_no_event(store: Store) -> None:
    with store.session(write=True) as s:
        run = factories.run(s)
    with pytest.raises(TransitionError, match="pending -> succeeded"), store.session(write=True) as s:
        switch_run_status(s, run.id, RunStatus.SUCCEEDED, actor="system", reason="skip ahead")
    with store.session() as s:
        assert s.get(TrainingRun, run.id).status == RunStatus.PENDING  # type: ignore[union-attr]
    assert _events(store, run.id) == []


def test_compare_and_set_refuses_a_stale_expectation(store: Store) -> None:
    with store.session(write=True) as s:
        run = factories.run(s)
    with store.session(write=True) as s:
        switch_run_status(s, run.id, RunStatus.PROVISIONING, actor="system", reason="launched")
    with pytest.raises(ConflictError), store.session(write=True) as s:
        switch_run_status(s, run.id, RunStatus.FAILED, actor="system", reason="stale", expected=RunStatus.PENDING)
    assert len(_events(store, run.id)) == 1


def test_termination_reason_maps_to_status(store: Store) -> None:
    with store.session(write=True) as s:
        run = factories.run(s)
    reason = RunTerminationReason.KILL_SWITCH
    with store.session(write=True) as s:
        switch_run_status(s, run.id, reason.to_status(), actor="human:ops", reason="kill", termination_reason=reason)
    with store.session() as s:
        row = s.get(TrainingRun, run.id)
        assert row is not None and row.status == RunStatus.CANCELLED and row.termination_reason == "kill_switch"


def test_unknown_run_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound), store.session(write=True) as s:
        switch_run_status(s, "run-nope", RunStatus.FAILED, actor="system", reason="x")


def test_aliases_move_with_history(store: Store) -> None:
    with store.session(write=True) as s:
        assert move_alias(s, "champion", "v1", actor="supervisor", reason="first") is None
    with store.session(write=True) as s:
        assert move_alias(s, "champion", "v2", actor="human:ana", reason="better") == "v1"
    with store.session() as s:
        assert alias_target(s, "champion") == "v2"
    assert [(e.old, e.new, e.actor) for e in _events(store, "champion")] == [
        (None, "v1", "supervisor"),
        ("v1", "v2", "human:ana"),
    ]


def test_pause_flag_persists_and_is_idempotent(store: Store) -> None:
    with store.session(write=True) as s:
        assert set_paused(s, True, actor="human:ops", reason="kill") is False
    with store.session(write=True) as s:
        assert set_paused(s, True, actor="human:ops", reason="again") is True
    reopened = Store(store.url)
    with reopened.session() as s:
        assert is_paused(s)
    reopened.close()
    assert len(_events(store, "pilot")) == 1  # the second, no-op pause wrote no event


@pytest.mark.parametrize("status_type", list(ALLOWED_EDGES))
def test_terminal_states_have_no_way_out(status_type: type) -> None:
    edges = ALLOWED_EDGES[status_type]
    for old in status_type:
        for new in status_type:
            assert is_allowed(old, new) == (new in edges[old])
    if status_type is RunStatus:
        assert all(not edges[s] for s in RunStatus if s.is_terminal)
    if status_type is ApprovalStatus:
        assert all(not edges[s] for s in ApprovalStatus if s != ApprovalStatus.PENDING)
    if status_type is ModelStatus:
        assert not edges[ModelStatus.REJECTED]


@pytest.mark.postgres
def test_a_store_dropped_without_close_hands_its_connections_back(pg_url: str) -> None:
    """A pooled psycopg connection left to the garbage collector warns ("deleted while still open"), which pytest
    turns into a failure in whichever test happens to be running. The store's finaliser closes them first."""
    import gc
    import time
    import warnings

    import psycopg

    database = pg_url.rsplit("/", 1)[-1]
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"

    def open_connections() -> int:
        with psycopg.connect(admin, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).fetchone()
            return int(row[0]) if row else 0

    store = Store(pg_url)
    store.migrate()
    with store.session() as s:
        s.exec(select(PilotState)).all()
    assert open_connections() >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del store, s
        gc.collect()
    deadline = time.monotonic() + 5  # a backend leaves pg_stat_activity a moment after its client said goodbye
    while open_connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_connections() == 0
