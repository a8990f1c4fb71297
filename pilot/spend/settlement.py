"""Settlement that never under-counts: spend settled at an estimate is re-read from the provider later.

When a run (or an evaluation stage) ends, its spend is settled with what the provider charged for its label; when
the provider has published no charge row yet, or less than elapsed time x $/h, the ledger keeps the larger figure
(the estimate) and ``expect_charges`` queues the label here. The settle worker (``pilot.runs.attempts.resettle``,
a daemon job every ``budget.settle_recheck_s``) re-reads the provider's charges, one call for every label due, and
settles again: ``pilot.spend.ledger.settle`` keeps the larger figure, so a provider figure above the estimate
raises the ledger, never lowers it.

Decision: a provider figure below the estimate lowers it only once it is **authoritative**: the same figure on two
reads at least ``budget.settle_recheck_s`` apart (the read at settlement counts), for a run already settled (its
instances confirmed gone, so nothing more can accrue). Until then the estimate stays: a lower figure right after a
run may be charges still being published, and an under-count lets the caps stop counting real spend, while an
over-count of a few cents for ten minutes is safe. A figure that keeps changing never lowers anything. A figure
above the estimate raises the ledger at once. The re-reads are bounded: at most ``budget.settle_max_tries``
tries, backing off, within ``budget.settle_window_h`` of settling; then the entry is closed with the reason, the
estimate stays, and an event says so.

Only this module writes ``pending_settlement`` rows.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from pilot.settings import BudgetSettings
from pilot.store.models import EvalStage, PendingSettlement, SpendEntry, TrainingRun, as_utc, utcnow
from pilot.store.status import EntityType
from pilot.store.writers import record_event

logger = logging.getLogger(__name__)


def expect_charges(
    session: Session,
    *,
    label: str,
    run_id: str,
    since: float,
    estimate_usd: float,
    provider_usd: float | None,
    budget: BudgetSettings,
    now: datetime | None = None,
) -> PendingSettlement:
    """Queue (or refresh) ``label`` for a later re-read of the provider's charges. Idempotent per label."""
    now = now or utcnow()
    row = session.get(PendingSettlement, label)
    if row is None:
        row = PendingSettlement(
            label=label,
            run_id=run_id,
            since=since,
            estimate_usd=estimate_usd,
            provider_usd=provider_usd,
            next_at=now + timedelta(seconds=budget.settle_recheck_s),
            until=now + timedelta(hours=budget.settle_window_h),
        )
        session.add(row)
    else:
        row.estimate_usd = max(row.estimate_usd, estimate_usd)
        row.provider_usd = provider_usd
        if row.done:  # settled again (e.g. the kill switch, then the reconciler): look again
            row.done, row.outcome, row.tries = False, None, 0
            row.next_at = now + timedelta(seconds=budget.settle_recheck_s)
            row.until = now + timedelta(hours=budget.settle_window_h)
    session.flush()
    logger.info(
        "%s: provider charges %s < estimate $%.4f; the ledger keeps the estimate and re-reads the charges later",
        label,
        "missing" if provider_usd is None else f"${provider_usd:.4f}",
        estimate_usd,
    )
    return row


def due(session: Session, now: datetime | None = None) -> list[PendingSettlement]:
    now = now or utcnow()
    return list(
        session.exec(
            select(PendingSettlement)
            .where(PendingSettlement.done == False, col(PendingSettlement.next_at) <= now)  # noqa: E712
            .order_by(col(PendingSettlement.next_at))
        ).all()
    )


def is_settled(session: Session, run_id: str, category: str = "gpu") -> bool:
    """Whether the ledger has an actual entry for ``run_id`` (a re-read never settles a run still reserved)."""
    return (
        session.exec(
            select(SpendEntry.id).where(
                SpendEntry.run_id == run_id, SpendEntry.kind == "actual", SpendEntry.category == category
            )
        ).first()
        is not None
    )


def record_try(
    session: Session,
    label: str,
    provider_usd: float | None,
    *,
    budget: BudgetSettings,
    now: datetime | None = None,
) -> PendingSettlement | None:
    """One re-read of ``label``: closed when the provider's figure covers the estimate, or is authoritative (the
    same on two reads: the ledger entry is set to it, see the module docstring), or when the tries or the window
    are spent (the estimate stays; an event says why); otherwise the next try, backing off."""
    now = now or utcnow()
    row = session.get(PendingSettlement, label)
    if row is None or row.done:
        return row
    row.tries += 1
    previous, row.provider_usd = row.provider_usd, provider_usd
    shown = "no charge" if provider_usd is None else f"${provider_usd:.4f}"
    if provider_usd is not None and provider_usd >= row.estimate_usd - 1e-9:
        row.done, row.outcome = True, f"provider charges {shown} cover the estimate ${row.estimate_usd:.4f}"
    elif provider_usd is not None and previous is not None and abs(provider_usd - previous) <= 1e-9:
        row.done = True
        row.outcome = (
            f"provider charges {shown} unchanged on two reads: authoritative, they replace the estimate "
            f"${row.estimate_usd:.4f}"
        )
        _set_actual(session, row.run_id, row.category, provider_usd, note=f"settlement: {row.outcome}"[:500])
        _closed_event(session, row)
    elif row.tries >= budget.settle_max_tries or now >= as_utc(row.until):
        row.done = True
        row.outcome = (
            f"gave up after {row.tries} tries: the provider shows {shown} for {label}; the estimate "
            f"${row.estimate_usd:.4f} stays in the ledger"
        )
        _closed_event(session, row)
        logger.warning("Settlement of %s: %s", row.run_id, row.outcome)
    else:
        row.next_at = now + timedelta(seconds=budget.settle_recheck_s * min(2 ** (row.tries - 1), 16))
    session.flush()
    return row


def _closed_event(session: Session, row: PendingSettlement) -> None:
    record_event(
        session,
        entity_type=EntityType.INSTANCE,
        entity_id=row.run_id,
        actor="system",
        reason=f"settlement: {row.outcome}",
        data={"label": row.label, "estimate_usd": row.estimate_usd, "provider_usd": row.provider_usd},
    )


def _set_actual(session: Session, run_id: str, category: str, amount_usd: float, *, note: str) -> None:
    """The one place an actual entry may go down: an authoritative provider figure (see the module docstring)."""
    entry = session.exec(
        select(SpendEntry).where(
            SpendEntry.run_id == run_id, SpendEntry.kind == "actual", SpendEntry.category == category
        )
    ).first()
    if entry is not None and entry.amount_usd != amount_usd:
        logger.info(
            "Run %s: settled cost set to the provider's $%.6f (was $%.6f)", run_id, amount_usd, entry.amount_usd
        )
        entry.amount_usd = amount_usd
        entry.note = note
    mirror_actual(session, run_id, amount_usd, lower=True)


def mirror_actual(session: Session, run_id: str, amount_usd: float, *, lower: bool = False) -> None:
    """Show a settled figure on the run's (or evaluation stage's) row; only ``lower`` (an authoritative figure)
    may bring the row's figure down."""
    row = session.get(TrainingRun, run_id) or session.get(EvalStage, run_id)
    if row is not None:
        row.actual_cost_usd = amount_usd if lower else max(row.actual_cost_usd or 0.0, amount_usd)
