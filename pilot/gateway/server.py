"""One gateway process: the app, its pooled upstream client, the route cache, the spool and the ingester.

``GatewayRuntime(settings, store)`` builds them; ``serve()`` runs uvicorn in the foreground (``learning-pilot
gateway``), ``start()`` in a background thread on a loopback port (tests, bench, demo). Several processes may
run side by side on one store, each with its own spool directory: nothing in them is leader-only (ingest skips
request ids already stored; the sweep and the feedback join are compare-and-set updates).

The ingester is a child process (pilot/gateway/ingester.py) that takes complete spool segments into the store;
feedback naming a call not stored yet flushes the spool and waits up to ``FEEDBACK_WAIT_S`` for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import aiohttp
import uvicorn
from pydantic import ValidationError

from pilot.gateway import ingester
from pilot.gateway.app import Gateway, create_app
from pilot.gateway.calls import IngestCounters, ScrubCache, ingest_segments
from pilot.gateway.feedback import FeedbackIn, FeedbackRefused, join
from pilot.gateway.ingester import IngesterConfig
from pilot.gateway.metrics import GatewayMetrics
from pilot.gateway.routing import RouteCache
from pilot.gateway.spool import Spool
from pilot.settings import Settings
from pilot.store import Store

logger = logging.getLogger(__name__)

FEEDBACK_WAIT_S = 2.0  # how long feedback for a call not yet in the store waits for the spool to catch up


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"_status": status, "error": {"message": message, "type": "invalid_request_error", "param": None,
                                         "code": code}}  # fmt: skip


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


class GatewayRuntime:
    def __init__(self, settings: Settings, store: Store, *, port: int | None = None) -> None:
        g = settings.gateway
        self.settings = settings
        self.store = store
        self.port = g.port if port is None else port
        self.spool = Spool(
            settings.spool_dir / str(self.port),
            fsync_interval_s=g.fsync_interval_s,
            max_bytes=int(g.spool_max_mb * 1024 * 1024),
        )
        self.routes = RouteCache(store, base_model=settings.training.base_model, refresh_s=g.route_refresh_s)
        self.metrics = GatewayMetrics()
        self.ingest_counters = IngestCounters()
        self._clean = ScrubCache()
        self._ingest_lock = threading.Lock()
        self._ingester: Any = None
        self._shared: ingester.SharedCounters | None = None
        self._server: uvicorn.Server | None = None
        self.window = timedelta(hours=g.feedback_window_h)
        self.gateway = Gateway(
            settings=g,
            store=store,
            routes=self.routes,
            spool=self.spool,
            client=None,
            metrics=self.metrics,
            on_feedback=self.feedback,
        )
        self._gauges()

    def _gauges(self) -> None:
        s, c = self.spool, self.spool.counters
        m = self.metrics

        def shared(name: str) -> Callable[[], float]:
            def read() -> float:
                mine = getattr(self.ingest_counters, name)
                return mine + (getattr(self._shared, name).value if self._shared is not None else 0)

            return read

        m.gauge("learning_pilot_gateway_records_dropped", "Calls not recorded: spool full or disk error.",
                lambda: c.dropped_full + c.dropped_error)  # fmt: skip
        m.gauge("learning_pilot_gateway_records_spooled", "Calls written to the spool and fsynced.", lambda: c.spooled)
        m.gauge("learning_pilot_gateway_records_ingested", "Spooled calls ingested into the store.", shared("ingested"))
        m.gauge("learning_pilot_gateway_records_recovered", "Calls found in the spool at start.", lambda: c.recovered)
        m.gauge("learning_pilot_gateway_spool_pending", "Calls in memory, not yet written.", lambda: s.pending)
        m.gauge("learning_pilot_gateway_spool_bytes", "Spool bytes on disk, not yet ingested.", lambda: s.bytes_on_disk)
        m.gauge("learning_pilot_gateway_store_failures", "Ingest batches the store refused.", shared("store_failures"))
        m.gauge("learning_pilot_gateway_route_failures", "Route refreshes that failed.", lambda: self.routes.failures)

    # -- background work --------------------------------------------------------------------------------------
    def ingest_now(self) -> int:
        """Ingest complete segments in this process (a clean stop, tests); the child does it the rest of the time."""
        with self._ingest_lock:
            return ingest_segments(
                self.spool, self.store, self._clean, self.ingest_counters, batch=self.settings.gateway.ingest_batch
            )

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every call answered so far is in the store (tests, bench)."""
        self.spool.flush()
        deadline = time.monotonic() + timeout
        while self.spool.segments() and time.monotonic() < deadline:
            time.sleep(0.02)

    def feedback(self, raw: Any, producer: str) -> dict[str, Any]:
        """``POST /v1/feedback`` (runs in the thread pool)."""
        try:
            body = FeedbackIn.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            self.metrics.feedback.labels("invalid").inc()
            return _error(400, "invalid_feedback", f"{where + ': ' if where else ''}{first['msg']}")
        deadline = time.monotonic() + FEEDBACK_WAIT_S
        while True:
            try:
                joined = join(self.store, body, window=self.window, producer=producer)
            except FeedbackRefused as exc:
                if exc.code == "unknown_request" and time.monotonic() < deadline:
                    # The call may still be on its way: write the spool and take it in here (rare: an outcome
                    # usually comes long after its call), then give the ingester a moment.
                    self.spool.flush()
                    self.ingest_now()
                    time.sleep(0.05)
                    continue
                self.metrics.feedback.labels(exc.code).inc()
                return _error(exc.status, exc.code, exc.reason)
            self.metrics.feedback.labels("replaced" if joined.replaced else "joined").inc()
            return joined.to_dict()

    def start_background(self) -> None:
        self.routes.start()
        self.spool.start()
        g = self.settings.gateway
        config = IngesterConfig(
            self.store.url, self.spool.directory, g.ingest_batch, self.window.total_seconds(), os.getpid(),
            train_on_unlabelled=g.train_on_unlabelled,
        )  # fmt: skip
        self._ingester, self._shared, self._ingester_stop = ingester.start(config)

    def stop_background(self) -> None:
        self.spool.stop()
        if self._ingester is not None:
            self._ingester_stop.set()
            self._ingester.join(timeout=30)
            if self._ingester.is_alive():
                self._ingester.kill()
        self.routes.stop()
        try:
            self.ingest_now()  # a clean stop leaves nothing behind when the store is up
        except Exception:
            logger.exception("Store unreachable at stop: %d bytes stay in %s", self.spool.bytes_on_disk,
                             self.spool.directory)  # fmt: skip

    # -- serving ----------------------------------------------------------------------------------------------
    def _config(self, **extra: Any) -> uvicorn.Config:
        return uvicorn.Config(
            create_app(self.gateway), log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=75,
            **extra,
        )  # fmt: skip

    def serve(self) -> None:
        """Run in the foreground until SIGINT/SIGTERM; spool and ingest stop cleanly after."""
        # uvicorn answers SIGTERM by draining, then re-raising it under the handler it found: with the default one
        # that would end the process before the spool's last interval is written. Ours turns it into a clean exit.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        self.start_background()
        g = self.settings.gateway
        logger.warning("Gateway on http://%s:%d/v1 -> %s (model %r)", g.host, self.port, g.upstream_url, g.model_name)
        try:
            asyncio.run(self._serve(uvicorn.Server(self._config(host=g.host, port=self.port))))
        except SystemExit:
            pass
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the final flush short
            self.stop_background()

    async def _serve(self, server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        # One pooled client for the process, made on the serving loop. aiohttp rather than httpx: httpcore's pool
        # scans every connection (a poll() each) per request, which cost ~6 ms of CPU per call at 50 clients.
        g = self.settings.gateway
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=g.connect_timeout_s, sock_read=g.read_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        self.gateway.client = client
        try:
            await server.serve(sockets=sockets)
        finally:
            await client.close()

    def start(self) -> str:
        """Serve from a background thread on an already-bound loopback socket; returns the base URL (``.../v1``)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it. asyncio sets it only when the socket's proto is IPPROTO_TCP, which a socket
        # made like this one lacks: without it Nagle and delayed ACKs add ~40 ms to a response written in two parts.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.settings.gateway.host, self.port))
        self.start_background()
        self._server = uvicorn.Server(self._config())
        server = self._server
        thread = threading.Thread(target=lambda: asyncio.run(self._serve(server, [sock])), daemon=True)
        thread.start()
        self._serve_thread = thread
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._serve_thread.join(timeout=10)
        self.stop_background()
