"""Leader election on PostgreSQL: one leader, standbys take over on release or when the leader's connection dies."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from pilot.service.leader import LeaderElection
from pilot.store import Store


@pytest.mark.postgres
def test_one_leader_and_takeover(pg_url: str) -> None:
    stores = [Store(pg_url) for _ in range(3)]
    elections = [LeaderElection(s) for s in stores]
    try:
        assert [e.is_leader() for e in elections] == [True, False, False]
        assert [e.is_leader() for e in elections] == [True, False, False]  # stable
        elections[0].release()
        assert elections[1].is_leader() and not elections[2].is_leader()
        assert not elections[0].is_leader()  # the old leader now stands by

        # The leader's connection dies (network cut, backend killed): PostgreSQL frees the lock.
        pid = elections[1]._conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with stores[2].engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert not elections[1].is_leader()  # steps down instead of running cycles it cannot record
        assert elections[2].is_leader() or elections[0].is_leader()
        assert sum(e.is_leader() for e in elections) == 1
    finally:
        for e in elections:
            e.release()
        for s in stores:
            s.close()


def test_sqlite_is_always_its_own_leader(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        election = LeaderElection(store)
        assert election.is_leader() and election.is_leader()
        election.release()
    finally:
        store.close()
