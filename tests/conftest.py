"""Shared fixtures: settings in a temp data dir, a store on SQLite and on a real PostgreSQL the tests start.

PostgreSQL: ``initdb`` + ``pg_ctl`` in a temporary directory on a free loopback port (as the ``postgres`` user
when the tests run as root). Under ``CI=true`` a missing PostgreSQL is a failure, not a skip.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Three xdist workers on two cores: torch's default of one thread per core in every training job oversubscribes
# them (three 100-step pretrainings at once: 144 s with 2 threads each, 55 s with 1). Jobs inherit it.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import glob
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pilot.settings import Settings, load_settings
from pilot.store import Store


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under ``--dist loadgroup`` a worker must see its ``xdist_group`` suffix on the node id, which is how
    pytest-xdist keeps a group on one worker. pytest 9.2 with xdist 3.8 silently lost it: the sandbox-uid cases
    ran on three workers at once and one saw another's sandbox as a survivor of its own."""
    mark = item.get_closest_marker("xdist_group")
    grouped = mark is not None and os.environ.get("PYTEST_XDIST_WORKER") and item.config.getvalue("loadgroup")
    if grouped and "@" not in item.nodeid:
        pytest.fail(f"xdist_group is not applied to {item.nodeid}: check the pytest-xdist version against pytest's")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("initdb/pg_ctl not found (install PostgreSQL: apt-get install postgresql)")
        self.pg_ctl = pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="lp-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres")
            os.chmod(self.root, 0o700)
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        self._run(
            [
                pg_ctl,
                "-D",
                str(self.data),
                "-l",
                str(self.root / "log"),
                "-w",
                "-o",
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                "start",
            ]
        )

    def _run(self, command: list[str]) -> None:
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true: {exc}")
        pytest.skip(f"no PostgreSQL here: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pilot.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings with the data dir in tmp_path; keyword overrides per section, e.g. budget={"per_day_usd": 1}."""

    def factory(**overrides: Any) -> Settings:
        overrides.setdefault("data_dir", tmp_path / "data")
        overrides.setdefault("env", "test")
        settings = load_settings(None, **overrides)
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        return settings

    return factory
