"""The daemon under a notify-style supervisor: READY=1, /metrics answers, WATCHDOG=1, SIGTERM -> STOPPING=1, exit 0."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pilot.service.daemon import sd_notify, watchdog_interval_s

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    short = tempfile.mkdtemp(prefix="lp-sd-", dir="/tmp")  # AF_UNIX paths are limited to 107 bytes
    path = os.path.join(short, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(1.0)
    yield sock, path
    sock.close()
    shutil.rmtree(short, ignore_errors=True)


def _wait_for(sock: socket.socket, needle: str, timeout: float, seen: list[str]) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        seen.append(message)
        if needle in message:
            return message
    raise AssertionError(f"no {needle!r} within {timeout} s; got {seen}")


def test_sd_notify_writes_one_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(100) == b"READY=1"
    assert not sd_notify("READY=1", environ={})
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None  # meant for another pid
    assert watchdog_interval_s({}) is None


def test_daemon_starts_serves_metrics_and_drains_on_sigterm(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    config = tmp_path / "pilot.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\nenv = "test"\n'
        '[gpu]\nprovider = "fake"\n[api]\nhost = "127.0.0.1"\nport = 0\n'
        "[scheduler]\ncycle_interval_s = 3600\nreconcile_interval_s = 3600\n"
    )
    env = {
        **os.environ,
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "1000000",
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("WATCHDOG_PID", None)
    cli = [sys.executable, "-m", "pilot.cli", "--config", str(config)]
    subprocess.run([*cli, "init"], check=True, env=env, cwd=tmp_path, capture_output=True, timeout=120)
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen([*cli, "run"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    seen: list[str] = []
    try:
        ready = _wait_for(sock, "READY=1", 90, seen)
        url = next(line for line in ready.splitlines() if line.startswith("STATUS=")).split(" on ", 1)[1]
        assert url.startswith("http://127.0.0.1:")
        metrics = httpx.get(f"{url}/metrics", timeout=10)
        assert metrics.status_code == 200
        assert "learning_pilot_paused 0.0" in metrics.text and "learning_pilot_leader 1.0" in metrics.text
        assert httpx.get(f"{url}/readyz", timeout=10).json() == {"status": "ready"}
        _wait_for(sock, "WATCHDOG=1", 10, seen)
        proc.send_signal(signal.SIGTERM)
        _wait_for(sock, "STOPPING=1", 30, seen)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    assert "Stopped" in (tmp_path / "daemon.log").read_text()
