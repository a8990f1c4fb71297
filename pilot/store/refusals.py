"""What a refused request leaves behind: a counter for every one, an event row for a sample of them.

An unauthenticated caller can send refusals as fast as the network allows; one ``event`` row each would let it
fill the disk and hold the store's write lock (the kill switch's pause needs that lock). So every refusal
increments its counter (the API's ``learning_pilot_api_refusals_total{route, status}``) and a log line at most
once per window, and an event is written only for the first refusal of a ``(route, status, reason)`` in each window
(``api.refusal_event_every_s``); that event's ``data.suppressed`` says how many like it went unrecorded since the
previous one. Used by the HTTP API (pilot/service/) and the dashboard (pilot/dashboard/). Thread-safe: both call it
from their thread pools.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import Counter

from pilot.store.engine import Store
from pilot.store.status import EntityType
from pilot.store.writers import record_event

logger = logging.getLogger(__name__)

__all__ = ["RefusalLog"]


class RefusalLog:
    def __init__(
        self,
        store: Store,
        counter: Counter | None,
        *,
        every_s: float = 60.0,
        entity_type: EntityType = EntityType.API,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.counter = counter
        self.every_s = every_s
        self.entity_type = entity_type
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, int, str], float] = {}
        self._suppressed: dict[tuple[str, int, str], int] = {}

    def record(
        self,
        route: str,
        code: int,
        why: str,
        *,
        client: str,
        actor: str | None = None,
        entity_type: EntityType | None = None,
        entity_id: str | None = None,
    ) -> bool:
        """Count the refusal; write its event when it is the first of its kind this window. True if written."""
        if self.counter is not None:
            self.counter.labels(route, str(code)).inc()
        key = (route, code, why[:120])
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
            if len(self._last) > 10_000:  # reasons are ours, but keep the map bounded whatever they say
                self._last = {k: v for k, v in self._last.items() if now - v < self.every_s}
        logger.warning("Refused %s from %s (%d): %s (%d like it not recorded)", route, client, code, why, suppressed)
        with self.store.session(write=True) as session:
            record_event(
                session,
                entity_type=entity_type or self.entity_type,
                entity_id=(entity_id or route)[:80],
                actor=actor or f"remote:{client}",
                reason=f"refused: {why}",
                data={"status_code": code, "suppressed": suppressed},
            )
        return True
