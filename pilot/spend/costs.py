"""Cost arithmetic, written once: what elapsed time on a host costs, what a run may spend, and whether live burn
would pass a reservation. Every caller (watchers, the kill switch, the reconciler, evaluation stages) uses these."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pilot.settings import BudgetSettings
from pilot.store.models import RunAttempt, TrainingRun, as_utc, utcnow
from pilot.store.status import AttemptStatus

# A run may spend its estimate times this (capped at the per-run cap): it is stopped when its live burn would pass
# the reservation. The approver is shown this maximum, not the estimate.
RESERVATION_HEADROOM = 1.5


def elapsed_cost(dph: float, start: datetime | None, end: datetime | None = None) -> float:
    """``dph`` dollars per hour from ``start`` to ``end`` (now when None); 0 when it never started."""
    if start is None or dph <= 0:
        return 0.0
    return cost_of_seconds(dph, ((end and as_utc(end)) or utcnow()).timestamp() - as_utc(start).timestamp())


def cost_of_seconds(dph: float, seconds: float) -> float:
    """``dph`` dollars per hour for ``seconds``: every "$/h x time" in the pilot is this or ``elapsed_cost``."""
    return round(max(dph, 0.0) * max(seconds, 0.0) / 3600, 6)


def reservation_for(estimated_usd: float, caps: BudgetSettings) -> float:
    """The most a run priced at ``estimated_usd`` may spend: the estimate plus headroom, within the per-run cap
    (never below the estimate: a run the cap cannot cover is refused by the caps, not silently shrunk)."""
    reserved = round(min(estimated_usd * RESERVATION_HEADROOM, caps.per_run_usd), 4)
    return max(reserved, round(estimated_usd, 4))


def attempts_cost(attempts: Iterable[RunAttempt], now: datetime | None = None) -> float:
    """Elapsed time x $/h of every attempt that rented something (launch to end, or to now while it may bill)."""
    total = 0.0
    for a in attempts:
        if a.launched_at is None or AttemptStatus(a.status) in (AttemptStatus.LAUNCH_FAILED, AttemptStatus.REFUSED):
            continue
        total += elapsed_cost(a.dph, a.launched_at, a.ended_at or now)
    return round(total, 6)


def burn_exceeds_reservation(run: TrainingRun, now: datetime, *, horizon_s: float = 300.0) -> bool:
    """True when the run's spend ``horizon_s`` from now (elapsed time x $/h) would pass its reservation.

    Call it on every poll of a live run: a True answer means stop the instance now
    (``RunTerminationReason.BUDGET_EXCEEDED``) rather than spend money no cap ever approved. The horizon is
    one poll interval or more, so the check fires before the reservation is crossed, not after.
    """
    if run.dph <= 0:
        return False
    started = as_utc(run.started_at or run.created_at)
    hours = (max((now - started).total_seconds(), 0.0) + horizon_s) / 3600
    return run.dph * hours > reserved_for_run(run) + 1e-9


def reserved_for_run(run: TrainingRun) -> float:
    return float((run.config or {}).get("reserved_usd", run.estimated_cost_usd))
