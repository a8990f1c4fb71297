"""Recording never fails a request: a store outage keeps calls in the spool, a full spool drops records (counted),
and a gateway killed with SIGKILL loses at most its last fsync interval; the next start says what it recovered."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from sqlmodel import func, select

from pilot.errors import InUseError
from pilot.gateway.spool import Spool
from pilot.store import Store
from pilot.store.models import GatewayCall
from tools.serving.openai_fake import FakeOpenAIServer

MESSAGES = [{"role": "user", "content": "hello"}]


def count(store: Store) -> int:
    with store.session() as s:
        return int(s.exec(select(func.count()).select_from(GatewayCall)).one())


def metric(rig, name: str) -> float:
    text = httpx.get(f"{rig.root}/metrics").text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(f"{name} "))


def test_store_outage_keeps_calls_in_the_spool_then_ingests_them(make_rig, tmp_path: Path) -> None:
    down = Store(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'pilot.db'}")  # cannot even be opened
    rig = make_rig(store=down)
    c = openai.OpenAI(base_url=rig.url, api_key="k", max_retries=0)
    for _ in range(5):
        assert c.chat.completions.create(model="agent", messages=MESSAGES).choices[0].message.content
    rig.runtime.spool.flush()
    deadline = time.monotonic() + 10
    while metric(rig, "learning_pilot_gateway_store_failures") < 1:
        assert time.monotonic() < deadline, "the ingester never tried the store"
        time.sleep(0.1)
    assert rig.runtime.spool.bytes_on_disk > 0 and len(rig.runtime.spool.segments()) >= 1
    good = Store(f"sqlite:///{tmp_path / 'pilot.db'}")
    good.migrate()
    rig.runtime.store = good
    rig.runtime.ingest_now()
    assert count(good) == 5 and rig.runtime.spool.segments() == []  # deleted once ingested
    good.close()


def test_full_spool_drops_records_not_requests(make_rig, tmp_path: Path) -> None:
    down = Store(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'pilot.db'}")
    rig = make_rig(store=down, spool_max_mb=0.001, fsync_interval_s=0.05)
    c = openai.OpenAI(base_url=rig.url, api_key="k", max_retries=0)
    for _ in range(20):
        c.chat.completions.create(model="agent", messages=MESSAGES)
        time.sleep(0.02)
    dropped = metric(rig, "learning_pilot_gateway_records_dropped")
    assert dropped > 0 and rig.runtime.spool.counters.dropped_full == dropped


def test_spool_files_are_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync_interval_s=1)
    spool.append({"request_id": "r1", "secret": "raw text"})
    spool.flush()
    (segment,) = spool.segments()
    assert stat.S_IMODE(os.stat(spool.directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(segment).st_mode) == 0o600


def test_torn_tail_is_discarded_and_counted(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "00000000000000000001-1-00000001.tmp").write_bytes(b'{"request_id": "a"}\n{"request_id": "b"}\n{"req')
    spool = Spool(directory)
    assert (spool.counters.recovered, spool.counters.torn) == (2, 1)
    assert [c["request_id"] for seg in spool.segments() for c in spool.read(seg)] == ["a", "b"]


def test_a_second_owner_of_a_live_spool_stops_and_touches_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    live = Spool(directory)
    half_written = directory / "00000000000000000001-1-00000001.tmp"  # the live one's segment, mid-write
    half_written.write_bytes(b'{"request_id": "a"}\n{"req')
    with pytest.raises(InUseError, match=rf"in use by another gateway process \(pid {os.getpid()},"):
        Spool(directory)
    assert half_written.read_bytes() == b'{"request_id": "a"}\n{"req'  # not "recovered" from under the live one
    assert live._measure() == half_written.stat().st_size  # the lock file is not spool data
    live.close()
    after = Spool(directory)  # handed over: the next owner recovers what is there
    assert (after.counters.recovered, after.counters.torn) == (1, 1)
    after.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gateway_process(data: Path, fake: FakeOpenAIServer, port: int, fsync_s: float) -> subprocess.Popen[bytes]:
    """``learning-pilot gateway`` in its own process, answering on ``port``."""
    env = {
        **os.environ,
        "LEARNING_PILOT_DATA_DIR": str(data),
        "LEARNING_PILOT_TRAINING__BASE_MODEL": "base-model",
        "LEARNING_PILOT_GATEWAY__UPSTREAM_URL": fake.url,
        "LEARNING_PILOT_GATEWAY__FSYNC_INTERVAL_S": str(fsync_s),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),  # this checkout, not an installed copy
    }
    env.pop("LEARNING_PILOT_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pilot.cli", "gateway", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=data.parent,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the gateway did not start: {proc.communicate()[0].decode()}") from None
            time.sleep(0.1)


def _calls(port: int, n: int) -> list[str]:
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
    return [
        c.chat.completions.with_raw_response.create(model="agent", messages=MESSAGES).headers["x-request-id"]
        for _ in range(n)
    ]


def _stored(store: Store) -> set[str]:
    with store.session() as s:
        return set(s.exec(select(GatewayCall.request_id)).all())


def _migrated(tmp_path: Path) -> tuple[Path, Store, int]:
    """A data dir with a migrated store, and a free port for the gateway process."""
    data = tmp_path / "data"
    data.mkdir()
    store = Store(f"sqlite:///{data / 'pilot.db'}")
    store.migrate()
    return data, store, _free_port()


def test_sigterm_stops_cleanly_with_every_answered_call_stored(tmp_path: Path) -> None:
    data, store, port = _migrated(tmp_path)
    with FakeOpenAIServer("base-model") as fake:
        proc = _gateway_process(data, fake, port, fsync_s=10)  # the calls stay in memory: only the stop writes them
        try:
            ids = _calls(port, 10)
        finally:
            proc.send_signal(signal.SIGTERM)
            out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert set(ids) <= _stored(store)  # the stop wrote the spool's last interval and ingested it
    assert [p for p in (data / "spool").rglob("*") if p.is_file() and p.name != ".lock"] == []  # deleted once ingested
    store.close()


def test_kill_9_loses_at_most_the_last_fsync_interval(tmp_path: Path) -> None:
    data, store, port = _migrated(tmp_path)
    with FakeOpenAIServer("base-model") as fake:
        proc = _gateway_process(data, fake, port, fsync_s=0.1)
        try:
            ids = _calls(port, 30)
            time.sleep(0.3)  # past the fsync interval: every call answered so far is on disk
            # Stop the ingester from getting them first: the kill lands while records may still be in the spool.
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
    from pilot.gateway.server import GatewayRuntime
    from pilot.settings import load_settings

    settings = load_settings(None, data_dir=data, training={"base_model": "base-model"})
    before = count(store)
    runtime = GatewayRuntime(settings, store, port=port)  # the restart reads the dead process's spool
    assert before + runtime.spool.counters.recovered >= len(ids)  # and says how many it found (a warning)
    runtime.ingest_now()
    assert set(ids) <= _stored(store)  # nothing answered before the last fsync interval was lost
    assert runtime.spool.segments() == []
    store.close()
