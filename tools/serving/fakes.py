"""Loopback fakes of the vLLM and Ollama HTTP APIs, for tests, ``--dry-run`` and the demo.

Each is a real stdlib ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) that keeps the same state the real server
would (loaded adapters, blobs, models), answers with the real servers' status codes, and records every request
as ``(method, path, json body or None)``. ``fail_next(status)`` makes the next request fail once.
Use as a context manager; ``url`` is the base URL.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["FakeOllamaServer", "FakeServer", "FakeVllmServer"]

Answer = tuple[int, Any]


class FakeServer:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._fail: int | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    raw = _read_chunked(self.rfile)
                with fake._lock:
                    body: Any = None
                    if raw and not self.path.startswith("/api/blobs"):
                        try:
                            body = json.loads(raw)
                        except ValueError:
                            body = None
                    fake.requests.append((self.command, self.path, body))
                    fake.headers.append(dict(self.headers))
                    if fake._fail is not None:
                        status, payload = fake._fail, {"error": "injected failure"}
                        fake._fail = None
                    else:
                        status, payload = fake.handle(self.command, self.path, body, raw)
                data = (
                    b""
                    if payload is None
                    else (payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def fail_next(self, status: int) -> None:
        self._fail = status

    def handle(self, method: str, path: str, body: Any, raw: bytes) -> Answer:
        raise NotImplementedError

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _read_chunked(rfile: Any) -> bytes:
    out = bytearray()
    while True:
        size = int(rfile.readline().strip() or b"0", 16)
        if size == 0:
            rfile.readline()
            return bytes(out)
        out += rfile.read(size)
        rfile.readline()


class FakeVllmServer(FakeServer):
    """vLLM with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``: adapters must exist on disk to load, as in vLLM."""

    def __init__(self, base_model: str = "base") -> None:
        super().__init__()
        self.base_model = base_model
        self.loaded: dict[str, str] = {}

    def handle(self, method: str, path: str, body: Any, raw: bytes) -> Answer:
        if (method, path) == ("POST", "/v1/load_lora_adapter"):
            name, lora_path = body["lora_name"], body["lora_path"]
            if name in self.loaded:
                return 400, f"The lora adapter '{name}' has already been loaded."
            if not (Path(lora_path) / "adapter_config.json").exists():
                return 400, f"Loading lora {name} failed: No adapter found for {lora_path}"
            self.loaded[name] = lora_path
            return 200, f"Success: LoRA adapter '{name}' added successfully."
        if (method, path) == ("POST", "/v1/unload_lora_adapter"):
            name = body["lora_name"]
            if self.loaded.pop(name, None) is None:
                return 404, {"error": {"message": f"The lora adapter '{name}' cannot be found."}}
            return 200, f"Success: LoRA adapter '{name}' removed successfully."
        if (method, path) == ("GET", "/v1/models"):
            data = [{"id": self.base_model, "object": "model", "root": self.base_model, "parent": None}]
            data += [{"id": n, "object": "model", "root": p, "parent": self.base_model} for n, p in self.loaded.items()]
            return 200, {"object": "list", "data": data}
        return 404, {"error": "not found"}


class FakeOllamaServer(FakeServer):
    """Ollama's blob + create + delete + tags API; it re-hashes uploaded blobs like the real server."""

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[str, bytes] = {}
        self.models: dict[str, dict[str, Any]] = {}

    def handle(self, method: str, path: str, body: Any, raw: bytes) -> Answer:
        if path.startswith("/api/blobs/sha256:"):
            digest = path.removeprefix("/api/blobs/sha256:")
            if method == "HEAD":
                return (200, None) if digest in self.blobs else (404, None)
            if method == "POST":
                if hashlib.sha256(raw).hexdigest() != digest:
                    return 400, {"error": "digest mismatch"}
                self.blobs[digest] = raw
                return 201, None
        if (method, path) == ("POST", "/api/create"):
            missing = [f for f, d in body.get("adapters", {}).items() if d.removeprefix("sha256:") not in self.blobs]
            if missing:
                return 400, {"error": f"missing blobs for {missing}"}
            self.models[f"{body['model']}:latest"] = body
            return 200, {"status": "success"}
        if (method, path) == ("DELETE", "/api/delete"):
            name = body["model"] if ":" in body["model"] else f"{body['model']}:latest"
            if self.models.pop(name, None) is None:
                return 404, {"error": f"model '{body['model']}' not found"}
            return 200, None
        if (method, path) == ("GET", "/api/tags"):
            return 200, {"models": [{"name": n, "model": n} for n in self.models]}
        return 404, {"error": "not found"}
