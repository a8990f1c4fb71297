"""Several gateway processes behind one port: ``learning-pilot gateway --workers N`` (``gateway.workers``).

The parent binds N listening sockets to the one port with ``SO_REUSEPORT`` (the kernel spreads new connections
over them by a hash of the connection's addresses, so keep-alive clients are spread too) and hands socket i to
worker i, a spawned process running a ``GatewayRuntime`` of its own (pilot/gateway/server.py): its own upstream
pool, route cache, spool directory (``<spool_dir>/<port>`` for worker 0, as a single process has, and
``<port>-<i>`` for worker i) and ingester child. Nothing in a worker is leader-only, so nothing is shared.

Invariants:
- The parent keeps its copy of every listening socket open: a dead worker's socket still listens, and connections
  the kernel gives it meanwhile wait in its backlog until the replacement (same index, same socket, same spool)
  accepts them. The replacement recovers what the dead one left in the spool (pilot/gateway/spool.py), so a
  ``kill -9`` of a worker loses at most its last ``fsync_interval_s`` of records and the calls it had open.
- A worker that dies is restarted; more than ``RESTART_LIMIT`` deaths within ``RESTART_WINDOW_S`` stop the
  others and the parent exits 1. SIGTERM/SIGINT stop every worker cleanly (each writes and ingests its spool)
  and the parent exits 0. A worker whose parent is gone stops itself (pilot/gateway/server.py).
- The parent holds no store connection and serves nothing. It holds the port's lock (``<port>-metrics/.lock``,
  pilot/gateway/locks.py) and each worker its spool's, so a second gateway on the port stops with an error.
- ``/metrics`` on any worker answers with the totals over all of them, which never go down while the parent runs
  (a replacement starts from what its predecessor last wrote; pilot/gateway/metrics.py); ``?scope=worker`` is
  the answering worker's own figures.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from pilot.gateway.locks import ProcessLock
from pilot.gateway.spool import LOCK_NAME
from pilot.settings import Settings

logger = logging.getLogger(__name__)

RESTART_LIMIT = 5  # worker deaths tolerated within RESTART_WINDOW_S before the parent gives up
RESTART_WINDOW_S = 60.0
STOP_WAIT_S = 45.0  # a stop waits this long for the workers (each lets open requests finish, up to 30 s)
BACKLOG = 128  # as aiohttp's SockSite, which listens on the socket again when a worker starts serving it


def listeners(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port (``SO_REUSEPORT``), or one shared one where the OS lacks it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    shared = not hasattr(socket, "SO_REUSEPORT")
    socks: list[socket.socket] = []
    for _ in range(1 if shared else count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]  # port 0: the rest join the one the first got
        sock.listen(BACKLOG)
        socks.append(sock)
    return socks


def _worker(config: Path | None, index: int, sock: socket.socket, port: int, parent_pid: int, totals: Path) -> None:
    """One serving process (``multiprocessing`` spawn target)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pilot import testpoints
    from pilot.gateway.server import GatewayRuntime
    from pilot.settings import load_settings
    from pilot.store import Store

    testpoints.install_crash_from_env()
    testpoints.reached("gateway.worker_start")
    settings = load_settings(config)
    store = Store(settings.database_url)
    try:
        runtime = GatewayRuntime(settings, store, port=port, worker=index, totals_dir=totals)
        runtime.serve(sock=sock, parent_pid=parent_pid)
    finally:
        store.close()


def own_port(spool_dir: Path, port: int) -> tuple[Path, ProcessLock]:
    """Lock ``<spool_dir>/<port>-metrics``, the workers' figures for /metrics' totals (pilot/gateway/metrics.py),
    and empty it (fresh for each supervisor); returns the directory and the held lock."""
    totals = spool_dir / f"{port}-metrics"
    totals.mkdir(parents=True, mode=0o700, exist_ok=True)
    lock = ProcessLock(totals / LOCK_NAME, f"Port {port}")
    for path in totals.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.name != LOCK_NAME:
            path.unlink()
    return totals, lock


class Supervisor:
    def __init__(self, config: Path | None, settings: Settings, workers: int, port: int | None = None) -> None:
        g = settings.gateway
        self.config = config
        self.host = g.host
        self.count = workers
        wanted = g.port if port is None else port
        # One supervisor per port (pilot/gateway/locks.py): SO_REUSEPORT would let a second one bind it and share
        # the first one's spools and figures. Taken before binding, so a second one never takes a connection.
        held = own_port(settings.spool_dir, wanted) if wanted else None
        self.socks = listeners(g.host, wanted, workers)
        self.port = int(self.socks[0].getsockname()[1])
        self.totals, self._owner = held or own_port(settings.spool_dir, self.port)  # port 0: the port it got
        self.procs: dict[int, Any] = {}
        self.deaths: collections.deque[float] = collections.deque()
        self.stopping = threading.Event()
        self._ctx = multiprocessing.get_context("spawn")

    def _start(self, index: int) -> None:
        sock = self.socks[index % len(self.socks)]
        process = self._ctx.Process(
            target=_worker,
            args=(self.config, index, sock, self.port, os.getpid(), self.totals),
            name=f"gateway-worker-{index}",
        )
        process.start()
        self.procs[index] = process

    def run(self) -> int:
        """Start the workers and keep them running until SIGTERM/SIGINT (0) or they keep dying (1)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        logger.warning("Gateway on http://%s:%d/v1 with %d worker processes", self.host, self.port, self.count)
        for index in range(self.count):
            self._start(index)
        code = 0
        while not self.stopping.is_set():
            sentinels = {p.sentinel: i for i, p in self.procs.items()}
            for ready in multiprocessing.connection.wait(list(sentinels), timeout=0.5):
                index = sentinels[ready]  # type: ignore[index]
                dead = self.procs[index]
                dead.join()
                if self.stopping.is_set():
                    break
                now = time.monotonic()
                self.deaths.append(now)
                while self.deaths and self.deaths[0] < now - RESTART_WINDOW_S:
                    self.deaths.popleft()
                if len(self.deaths) > RESTART_LIMIT:
                    logger.error("Gateway workers died %d times in %.0f s: stopping", len(self.deaths),
                                 RESTART_WINDOW_S)  # fmt: skip
                    self.stopping.set()
                    code = 1
                    break
                logger.warning("Gateway worker %d (pid %s) exited with %s: restarting it", index, dead.pid,
                               dead.exitcode)  # fmt: skip
                self._start(index)
        self.stop()
        return code

    def stop(self) -> None:
        for process in self.procs.values():
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker stops cleanly
        deadline = time.monotonic() + STOP_WAIT_S
        for process in self.procs.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("Gateway worker pid %s did not stop in time: killed", process.pid)
                process.kill()
                process.join()
        for sock in self.socks:
            sock.close()
        self._owner.release()


def supervise(config: Path | None, settings: Settings, workers: int, port: int | None = None) -> int:
    return Supervisor(config, settings, workers, port).run()
