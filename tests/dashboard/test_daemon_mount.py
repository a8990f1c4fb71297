"""The real daemon (``learning-pilot run`` in a subprocess) serves the dashboard, streams live events over HTTP as
they happen, and still drains on SIGTERM while a page holds its stream open."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pilot.settings import load_settings
from pilot.store import Store
from pilot.store.status import EntityType
from pilot.store.writers import record_event

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_daemon_serves_the_dashboard_and_drains_with_a_stream_open(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "pilot.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\nenv = "test"\n[gpu]\nprovider = "fake"\n'
        f'[api]\nhost = "127.0.0.1"\nport = {port}\n'
        "[scheduler]\ncycle_interval_s = 3600\nreconcile_interval_s = 3600\n[dashboard]\npoll_s = 0.2\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    env.pop("NOTIFY_SOCKET", None)
    cli = [sys.executable, "-m", "pilot.cli", "--config", str(config)]
    subprocess.run([*cli, "init"], check=True, env=env, cwd=tmp_path, capture_output=True, timeout=120)
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen([*cli, "run"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/dashboard"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the daemon did not start"
            time.sleep(0.2)
        page = httpx.get(base + "/", timeout=10)
        assert page.status_code == 200 and 'id="pilot-state"' in page.text
        store = Store(load_settings(config).database_url)
        with httpx.stream("GET", base + "/events", timeout=10) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("event:")) == "event: hello"
            t0 = time.monotonic()
            with store.session(write=True) as s:
                record_event(s, entity_type=EntityType.PILOT, entity_id="test", actor="test", reason="a change")
            assert next(line for line in lines if line.startswith("event:")) == "event: change"
            assert time.monotonic() - t0 < 3.0  # within a few seconds of the change
            store.close()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        assert time.monotonic() - started < 15  # the open stream ends when the drain starts; it does not hold it up
    finally:
        if proc.poll() is None:  # a failed assertion above: do not leave the daemon running
            proc.kill()
        proc.wait(timeout=10)
        log.close()
    assert "Stopped" in (tmp_path / "daemon.log").read_text()
