"""Engine, sessions and migrations. SQLite (WAL) by default; PostgreSQL through a URL.

Write transactions on SQLite begin with ``BEGIN IMMEDIATE`` so two writers queue on the database lock instead of
failing half-way with "database is locked" when a read transaction tries to upgrade. On PostgreSQL, writers that
must serialise (budget reservations) take an advisory transaction lock (``lock()``).
"""

from __future__ import annotations

import weakref
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.pool import NullPool
from sqlmodel import Session

from pilot.errors import StoreError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=NullPool,  # one connection per session: no sharing across threads or forks
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


class Store:
    """Owns the engine. ``session()`` is one transaction: committed on success, rolled back on error.

    ``close()`` hands the pooled connections back to the server; a store dropped without it does the same when it is
    collected (a finaliser), so a forgotten close never leaves a PostgreSQL connection to the garbage collector.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = url.startswith("sqlite")
        self._write_engine = self.engine.execution_options(sqlite_begin="IMMEDIATE") if self.is_sqlite else self.engine
        self._dispose = weakref.finalize(self, self.engine.dispose)

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        bind = self._write_engine if write else self.engine
        with Session(bind, expire_on_commit=False) as session, session.begin():
            yield session

    def lock(self, session: Session, name: str) -> None:
        """Serialise writers on ``name`` until the transaction ends (SQLite: the write session already is)."""
        if not self.is_sqlite:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(name.encode())})

    def migrate(self) -> None:
        """Bring the schema to the newest revision (alembic upgrade head)."""
        from alembic import command
        from alembic.config import Config

        if self.is_sqlite:
            database = self.url.split("///", 1)[-1]
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection_engine"] = self.engine
        command.upgrade(config, "head")

    def check_ready(self) -> None:
        """Raise StoreError with a one-line hint if the schema was never created."""
        try:
            tables = set(inspect(self.engine).get_table_names())
        except Exception as exc:  # driver errors vary; the message is what matters to the operator
            raise StoreError(f"cannot open the store at {self.display_url}: {exc.__class__.__name__}: {exc}") from exc
        if "alembic_version" not in tables:
            raise StoreError(f"the store at {self.display_url} is not initialised: run `learning-pilot init`")

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self._dispose()
