"""Leases on SQLite and PostgreSQL: taken by compare-and-set, renewed, lost to a taker after expiry, and never held
by two owners at once — also when many threads race for one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from pilot.store import Store
from pilot.store.leases import LeaseKeeper, acquire, holder, holds, release, renew
from pilot.store.models import Lease, utcnow


@pytest.fixture
def migrated(store: Store) -> Iterator[Store]:
    yield store


def test_acquire_renew_release_and_takeover_after_expiry(migrated: Store) -> None:
    now = utcnow()
    with migrated.session(write=True) as s:
        assert acquire(s, "run:r1", "a", ttl_s=10, now=now)
    with migrated.session(write=True) as s:
        assert not acquire(s, "run:r1", "b", ttl_s=10, now=now + timedelta(seconds=5))  # held, not expired
        assert acquire(s, "run:r1", "a", ttl_s=10, now=now + timedelta(seconds=5))  # ours: re-taking extends it
    with migrated.session() as s:
        assert holds(s, "run:r1", "a", now=now + timedelta(seconds=14))
        assert not holds(s, "run:r1", "b", now=now + timedelta(seconds=14))
        epoch = s.get(Lease, "run:r1").epoch  # type: ignore[union-attr]
    later = now + timedelta(seconds=16)
    with migrated.session(write=True) as s:
        assert acquire(s, "run:r1", "b", ttl_s=10, now=later)  # a's lease expired: b takes it
    with migrated.session(write=True) as s:
        assert not renew(s, "run:r1", "a", ttl_s=10, now=later)  # a lost it and can tell
        row = s.get(Lease, "run:r1")
        assert row is not None and row.owner == "b" and row.epoch == epoch + 1
    with migrated.session(write=True) as s:
        release(s, "run:r1", "a", now=later)  # not a's: a no-op
        assert holder(s, "run:r1", now=later) == "b"
        release(s, "run:r1", "b", now=later)
        assert holder(s, "run:r1", now=later) is None


def test_racing_owners_never_both_hold(migrated: Store) -> None:
    """Twenty owners race for one lease, from threads with their own sessions: exactly one wins."""
    barrier = threading.Barrier(20)

    def take(owner: str) -> bool:
        barrier.wait()
        with migrated.session(write=True) as s:
            return acquire(s, "thread:cycle-x", owner, ttl_s=60)

    with ThreadPoolExecutor(20) as pool:
        won = list(pool.map(take, [f"owner-{i}" for i in range(20)]))
    assert sum(won) == 1
    with migrated.session() as s:
        assert holder(s, "thread:cycle-x") == f"owner-{won.index(True)}"


def test_keeper_renews_and_notices_a_lost_lease(migrated: Store) -> None:
    with LeaseKeeper(migrated, "stage:s1", "a", ttl_s=1.5) as lease:
        assert lease.held
        time.sleep(2.0)  # longer than the time to live: the renewals kept it
        with migrated.session() as s:
            assert holds(s, "stage:s1", "a")
        with migrated.session(write=True) as s:  # someone else takes it (as after a freeze past the expiry)
            row = s.get(Lease, "stage:s1")
            assert row is not None
            row.owner = "b"
        assert lease.lost.wait(3.0)
    with migrated.session() as s:
        assert holder(s, "stage:s1") == "b"  # a's exit did not release b's lease
    with LeaseKeeper(migrated, "stage:s1", "c", ttl_s=5) as other:
        assert not other.held
