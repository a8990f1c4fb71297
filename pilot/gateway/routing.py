"""Which adapter serves a session: the canary's choice (pilot/serving/canary.py), cached between store reads.

Invariants: the route is ``canary.route_for`` over the stored rollout and champion, so the gateway and
``GET /v1/route`` never disagree for one state; that state is re-read every ``gateway.route_refresh_s`` by a
background thread (a promotion or rollback is followed within that, with no restart), and a failed read keeps
the last good state (a store outage never stops traffic; it is logged and counted). Nothing here is leader-only:
every gateway process reads the same rows.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from pilot.serving import canary
from pilot.store import Store
from pilot.store.writers import alias_target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteState:
    rollout: canary.Rollout | None
    champion: str | None


class RouteCache:
    def __init__(self, store: Store, *, base_model: str, refresh_s: float) -> None:
        self.store = store
        self.base_model = base_model
        self.refresh_s = refresh_s
        self.state = RouteState(None, None)
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> RouteState:
        with self.store.session() as session:
            state = RouteState(canary.get_rollout(session), alias_target(session, canary.CHAMPION))
        if state != self.state:
            logger.info("Routing now: champion %s, canary %s", state.champion or "base", state.rollout)
        self.state = state
        return state

    def route(self, session_id: str) -> canary.Route:
        state = self.state
        return canary.route_for(state.rollout, state.champion, self.base_model, session_id)

    def start(self) -> RouteCache:
        try:
            self.refresh()
        except Exception:  # the store is down at start: serve the base model until it answers
            self.failures += 1
            logger.exception("Could not read routes from the store at start; the base model serves until it answers")
        self._thread = threading.Thread(target=self._run, name="gateway-routes", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # loop boundary: keep serving the last good routes
                self.failures += 1
                logger.exception("Could not re-read routes from the store; keeping champion %s", self.state.champion)
