"""Cost arithmetic: what elapsed time on a host costs, and whether live burn would pass a reservation."""

from __future__ import annotations

from datetime import datetime

from pilot.store.models import TrainingRun, as_utc


def burn_exceeds_reservation(run: TrainingRun, now: datetime, *, horizon_s: float = 300.0) -> bool:
    """True when the run's spend ``horizon_s`` from now (elapsed time x $/h) would pass its reservation.

    Call it on every poll of a live run (``pilot.runs.driver.watch_run``): a True answer means stop the instance now
    (``RunTerminationReason.BUDGET_EXCEEDED``) rather than spend money no cap ever approved. The horizon is
    one poll interval or more, so the check fires before the reservation is crossed, not after.
    """
    if run.dph <= 0:
        return False
    started = as_utc(run.started_at or run.created_at)
    hours = (max((now - started).total_seconds(), 0.0) + horizon_s) / 3600
    reserved = float((run.config or {}).get("reserved_usd", run.estimated_cost_usd))
    return run.dph * hours > reserved + 1e-9
