"""The daemon's HTTP app on real uvicorn in a child process, so its memory can be measured apart from the client's.

``ApiServer(data_dir)`` migrates a SQLite store there, creates a producer token (``.token``), starts
``python -m tests.helpers.api_server DATA_DIR PORT`` and waits for ``/healthz``. ``peak_rss_mib()`` reads the
child's ``VmHWM`` (the kernel's high-water mark of its resident set), ``rss_mib()`` its ``VmRSS``.
Used by tests/pilot/test_ingest_limits.py and bench/bench_ingest_limits.py.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

ROOT = Path(__file__).resolve().parents[2]


def _settings(data_dir: Path):  # type: ignore[no-untyped-def]
    from pilot.settings import load_settings

    return load_settings(None, data_dir=data_dir, env="test", gpu={"provider": "fake"})


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


class ApiServer:
    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None) -> None:
        from pilot.data.producers import LIVE_WRITE, RECORDS_WRITE, create_token
        from pilot.store import Store

        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self._env = env or {}  # LEARNING_PILOT_* overrides, for this process's settings and the child's
        old = {k: os.environ.get(k) for k in self._env}
        os.environ.update(self._env)
        try:
            self.settings = _settings(data_dir)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        store = Store(self.settings.database_url)
        store.migrate()
        self.token = create_token(store, "load-test", [RECORDS_WRITE, LIVE_WRITE])[1]
        store.close()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **self._env, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.api_server", str(data_dir), str(self.port)], cwd=ROOT, env=env
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the API server did not start")
            time.sleep(0.1)

    def rss_mib(self) -> float:
        return _status_kib(self.process.pid, "VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return _status_kib(self.process.pid, "VmHWM") / 1024

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def send_chunked(url: str, path: str, token: str, total_bytes: int, chunk: bytes) -> tuple[int | None, int]:
    """POST ``total_bytes`` of ``chunk`` repeated as a chunked body over a raw socket; stops when the server answers
    or closes. Returns (HTTP status or None, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode())
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        answer = b""
        while sent < total_bytes:
            if select.select([sock], [], [], 0)[0]:  # the server answered (or closed) before the body ended
                break
            try:
                sock.sendall(framed)
            except OSError:  # reset or broken pipe: the server refused and closed
                break
            sent += len(chunk)
        else:
            sock.sendall(b"0\r\n\r\n")
        try:
            while b"\r\n" not in answer:
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        except OSError:
            pass
    status = answer.split(b"\r\n", 1)[0].split()
    return (int(status[1]) if len(status) > 1 and status[1].isdigit() else None), sent


def _serve(data_dir: Path, port: int) -> None:
    import uvicorn

    from pilot.context import build_context
    from pilot.service.api import create_app
    from pilot.store import Store

    settings = _settings(data_dir)
    ctx = build_context(settings, store=Store(settings.database_url))
    uvicorn.run(create_app(ctx), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), int(sys.argv[2]))
