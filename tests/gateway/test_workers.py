"""``learning-pilot gateway --workers 2`` for real: two serving processes on one port behind a supervising parent,
driven by the real ``openai`` client; a worker killed with ``kill -9`` is replaced and its spool recovered; SIGTERM
stops everything; workers whose parent is killed stop and keep every call; workers that keep dying make the
parent exit non-zero."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from pilot.gateway.workers import RESTART_LIMIT
from pilot.store import Store
from pilot.store.models import GatewayCall
from tools.serving.openai_fake import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "add two numbers"}]
OK_CALLS = 'learning_pilot_gateway_calls_total{endpoint="chat",outcome="ok"}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Processes started by ``pid``'s main thread (the workers' and the ingesters' spawner)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _ingester(worker_pid: int) -> int:
    """The worker's ingester child (its other child is multiprocessing's resource tracker)."""
    (pid,) = [p for p in _children(worker_pid) if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]
    return pid


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Workers:
    process: subprocess.Popen[bytes]
    port: int
    store: Store
    spool: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def by_worker(self, want: int = 2, timeout: float = 60) -> dict[int, dict[str, str]]:
        """Each worker's /healthz, own /metrics and the totals it answers with (fresh connections until every worker
        has answered)."""
        seen: dict[int, dict[str, str]] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < want:
            assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered"
            try:
                with httpx.Client(timeout=5) as http:  # one connection: health and metrics from one worker
                    health = http.get(f"http://127.0.0.1:{self.port}/healthz").json()
                    metrics = http.get(f"http://127.0.0.1:{self.port}/metrics?scope=worker").text
                    totals = http.get(f"http://127.0.0.1:{self.port}/metrics").text
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            seen[health["worker"]] = {"pid": str(health["pid"]), "metrics": metrics, "totals": totals}
        return seen

    def totals(self, name: str = OK_CALLS) -> float:
        """``name`` in the totals, from whichever worker takes a fresh connection."""
        return _metric(httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text, name)

    def stored(self) -> int:
        with self.store.session() as s:
            from sqlmodel import func, select

            return int(s.exec(select(func.count()).select_from(GatewayCall)).one())


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _start(tmp_path: Path, upstream: str, *, stderr: int | None = None, port: int | None = None, workers: int = 2,
           **env: str) -> tuple[subprocess.Popen[bytes], int, Path]:  # fmt: skip
    data = tmp_path / "data"
    port = _free_port() if port is None else port
    environ = {**os.environ, "PYTHONPATH": str(REPO), "LEARNING_PILOT_DATA_DIR": str(data),
               "LEARNING_PILOT_TRAINING__BASE_MODEL": "base-model", "LEARNING_PILOT_GATEWAY__UPSTREAM_URL": upstream,
               **env}  # fmt: skip
    environ.pop("LEARNING_PILOT_CONFIG", None)
    command = [sys.executable, "-m", "pilot.cli", "gateway", "--workers", str(workers), "--port", str(port)]
    return subprocess.Popen(command, env=environ, cwd=tmp_path, stderr=stderr), port, data / "spool"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    (tmp_path / "data").mkdir()
    store = Store(f"sqlite:///{tmp_path / 'data' / 'pilot.db'}")
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def workers(tmp_path: Path, store: Store) -> Iterator[Workers]:
    with FakeOpenAIServer("base-model") as fake:
        process, port, spool = _start(tmp_path, fake.url)
        try:
            yield Workers(process, port, store, spool)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


async def _calls(url: str, n: int, timeout: float = 30) -> list[str]:
    # n concurrent calls: n connections, which the kernel spreads over the two workers' sockets
    client = openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0, timeout=timeout)
    try:
        replies = await asyncio.gather(
            *(client.chat.completions.create(model="agent", messages=MESSAGES, user=f"s{i}") for i in range(n))
        )
    finally:
        await client.close()
    return [r.choices[0].message.content or "" for r in replies]


def _wait(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_workers_serve_one_port_and_sigterm_stops_all(workers: Workers) -> None:
    before = workers.by_worker()
    assert set(before) == {0, 1}
    replies = asyncio.run(_calls(workers.url, 30))
    assert replies == ["base-model: add two numbers"] * 30
    after = workers.by_worker()
    served = {w: _metric(s["metrics"], OK_CALLS) for w, s in after.items()}
    assert sum(served.values()) == 30 and all(n > 0 for n in served.values()), served  # both served
    # Either worker's /metrics is the totals: both workers' figures, summed (the other's at most 1 s old)
    _wait(lambda: all(_metric(s["totals"], OK_CALLS) == 30 for s in workers.by_worker().values()))
    assert _metric(after[0]["totals"], "learning_pilot_gateway_workers") == 2
    assert "learning_pilot_gateway_worker " not in after[0]["totals"]  # which process answered: its own view only
    spools = {str(workers.port), f"{workers.port}-1"}
    assert {p.name for p in workers.spool.iterdir()} == spools | {f"{workers.port}-metrics"}  # one spool each
    _wait(lambda: workers.stored() == 30)
    pids = [int(s["pid"]) for s in after.values()]
    everything = pids + [_ingester(pid) for pid in pids]
    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(60) == 0
    assert not [pid for pid in everything if _alive(pid)]


@pytest.mark.parametrize("second", [2, 1], ids=["supervisor", "single-process"])
def test_a_second_gateway_on_the_port_stops_and_the_first_keeps_everything(
    workers: Workers, tmp_path: Path, second: int
) -> None:
    """A second ``learning-pilot gateway`` on the same port and data dir (by hand next to the unit, say): a second
    supervisor could bind the port beside the first (SO_REUSEPORT), wipe its workers' figures and share their
    spools; a single process would recover the first's spool before failing to bind. Each stops with an error
    naming the holder, and the first keeps serving, counting and storing every call."""
    workers.by_worker()  # both are up
    asyncio.run(_calls(workers.url, 10))
    _wait(lambda: workers.totals() == 10)
    figures = workers.spool / f"{workers.port}-metrics"
    before = {p.name: p.read_bytes() for p in figures.glob("worker-*.json")}
    assert set(before) == {"worker-0.json", "worker-1.json"}
    process, _, _ = _start(tmp_path, "http://127.0.0.1:9/v1", stderr=subprocess.PIPE, port=workers.port,
                           workers=second)  # fmt: skip
    try:
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()  # a second one that kept running (the failure this test looks for)
    assert process.returncode == 1, err.decode()
    holder = workers.process.pid if second > 1 else int(workers.by_worker()[0]["pid"])  # the port's; spool 0's
    assert f"in use by another gateway process (pid {holder}," in err.decode(), err.decode()
    assert set(before) <= {p.name for p in figures.glob("worker-*.json")}  # nothing of the first's was wiped
    assert asyncio.run(_calls(workers.url, 10)) == ["base-model: add two numbers"] * 10
    _wait(lambda: workers.totals() == 20)
    _wait(lambda: workers.stored() == 20)
    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(60) == 0


def test_killed_worker_is_replaced_and_its_spool_recovered(workers: Workers) -> None:
    pids = {w: int(s["pid"]) for w, s in workers.by_worker().items()}
    ingesters = {w: _ingester(pid) for w, pid in pids.items()}
    for pid in ingesters.values():  # hold ingest: the calls stay in the spools
        os.kill(pid, signal.SIGSTOP)
    try:
        asyncio.run(_calls(workers.url, 20))
        time.sleep(1.0)  # past the fsync interval (0.2 s): every answered call is on disk
        assert workers.stored() == 0
        _wait(lambda: workers.totals() == 20)  # each worker has written its figures since its last call
        scrapes = [workers.totals()]
        os.kill(pids[1], signal.SIGKILL)  # the worker and its ingester die without a clean stop
        os.kill(ingesters[1], signal.SIGKILL)
        os.kill(ingesters[0], signal.SIGCONT)
        # Calls made while worker 1 is down: those the kernel gives its socket wait there for the replacement.
        started = time.monotonic()
        assert asyncio.run(_calls(workers.url, 20, timeout=90)) == ["base-model: add two numbers"] * 20
        waited = time.monotonic() - started
        replacement = workers.by_worker()[1]
        while scrapes[-1] != 40:  # the 20 before the kill count: the replacement took over its predecessor's
            assert time.monotonic() < started + 60, scrapes
            scrapes.append(workers.totals())
            time.sleep(0.1)
        assert scrapes == sorted(scrapes), scrapes  # never down: Prometheus would read a drop as a counter reset
        assert replacement["pid"] != str(pids[1])
        assert _metric(replacement["metrics"], OK_CALLS) > 0, waited  # some of the 20 went to worker 1's socket
        assert _metric(replacement["metrics"], "learning_pilot_gateway_records_recovered") > 0  # worker 1 had some
        _wait(lambda: workers.stored() == 40)  # none lost: the 20 were answered more than an fsync interval before
        assert workers.by_worker()[0]["pid"] == str(pids[0])  # the other worker was left alone
    finally:
        for pid in ingesters.values():
            if _alive(pid):
                os.kill(pid, signal.SIGCONT)
    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(60) == 0


def test_workers_stop_and_keep_every_call_when_the_parent_is_killed(workers: Workers) -> None:
    pids = [int(s["pid"]) for s in workers.by_worker().values()]
    everything = pids + [_ingester(pid) for pid in pids]
    assert asyncio.run(_calls(workers.url, 30)) == ["base-model: add two numbers"] * 30
    workers.process.kill()  # the supervisor dies without a word: no SIGTERM reaches the workers
    workers.process.wait(10)
    _wait(lambda: not [pid for pid in everything if _alive(pid)], timeout=60)  # each noticed and stopped itself
    assert workers.stored() == 30  # each flushed and ingested its spool on the way out
    with pytest.raises(httpx.ConnectError):  # nothing serves the port any more
        httpx.get(f"http://127.0.0.1:{workers.port}/healthz", timeout=5)


def test_workers_that_keep_dying_make_the_parent_exit_non_zero(tmp_path: Path, store: Store) -> None:
    crash = {"LEARNING_PILOT_CRASH_AT": "gateway.worker_start"}  # each worker exits 137 as soon as it starts
    process, _, _ = _start(tmp_path, "http://127.0.0.1:9/v1", stderr=subprocess.PIPE, **crash)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 1
    assert f"Gateway workers died {RESTART_LIMIT + 1} times" in err.decode()
    assert err.decode().count("exited with 137: restarting it") == RESTART_LIMIT
