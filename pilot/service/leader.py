"""One leader among several daemons sharing a PostgreSQL store; the others stand by.

PostgreSQL: the leader holds a session-level ``pg_try_advisory_lock`` on a dedicated connection (outside the
pool, autocommit). The lock lives exactly as long as that connection: if the leader dies or its connection
drops, PostgreSQL releases it and a standby takes over on its next ``is_leader()`` check. ``is_leader()`` also
verifies that the connection still works, so a leader cut off from the database steps down instead of running
cycles it cannot record.

SQLite: the store is one local file, so one machine; every daemon on it is "leader" and SQLite's own write
lock serialises them (BEGIN IMMEDIATE). Running two daemons on one SQLite file is not a supported set-up.
"""

from __future__ import annotations

import logging
import threading
import zlib
from typing import Any

from sqlalchemy import text

from pilot.store import Store

logger = logging.getLogger(__name__)

LEADER_LOCK = "learning-pilot/leader"


def lock_key(name: str = LEADER_LOCK) -> int:
    return zlib.crc32(name.encode())


class LeaderElection:
    def __init__(self, store: Store, *, name: str = LEADER_LOCK) -> None:
        self.store = store
        self.key = lock_key(name)
        self._conn: Any = None
        self._leader = False
        self._mutex = threading.Lock()

    def is_leader(self) -> bool:
        """Try to become (or confirm being) the leader. Never raises: a database error means standby."""
        if self.store.is_sqlite:
            return True
        with self._mutex:
            try:
                if self._conn is None:
                    self._conn = self.store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                if self._leader:
                    self._conn.execute(text("SELECT 1"))
                    return True
                got = bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())
            except Exception as exc:  # connection lost: the lock is gone with it
                if self._leader:
                    logger.error("Lost the leader lock's connection (%s): standing by", exc)
                self._drop()
                return False
            if got and not self._leader:
                logger.warning("This daemon is now the leader")
            self._leader = got
            return got

    def _drop(self) -> None:
        self._leader = False
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:  # closing a broken connection may fail too; it is being thrown away
                logger.debug("closing the leader connection failed", exc_info=True)
            self._conn = None

    def release(self) -> None:
        with self._mutex:
            if self._conn is not None and self._leader:
                try:
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                except Exception:
                    logger.debug("unlock failed; closing the connection releases it", exc_info=True)
            self._leader = False
            if self._conn is not None:
                self._conn.close()
                self._conn = None
