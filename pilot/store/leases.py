"""Leases: at most one process advances a job (a run, an evaluation stage) or a supervisor thread at a time.

A lease is a row (``lease``: name, owner, epoch, expires_at) taken and renewed by compare-and-set:

- ``acquire`` succeeds when the lease is free, expired, or already ours; a change of owner bumps ``epoch``.
- ``renew`` succeeds only while we are still the owner (nobody took it after it expired).
- ``holds`` is the fencing check the effect gate (``pilot/spend/effects.py``) makes right before every side effect:
  a process that lost its lease — it was frozen, or its renewals failed — cannot rent, relaunch, promote or deploy.

``LeaseKeeper`` holds a lease for the length of a ``with`` block, renewing it from a background thread every
third of its time to live; when a renewal fails, ``lost`` is set and the gate refuses this process's effects.
Leases are names, not foreign keys: ``thread:<thread_id>``, ``run:<run_id>``, ``stage:<stage_id>``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from types import TracebackType

from sqlalchemy import case, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from pilot.store.engine import Store
from pilot.store.models import Lease, as_utc, utcnow

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def process_owner() -> str:
    """This process's identity as a lease owner: host, pid and a random suffix (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def thread_lease(thread_id: str) -> str:
    return f"thread:{thread_id}"


def run_lease(run_id: str) -> str:
    return f"run:{run_id}"


def stage_lease(stage_id: str) -> str:
    return f"stage:{stage_id}"


def acquire(session: Session, name: str, owner: str, *, ttl_s: float, now: datetime | None = None) -> bool:
    """Take ``name`` for ``owner`` until ``now + ttl_s``, if it is free, expired or ours. Commit to make it count."""
    now = now or utcnow()
    expires = now + timedelta(seconds=ttl_s)
    taken = session.execute(
        update(Lease)
        .where(Lease.name == name, (Lease.owner == owner) | (Lease.expires_at <= now))  # type: ignore[arg-type]
        .values(
            owner=owner,
            epoch=case((Lease.owner == owner, Lease.epoch), else_=Lease.epoch + 1),  # type: ignore[arg-type]
            acquired_at=case((Lease.owner == owner, Lease.acquired_at), else_=now),  # type: ignore[arg-type]
            expires_at=expires,
        )
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount == 1:  # type: ignore[attr-defined]
        return True
    if session.get(Lease, name) is not None:
        return False  # held by someone else, not expired
    try:
        with session.begin_nested():
            session.add(Lease(name=name, owner=owner, epoch=1, acquired_at=now, expires_at=expires))
    except IntegrityError:
        return False  # another process inserted it first
    return True


def renew(session: Session, name: str, owner: str, *, ttl_s: float, now: datetime | None = None) -> bool:
    """Extend our lease; False when someone else holds it now (we lost it)."""
    now = now or utcnow()
    result = session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.owner == owner)  # type: ignore[arg-type]
        .values(expires_at=now + timedelta(seconds=ttl_s))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, name: str, owner: str, *, now: datetime | None = None) -> None:
    """Give the lease up at once (expired now); a no-op when it is not ours."""
    session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.owner == owner)  # type: ignore[arg-type]
        .values(expires_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )


def holds(session: Session, name: str, owner: str, *, now: datetime | None = None) -> bool:
    """The fencing check: ``owner`` holds ``name`` and it has not expired."""
    row = session.get(Lease, name, populate_existing=True)
    return row is not None and row.owner == owner and as_utc(row.expires_at) > (now or utcnow())


def holder(session: Session, name: str, *, now: datetime | None = None) -> str | None:
    """Who holds ``name`` now (None when free or expired)."""
    row = session.get(Lease, name, populate_existing=True)
    if row is None or as_utc(row.expires_at) <= (now or utcnow()):
        return None
    return row.owner


class LeaseKeeper:
    """``with LeaseKeeper(store, name, owner, ttl_s=60) as lease:`` — ``lease.held`` says whether it was taken;
    while held it is renewed in the background; ``lease.lost`` is set if a renewal fails. Released on exit."""

    def __init__(self, store: Store, name: str, owner: str, *, ttl_s: float, clock: Clock = utcnow) -> None:
        self.store, self.name, self.owner, self.ttl_s, self.clock = store, name, owner, ttl_s, clock
        self.held = False
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        with self.store.session(write=True) as session:
            self.held = acquire(session, self.name, self.owner, ttl_s=self.ttl_s, now=self.clock())
        if self.held:
            self._thread = threading.Thread(target=self._renew, name=f"lease-{self.name}", daemon=True)
            self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(max(self.ttl_s / 3, 0.05)):
            try:
                with self.store.session(write=True) as session:
                    ok = renew(session, self.name, self.owner, ttl_s=self.ttl_s, now=self.clock())
            except Exception:  # a locked or unreachable store: try again; the lease expires if this goes on
                logger.warning("Renewing lease %s failed; retrying", self.name, exc_info=True)
                continue
            if not ok:
                logger.error("Lease %s was taken by another process: this one stops acting on it", self.name)
                self.lost.set()
                return

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held and not self.lost.is_set():
            try:
                with self.store.session(write=True) as session:
                    release(session, self.name, self.owner, now=self.clock())
            except Exception:  # it expires on its own
                logger.warning("Releasing lease %s failed; it expires in %.0f s", self.name, self.ttl_s, exc_info=True)
