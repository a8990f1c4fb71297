"""One gateway process: the app, its pooled upstream client, the route cache, the spool and the ingester.

``GatewayRuntime(settings, store)`` builds them; ``serve()`` runs uvicorn in the foreground (``learning-pilot
gateway``), ``start()`` in a background thread on a loopback port (tests, bench, demo). Several processes may
run side by side on one store, each with its own spool directory: nothing in them is leader-only (ingest skips
request ids already stored; the sweep and the feedback join are compare-and-set updates).

The ingester thread takes complete spool segments into the store every ``INGEST_EVERY_S`` (and at once when
feedback names a call not stored yet); while the store is down the segments stay on disk and it retries with
backoff, logging the outage once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import uvicorn
from pydantic import ValidationError

from pilot.gateway.app import Gateway, create_app
from pilot.gateway.calls import IngestCounters, ScrubCache, ingest_segments, sweep
from pilot.gateway.feedback import FeedbackIn, FeedbackRefused, join
from pilot.gateway.metrics import GatewayMetrics
from pilot.gateway.routing import RouteCache
from pilot.gateway.spool import Spool
from pilot.settings import Settings
from pilot.store import Store

logger = logging.getLogger(__name__)

INGEST_EVERY_S = 0.1
SWEEP_EVERY_S = 60.0
FEEDBACK_WAIT_S = 2.0  # how long feedback for a call not yet in the store waits for the spool to catch up


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"_status": status, "error": {"message": message, "type": "invalid_request_error", "param": None,
                                         "code": code}}  # fmt: skip


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
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: uvicorn.Server | None = None
        self.window = timedelta(hours=g.feedback_window_h)
        timeout = httpx.Timeout(
            connect=g.connect_timeout_s, read=g.read_timeout_s, write=30.0, pool=g.connect_timeout_s
        )
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256, keepalive_expiry=30)
        self.gateway = Gateway(
            settings=g,
            store=store,
            routes=self.routes,
            spool=self.spool,
            client=httpx.AsyncClient(timeout=timeout, limits=limits),
            metrics=self.metrics,
            on_feedback=self.feedback,
        )
        self._gauges()

    def _gauges(self) -> None:
        s, c, i = self.spool, self.spool.counters, self.ingest_counters
        m = self.metrics
        m.gauge("learning_pilot_gateway_records_dropped", "Calls not recorded: spool full or disk error.",
                lambda: c.dropped_full + c.dropped_error)  # fmt: skip
        m.gauge("learning_pilot_gateway_records_spooled", "Calls written to the spool and fsynced.", lambda: c.spooled)
        m.gauge("learning_pilot_gateway_records_ingested", "Spooled calls ingested into the store.", lambda: i.ingested)
        m.gauge("learning_pilot_gateway_records_recovered", "Calls found in the spool at start.", lambda: c.recovered)
        m.gauge("learning_pilot_gateway_spool_pending", "Calls in memory, not yet written.", lambda: s.pending)
        m.gauge("learning_pilot_gateway_spool_bytes", "Spool bytes on disk, not yet ingested.", lambda: s.bytes_on_disk)
        m.gauge("learning_pilot_gateway_store_failures", "Ingest batches the store refused.", lambda: i.store_failures)
        m.gauge("learning_pilot_gateway_route_failures", "Route refreshes that failed.", lambda: self.routes.failures)

    # -- background work --------------------------------------------------------------------------------------
    def ingest_now(self) -> int:
        with self._ingest_lock:
            return ingest_segments(
                self.spool, self.store, self._clean, self.ingest_counters, batch=self.settings.gateway.ingest_batch
            )

    def _ingest_loop(self) -> None:
        backoff, down, last_sweep = INGEST_EVERY_S, False, 0.0
        while not self._stop.wait(backoff):
            try:
                self.ingest_now()
                if time.monotonic() - last_sweep > SWEEP_EVERY_S:
                    sweep(self.store, window=self.window)
                    last_sweep = time.monotonic()
            except Exception:  # loop boundary: the store is down; segments stay in the spool
                self.ingest_counters.store_failures += 1
                if not down:
                    logger.exception(
                        "Store refused spooled calls; they wait in %s and are retried", self.spool.directory
                    )
                down, backoff = True, min(backoff * 2, 5.0)
                continue
            if down:
                logger.warning("Store reachable again: spooled calls are being ingested")
            down, backoff = False, INGEST_EVERY_S

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
                    self.spool.flush()  # the call may still be on its way into the store
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
        thread = threading.Thread(target=self._ingest_loop, name="gateway-ingest", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop_background(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.spool.stop()
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
        self.start_background()
        g = self.settings.gateway
        logger.warning("Gateway on http://%s:%d/v1 -> %s (model %r)", g.host, self.port, g.upstream_url, g.model_name)
        try:
            asyncio.run(self._serve(uvicorn.Server(self._config(host=g.host, port=self.port))))
        finally:
            self.stop_background()

    async def _serve(self, server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        try:
            await server.serve(sockets=sockets)
        finally:
            await self.gateway.client.aclose()

    def start(self) -> str:
        """Serve from a background thread on an already-bound loopback socket; returns the base URL (``.../v1``)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
