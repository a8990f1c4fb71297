"""The gateway's ingester: a child process that takes complete spool segments into the store.

Why a process: scrubbing is CPU-bound Python, and a CPU-bound thread next to the event loop makes every loop
iteration wait for the GIL (the switch interval, 5 ms): the proxy would slow down with the traffic it records.
In its own process it costs the proxy nothing but a core's share.

Invariants: it only reads and deletes complete segments (``*.jsonl``) of its gateway's spool directory, commits a
batch before deleting its segments (pilot/gateway/calls.py), retries with backoff while the store is down
(logging the outage once), sweeps expired open calls every ``SWEEP_EVERY_S`` (into records too when
``gateway.train_on_unlabelled`` is on), and exits when its parent is gone
(a ``kill -9`` of the gateway leaves no orphan ingesting behind the next start's back for long).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.synchronize
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pilot.gateway.calls import IngestCounters, ScrubCache, ingest_segments, sweep
from pilot.gateway.feedback import records_for_unlabelled
from pilot.gateway.spool import Spool
from pilot.store import Store

logger = logging.getLogger(__name__)

INGEST_EVERY_S = 0.1
SWEEP_EVERY_S = 60.0


@dataclass(frozen=True)
class IngesterConfig:
    database_url: str
    spool_dir: Path
    batch: int
    window_s: float
    parent_pid: int  # the gateway: read there, since it may be gone before this process has finished starting
    train_on_unlabelled: bool = False  # gateway.train_on_unlabelled: expired calls become records too


class SharedCounters:
    """``IngestCounters`` the parent can read (for /metrics) while the child writes them.

    Lock-free shared int64s (one writer): a lock held by a process that is killed would hang the other one.
    """

    def __init__(self, ctx: Any) -> None:
        self.ingested = ctx.Value("q", 0, lock=False)
        self.bad = ctx.Value("q", 0, lock=False)
        self.store_failures = ctx.Value("q", 0, lock=False)

    def publish(self, counters: IngestCounters) -> None:
        self.ingested.value = counters.ingested
        self.bad.value = counters.bad
        self.store_failures.value = counters.store_failures


def run(config: IngesterConfig, shared: SharedCounters, stop: multiprocessing.synchronize.Event) -> None:
    """The child's main loop (``multiprocessing`` spawn target)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Store(config.database_url)
    spool = Spool(config.spool_dir, recover=False)
    clean, counters = ScrubCache(), IngestCounters()
    window = timedelta(seconds=config.window_s)
    backoff, down, last_sweep = INGEST_EVERY_S, False, 0.0
    while not stop.wait(backoff):
        if os.getppid() != config.parent_pid:
            break  # the gateway died: the next start ingests what is left
        try:
            ingest_segments(spool, store, clean, counters, batch=config.batch)
            if time.monotonic() - last_sweep > SWEEP_EVERY_S:
                expired = sweep(store, window=window)
                if config.train_on_unlabelled and expired:
                    records_for_unlabelled(store, expired)
                last_sweep = time.monotonic()
        except Exception:  # loop boundary: the store is down; segments stay in the spool
            counters.store_failures += 1
            if not down:
                logger.exception("Store refused spooled calls; they wait in %s and are retried", spool.directory)
            down, backoff = True, min(backoff * 2, 5.0)
        else:
            if down:
                logger.warning("Store reachable again: spooled calls are being ingested")
            down, backoff = False, INGEST_EVERY_S
        shared.publish(counters)
    store.close()


def start(config: IngesterConfig) -> tuple[multiprocessing.process.BaseProcess, SharedCounters, Any]:
    ctx = multiprocessing.get_context("spawn")
    shared, stop = SharedCounters(ctx), ctx.Event()
    process = ctx.Process(target=run, args=(config, shared, stop), name="gateway-ingester", daemon=True)
    process.start()
    return process, shared, stop
