"""One gateway process: the app, its pooled upstream client, the route cache, the spool and the ingester.

``GatewayRuntime(settings, store)`` builds them; ``serve()`` runs the aiohttp server in the foreground
(``learning-pilot gateway``), ``start()`` in a background thread on a loopback port (tests, bench, demo). A stop
(SIGTERM/SIGINT, or ``stop()``) closes the listening socket, lets open requests finish (``SHUTDOWN_S``), then
writes the spool and ingests it. Several processes may
run side by side on one store, each with its own spool directory: nothing in them is leader-only (ingest skips
request ids already stored; the sweep and the feedback join are compare-and-set updates).
``learning-pilot gateway --workers N`` runs N of them on one port (pilot/gateway/workers.py).

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
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import ValidationError

from pilot.gateway import ingester
from pilot.gateway.app import Gateway, create_app
from pilot.gateway.calls import IngestCounters, ScrubCache, ingest_segments
from pilot.gateway.feedback import FeedbackIn, FeedbackRefused, join
from pilot.gateway.ingester import IngesterConfig
from pilot.gateway.metrics import SNAPSHOT_S, GatewayMetrics, WorkerTotals
from pilot.gateway.routing import RouteCache
from pilot.gateway.spool import Spool
from pilot.settings import Settings
from pilot.store import Store

try:  # libuv's event loop: less CPU per call than asyncio's own (docs/gateway.md "Figures"); optional
    import uvloop

    _loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
except ImportError:  # pragma: no cover - a platform without it
    _loop_factory = None

logger = logging.getLogger(__name__)

FEEDBACK_WAIT_S = 2.0  # how long feedback for a call not yet in the store waits for the spool to catch up
SHUTDOWN_S = 30.0  # how long a stop waits for open requests (a long stream) before closing them
PARENT_CHECK_S = 1.0  # how often a worker checks that its supervisor is alive


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"_status": status, "error": {"message": message, "type": "invalid_request_error", "param": None,
                                         "code": code}}  # fmt: skip


class GatewayRuntime:
    def __init__(self, settings: Settings, store: Store, *, port: int | None = None, worker: int = 0,
                 totals_dir: Path | None = None) -> None:  # fmt: skip
        g = settings.gateway
        self.settings = settings
        self.store = store
        self.port = g.port if port is None else port
        self.worker = worker  # its index among the processes on this port (pilot/gateway/workers.py); 0 alone
        self.spool = Spool(
            settings.spool_dir / (str(self.port) if worker == 0 else f"{self.port}-{worker}"),
            fsync_interval_s=g.fsync_interval_s,
            max_bytes=int(g.spool_max_mb * 1024 * 1024),
        )
        self.routes = RouteCache(store, base_model=settings.training.base_model, refresh_s=g.route_refresh_s)
        self.metrics = GatewayMetrics()
        # With several workers on the port (pilot/gateway/workers.py), /metrics answers with their totals
        self.totals = None if totals_dir is None else WorkerTotals(totals_dir, worker, self.metrics)
        self.ingest_counters = IngestCounters()
        self._clean = ScrubCache()
        self._ingest_lock = threading.Lock()
        self._ingester: Any = None
        self._shared: ingester.SharedCounters | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._serve_thread: threading.Thread | None = None
        self.window = timedelta(hours=g.feedback_window_h)
        self.gateway = Gateway(
            settings=g,
            store=store,
            routes=self.routes,
            spool=self.spool,
            client=None,
            metrics=self.metrics,
            on_feedback=self.feedback,
            extra={"worker": worker, "pid": os.getpid()},
            totals=self.totals,
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
        m.gauge("learning_pilot_gateway_worker", "Index of the process that answered (its figures are its own).",
                lambda: self.worker)  # fmt: skip

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
        self._write_totals()  # the last figures, for the totals while a replacement starts
        self.spool.close()

    # -- serving ----------------------------------------------------------------------------------------------
    def serve(self, *, sock: socket.socket | None = None, parent_pid: int | None = None) -> None:
        """Run in the foreground until SIGINT/SIGTERM (or, for a worker, until ``parent_pid`` is gone); spool and
        ingest stop cleanly after. ``sock``: a listening socket handed over by pilot/gateway/workers.py."""
        self.start_background()
        g = self.settings.gateway
        logger.warning("Gateway%s on http://%s:%d/v1 -> %s (model %r)", f" worker {self.worker}" if sock else "",
                       g.host, self.port, g.upstream_url, g.model_name)  # fmt: skip
        try:
            with asyncio.Runner(loop_factory=_loop_factory) as runner:
                runner.run(self._serve(sock=sock, host=g.host, signals=True, parent_pid=parent_pid))
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the final flush short
            self.stop_background()

    async def _serve(self, *, sock: socket.socket | None = None, host: str = "", signals: bool = False,
                     started: threading.Event | None = None, parent_pid: int | None = None) -> None:  # fmt: skip
        # One pooled client for the process, made on the serving loop. aiohttp rather than httpx: httpcore's pool
        # scans every connection (a poll() each) per request, which cost ~6 ms of CPU per call at 50 clients.
        g = self.settings.gateway
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stopping.set)
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=g.connect_timeout_s, sock_read=g.read_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        self.gateway.client = client
        runner = web.AppRunner(
            create_app(self.gateway), access_log=None, keepalive_timeout=75, shutdown_timeout=SHUTDOWN_S,
            handler_cancellation=True,  # a client that leaves cancels its call upstream (off by default since 3.9)
            lingering_time=1.0,  # the rest of a refused (413) body is read and dropped for 1 s, not aiohttp's 10
        )  # fmt: skip
        await runner.setup()
        try:
            site: web.BaseSite = (
                web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, self.port)
            )
            await site.start()
            if started is not None:
                started.set()
            if parent_pid is not None:
                self._watch_parent(parent_pid)
            if self.totals is not None:
                self._snapshot()
            await self._stopping.wait()
        finally:
            await runner.cleanup()  # stops listening, waits for open requests, then closes what is left
            await client.close()

    def _write_totals(self) -> None:
        """This worker's figures for the totals on its port (pilot/gateway/metrics.py); nothing for a single one."""
        if self.totals is None:
            return
        try:
            self.totals.snapshot()
        except OSError as exc:  # a full disk: the totals lag, the calls go on
            logger.warning("Cannot write the metrics file %s: %s", self.totals.path, exc)

    def _snapshot(self) -> None:
        """``_write_totals`` once a second while serving (a stop writes them a last time)."""
        assert self._loop is not None
        self._write_totals()
        self._loop.call_later(SNAPSHOT_S, self._snapshot)

    def _watch_parent(self, parent_pid: int) -> None:
        """A worker whose supervisor is gone (``kill -9``) stops, as SIGTERM would stop it."""
        assert self._loop is not None and self._stopping is not None
        if os.getppid() != parent_pid:
            self._stopping.set()
        else:
            self._loop.call_later(PARENT_CHECK_S, self._watch_parent, parent_pid)

    def start(self) -> str:
        """Serve from a background thread on an already-bound loopback socket; returns the base URL (``.../v1``)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.gateway.host, self.port))
        self.start_background()
        started = threading.Event()

        def run() -> None:
            with asyncio.Runner(loop_factory=_loop_factory) as runner:
                runner.run(self._serve(sock=sock, started=started))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._serve_thread = thread
        if not started.wait(10):
            raise RuntimeError("the gateway did not start")
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    def stop(self) -> None:
        if self._serve_thread is not None and self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._serve_thread.join(timeout=SHUTDOWN_S + 5)
        self.stop_background()
