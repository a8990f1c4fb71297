"""The spend ledger: where money is promised (reservations) and accounted (actual spend).

Spend in a period = actual entries + active reservations created in it. ``reserve`` checks every cap and inserts
the reservation under one lock (the SQLite write transaction, or a PostgreSQL advisory lock), so concurrent
launches can never together exceed a cap. ``settle`` replaces a run's reservation by its actual cost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, select

from pilot.errors import BudgetError
from pilot.settings import BudgetSettings
from pilot.store import Store
from pilot.store.models import Event, SpendEntry, utcnow
from pilot.store.status import EntityType

logger = logging.getLogger(__name__)

BUDGET_LOCK = "learning-pilot/budget"


@dataclass(frozen=True)
class SpendSummary:
    today_usd: float
    month_usd: float
    reserved_usd: float  # active reservations, all time
    actual_month_usd: float

    def to_dict(self) -> dict[str, float]:
        return {
            "today_usd": round(self.today_usd, 4),
            "month_usd": round(self.month_usd, 4),
            "reserved_usd": round(self.reserved_usd, 4),
            "actual_month_usd": round(self.actual_month_usd, 4),
        }


def _period_starts(now: datetime) -> tuple[datetime, datetime]:
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day, day.replace(day=1)


def _committed_since(session: Session, since: datetime) -> float:
    """Actual spend plus active reservations created since ``since``."""
    total = session.exec(
        select(func.coalesce(func.sum(SpendEntry.amount_usd), 0.0)).where(
            SpendEntry.created_at >= since,
            (SpendEntry.kind == "actual") | (SpendEntry.active == True),  # noqa: E712
        )
    ).one()
    return float(total)


def spend_summary(session: Session, now: datetime | None = None) -> SpendSummary:
    now = now or utcnow()
    day, month = _period_starts(now)
    reserved = session.exec(
        select(func.coalesce(func.sum(SpendEntry.amount_usd), 0.0)).where(
            SpendEntry.kind == "reservation",
            SpendEntry.active == True,  # noqa: E712
        )
    ).one()
    actual_month = session.exec(
        select(func.coalesce(func.sum(SpendEntry.amount_usd), 0.0)).where(
            SpendEntry.kind == "actual", SpendEntry.created_at >= month
        )
    ).one()
    return SpendSummary(
        today_usd=_committed_since(session, day),
        month_usd=_committed_since(session, month),
        reserved_usd=float(reserved),
        actual_month_usd=float(actual_month),
    )


def check_caps(summary: SpendSummary, amount: float, caps: BudgetSettings) -> str | None:
    """The reason ``amount`` more would break a cap, or None."""
    if amount > caps.per_run_usd:
        return f"estimated ${amount:.2f} exceeds the per-run cap ${caps.per_run_usd:.2f}"
    if summary.today_usd + amount > caps.per_day_usd:
        return f"${summary.today_usd:.2f} committed today + ${amount:.2f} exceeds the daily cap ${caps.per_day_usd:.2f}"
    if summary.month_usd + amount > caps.per_month_usd:
        return (
            f"${summary.month_usd:.2f} committed this month + ${amount:.2f} exceeds the monthly cap "
            f"${caps.per_month_usd:.2f}"
        )
    return None


def reserve(
    store: Store,
    session: Session,
    *,
    amount_usd: float,
    caps: BudgetSettings,
    run_id: str | None,
    category: str = "gpu",
    note: str = "",
    now: datetime | None = None,
) -> SpendEntry:
    """Insert a reservation if every cap holds; raises BudgetError otherwise. Call in a write session."""
    if amount_usd < 0:
        raise ValueError("a reservation cannot be negative")
    store.lock(session, BUDGET_LOCK)
    summary = spend_summary(session, now)
    if (problem := check_caps(summary, amount_usd, caps)) is not None:
        raise BudgetError(problem)
    entry = SpendEntry(
        kind="reservation", category=category, run_id=run_id, amount_usd=amount_usd, note=note, active=True
    )
    if now is not None:
        entry.created_at = now
    session.add(entry)
    session.flush()
    logger.info("Reserved $%.4f for %s (%s)", amount_usd, run_id or category, note)
    return entry


def settle(session: Session, run_id: str, actual_usd: float, *, category: str = "gpu", note: str = "") -> bool:
    """Release the run's reservations and record what it actually cost; True when the actual entry was created or
    went up. Idempotent per run: settling again (the kill switch, then the run's own teardown; or charges the
    provider published late, ``pilot.spend.settlement``) corrects the one actual entry to the larger figure instead
    of counting the run twice. A lower figure never replaces a higher one — spend is never under-counted (see
    ``pilot/spend/settlement.py`` for why a later provider figure does not lower an estimate)."""
    for entry in session.exec(
        select(SpendEntry).where(
            SpendEntry.run_id == run_id,
            SpendEntry.kind == "reservation",
            SpendEntry.active == True,  # noqa: E712
        )
    ).all():
        entry.active = False
    previous = session.exec(
        select(SpendEntry).where(
            SpendEntry.run_id == run_id, SpendEntry.kind == "actual", SpendEntry.category == category
        )
    ).first()
    if previous is not None:
        raised = actual_usd > previous.amount_usd
        if raised:
            logger.info("Run %s: settled cost corrected $%.6f -> $%.6f", run_id, previous.amount_usd, actual_usd)
            previous.amount_usd = actual_usd
            previous.note = (note or previous.note)[:500]
        session.flush()
        return raised
    session.add(SpendEntry(kind="actual", category=category, run_id=run_id, amount_usd=actual_usd, note=note))
    session.flush()
    logger.info("Run %s cost $%.4f", run_id, actual_usd)
    return True


def record_spend(session: Session, *, amount_usd: float, category: str, note: str = "") -> None:
    """Spend with no reservation (LLM tokens): counts against the same caps."""
    session.add(SpendEntry(kind="actual", category=category, amount_usd=amount_usd, note=note))


LLM_EVENT = EntityType.LLM_CALL  # the event row each LLM call writes (tokens, model); its dollars are ledger rows


def day_window(now: datetime) -> tuple[datetime, datetime]:
    start, _ = _period_starts(now)
    return start, start + timedelta(days=1)


def llm_usage_today(session: Session, now: datetime | None = None) -> tuple[float, int]:
    """Dollars and tokens the LLM used since the start of the UTC day (ledger for $, llm_call events for tokens)."""
    start, _ = day_window(now or utcnow())
    usd = session.exec(
        select(SpendEntry.amount_usd).where(
            SpendEntry.category == "llm", SpendEntry.kind == "actual", SpendEntry.created_at >= start
        )
    ).all()
    events = session.exec(select(Event.data).where(Event.entity_type == LLM_EVENT, Event.at >= start)).all()
    tokens = sum(int((data or {}).get("tokens", 0)) for data in events)
    return float(sum(usd)), tokens
