"""A local fake of the Slack Web API (stdlib http.server on 127.0.0.1:0) that records the calls it gets.

It answers ``chat.postMessage`` and ``chat.update`` like Slack (``{"ok": true, "channel", "ts", "message"}``),
refuses a wrong bearer token with ``invalid_auth``, and can be told to fail the next calls (``fail_next``). Point
``SlackNotifier`` at ``fake.base_url`` (it ends in ``/api/`` like the real one).
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

CHANNEL_ID = "C0LEARNPILOT"


@dataclass(frozen=True)
class SlackCall:
    method: str  # chat.postMessage, chat.update, ...
    body: dict[str, Any]


class FakeSlack:
    def __init__(self, *, token: str = "xoxb-test") -> None:
        self.token = token
        self.calls: list[SlackCall] = []
        self._fail: list[str] = []
        self._ts = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the fake Slack server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/api/"

    def start(self) -> FakeSlack:
        handler = type("_BoundSlackHandler", (_Handler,), {"app": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-slack", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, error: str = "internal_error", count: int = 1) -> None:
        with self._lock:
            self._fail.extend([error] * count)

    def calls_to(self, method: str) -> list[SlackCall]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def handle(self, method: str, auth: str | None, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if auth != f"Bearer {self.token}":
                return {"ok": False, "error": "invalid_auth"}
            self.calls.append(SlackCall(method, body))
            if self._fail:
                return {"ok": False, "error": self._fail.pop(0)}
            match method:
                case "chat.postMessage":
                    if not body.get("channel"):
                        return {"ok": False, "error": "channel_not_found"}
                    ts = f"1700000000.{next(self._ts):06d}"
                    return {"ok": True, "channel": CHANNEL_ID, "ts": ts, "message": {**body, "ts": ts}}
                case "chat.update":
                    if not body.get("ts"):
                        return {"ok": False, "error": "message_not_found"}
                    return {"ok": True, "channel": body.get("channel"), "ts": body["ts"], "message": body}
                case "auth.test":
                    return {"ok": True, "user_id": "UBOT", "team": "test"}
            return {"ok": False, "error": "unknown_method"}


class _Handler(BaseHTTPRequestHandler):
    app: FakeSlack

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8") if length else ""
        is_json = "json" in (self.headers.get("Content-Type") or "")
        body: dict[str, Any] = json.loads(raw or "{}") if is_json else dict(parse_qsl(raw))
        method = self.path.rsplit("/", 1)[-1]
        answer = self.app.handle(method, self.headers.get("Authorization"), body)
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
