"""Background workers: small, idempotent, level-triggered passes the daemon's scheduler runs, one concern each.

``advance_runs``: every run in flight gets one step (``pilot.runs.driver.advance_run``: rent if nothing is
rented, else poll the host and act on what it says), each under the run's lease, so a run ``run --once`` (or
another daemon) is driving is left alone and no run is ever driven twice. ``advance_stages``
(pilot/evaluation/stages.py) does the same for evaluation stages on rented hosts. A restart at any point just continues:
everything a step needs is in the store.

``settle_charges``: spend settled at an estimate (the provider had not published its charges, or less than
elapsed time x $/h) is re-read from the provider and corrected upwards (``pilot.runs.attempts.resettle``; bounded
by ``budget.settle_max_tries`` and ``budget.settle_window_h``).
"""

from __future__ import annotations

import logging

from sqlmodel import col, select

from pilot.context import PilotContext
from pilot.runs.attempts import ResettleReport, resettle
from pilot.runs.driver import advance_run
from pilot.store.leases import LeaseKeeper, run_lease
from pilot.store.models import TrainingRun
from pilot.store.status import RunStatus

logger = logging.getLogger(__name__)


def advance_runs(ctx: PilotContext) -> list[str]:
    """One step for every run in flight that no other process holds; returns the ids of the runs that ended."""
    with ctx.store.session() as session:
        live = session.exec(
            select(TrainingRun.id).where(col(TrainingRun.status).in_([s.value for s in RunStatus if not s.is_terminal]))
        ).all()
    ended: list[str] = []
    for run_id in live:
        with LeaseKeeper(ctx.store, run_lease(run_id), ctx.owner, ttl_s=ctx.settings.scheduler.lease_ttl_s) as lease:
            if not lease.held:
                continue
            try:
                run = advance_run(ctx, run_id, lease=lease.name)
            except Exception:
                logger.exception("Advancing run %s failed; the next pass retries", run_id)
                continue
        if RunStatus(run.status).is_terminal:
            ended.append(run_id)
    return ended


def settle_charges(ctx: PilotContext) -> ResettleReport:
    """One pass of the settle worker: re-read the provider's charges for what was settled at an estimate."""
    report = resettle(ctx)
    if report.raised or report.closed:
        logger.info("Settle worker: raised %s, closed %s", report.raised, report.closed)
    return report
