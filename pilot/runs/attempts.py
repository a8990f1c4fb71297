"""Attempt bookkeeping for runs on rented hosts: the attempts of a run, which host to try next, what they cost."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from sqlmodel import Session, col, select

from pilot.context import PilotContext
from pilot.runs import lifecycle as runs
from pilot.spend import settlement
from pilot.spend.costs import attempts_cost, elapsed_cost
from pilot.spend.ledger import settle
from pilot.spend.settlement import expect_charges
from pilot.store.models import RunAttempt, TrainingRun
from subagents.training import plan_training, requirements_for
from tools.errors import PilotError
from tools.gpu.base import Offer, parse_label

logger = logging.getLogger(__name__)


def attempts_of(session: Session, run_id: str) -> list[RunAttempt]:
    return list(session.exec(select(RunAttempt).where(RunAttempt.run_id == run_id).order_by(col(RunAttempt.n))).all())


@runtime_checkable
class ChargesProvider(Protocol):
    """A provider that can say what it billed (``VastGpuProvider``)."""

    def charges(self, start: float, end: float) -> Iterable[Any]: ...


_READ = object()  # label_cost's default: read the provider's charges now


def provider_cost(
    ctx: PilotContext,
    run: TrainingRun,
    *,
    book: object = _READ,
    tried: list[RunAttempt] | None = None,
    defer: list[dict[str, Any]] | None = None,
) -> float:
    """What the provider charged for every instance with the run's label, never less than elapsed time x $/h per
    attempt (a run recorded before attempts were rows: its own elapsed time while it held an instance). ``book``,
    ``tried`` (the run's attempts) and ``defer``: see ``label_cost``; for callers costing many runs at once."""
    if tried is None:
        with ctx.store.session() as session:
            tried = attempts_of(session, run.id)
    if tried:
        fallback = attempts_cost(tried)
    else:
        fallback = elapsed_cost(run.dph, run.started_at or run.created_at) if run.instance_id else 0.0
    return label_cost(ctx, run.label, since=run.created_at.timestamp(), fallback_usd=fallback, book=book, defer=defer)


def charge_book(ctx: PilotContext, since: float) -> dict[str, float] | None:
    """Dollars the provider charged per label, from a day before ``since`` to a day after now, in one read (every
    page); ``None`` when the provider has no charges API or the read failed."""
    if not isinstance(ctx.gpu, ChargesProvider):
        return None
    try:
        rows = list(ctx.gpu.charges(since - 86400, time.time() + 86400))
    except PilotError as exc:
        logger.warning("Charges unavailable on %s (%s): using elapsed time x $/h", ctx.gpu.name, exc)
        return None
    book: dict[str, float] = defaultdict(float)
    for c in rows:
        book[str(getattr(c, "label", "") or "")] += float(c.amount_usd)
    return dict(book)


def label_cost(
    ctx: PilotContext,
    label: str,
    *,
    since: float,
    fallback_usd: float,
    book: object = _READ,
    defer: list[dict[str, Any]] | None = None,
) -> float:
    """What the run with ``label`` cost: the provider's charges for every instance carrying it, never less than
    ``fallback_usd`` (elapsed time x $/h). When the provider has a charges API but published nothing yet for the
    label, or less than the estimate, the estimate is returned and the label is queued for the settle worker
    (``pilot.spend.settlement``), which re-reads the charges later and raises the ledger if they come in higher.
    ``book`` (from ``charge_book``) lets a caller settling many runs read the charges once; ``defer`` collects the
    queue entries (``expect_charges`` keyword arguments) for the caller to write in its own transaction."""
    figures = charge_book(ctx, since) if book is _READ else book
    provider = figures.get(label) if isinstance(figures, dict) else None
    amount = max(provider or 0.0, fallback_usd)
    if isinstance(ctx.gpu, ChargesProvider) and fallback_usd > 0 and (provider is None or provider < fallback_usd):
        parsed = parse_label(label)
        entry: dict[str, Any] = {
            "label": label,
            "run_id": parsed.run_id if parsed is not None else label[-40:],
            "since": since,
            "estimate_usd": amount,
            "provider_usd": provider,
            "budget": ctx.settings.budget,
        }
        if defer is not None:
            defer.append(entry)
        else:
            with ctx.store.session(write=True) as session:
                expect_charges(session, **entry)
    return amount


@dataclass
class ResettleReport:
    checked: int = 0
    raised: list[str] = field(default_factory=list)  # run ids whose ledger entry went up
    closed: list[str] = field(default_factory=list)  # run ids with nothing more to wait for
    skipped: list[str] = field(default_factory=list)  # not settled yet (still reserved): left for later
    error: str | None = None


def resettle(ctx: PilotContext, *, now: datetime | None = None) -> ResettleReport:
    """The settle worker's pass: re-read the provider's charges (one read for every label due) and settle again
    what they show (the ledger keeps the larger figure); bounded by ``budget.settle_max_tries`` and
    ``budget.settle_window_h`` (``pilot.spend.settlement``)."""
    report = ResettleReport()
    with ctx.store.session() as session:
        rows = [(r.label, r.run_id, r.category, r.since) for r in settlement.due(session, now)]
    if not rows:
        return report
    book = charge_book(ctx, min(r[3] for r in rows))
    if book is None:
        report.error = f"charges unavailable on {ctx.gpu.name}"
    for label, run_id, category, _since in rows:
        provider = book.get(label) if book is not None else None
        with ctx.store.session(write=True) as session:
            if not settlement.is_settled(session, run_id, category):
                report.skipped.append(run_id)
                continue
            report.checked += 1
            if provider is not None and settle(
                session, run_id, provider, category=category, note=f"provider charges for {label}"
            ):
                report.raised.append(run_id)
                settlement.mirror_actual(session, run_id, provider)
            row = settlement.record_try(session, label, provider, budget=ctx.settings.budget, now=now)
            if row is not None and row.done:
                report.closed.append(run_id)
    return report


def host_key(offer: Offer) -> str:
    machine = offer.raw.get("machine_id") if offer.raw else None
    return f"machine-{machine}" if machine is not None else f"offer-{offer.id}"


def next_offer(ctx: PilotContext, run: TrainingRun, *, excluded: set[str]) -> tuple[Offer, float | None, float] | None:
    """The cheapest expected-total-cost offer on a host not tried yet: (offer, the bid when interruptible, the
    run's estimated cost on it)."""
    remote = ctx.settings.gpu.remote
    params = runs.training_params(ctx)
    requirements = dataclasses.replace(
        requirements_for(params, max_dph=ctx.settings.budget.max_dph), interruptible=remote.interruptible
    )
    offers = [o for o in ctx.gpu.search_offers(requirements) if host_key(o) not in excluded and o.id not in excluded]
    figures = (run.config.get("plan") or {}) if run.config else {}
    plan = plan_training(
        params,
        offers,
        train_examples=int(figures.get("train_examples", 0)),
        train_tokens=int(figures.get("train_tokens", 0)),
        remote=True,
    )
    if plan is None:
        return None
    offer = plan.offer
    bid = None
    if remote.interruptible:
        bid = round((offer.min_bid if offer.min_bid is not None else offer.dph_total) * remote.bid_markup, 4)
    return offer, bid, plan.estimated_cost_usd


def offer_dph(offer: Offer, bid: float | None, disk_gb: float) -> float:
    if bid is None:
        return offer.dph_total
    return bid + offer.storage_cost_per_gb_month * disk_gb / 720.0
