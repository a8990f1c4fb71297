"""Attempt bookkeeping for runs on rented hosts: the attempts of a run, which host to try next, what they cost."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from sqlmodel import Session, col, select

from pilot.context import PilotContext
from pilot.runs import lifecycle as runs
from pilot.spend.costs import attempts_cost, elapsed_cost
from pilot.store.models import RunAttempt, TrainingRun
from subagents.training import plan_training, requirements_for
from tools.errors import PilotError
from tools.gpu.base import Offer

logger = logging.getLogger(__name__)


def attempts_of(session: Session, run_id: str) -> list[RunAttempt]:
    return list(session.exec(select(RunAttempt).where(RunAttempt.run_id == run_id).order_by(col(RunAttempt.n))).all())


@runtime_checkable
class ChargesProvider(Protocol):
    """A provider that can say what it billed (``VastGpuProvider``)."""

    def charges(self, start: float, end: float) -> Iterable[Any]: ...


def provider_cost(ctx: PilotContext, run: TrainingRun) -> float:
    """What the provider charged for every instance with the run's label; else elapsed time x $/h per attempt (a
    run recorded before attempts were rows: its own elapsed time while it held an instance)."""
    with ctx.store.session() as session:
        tried = attempts_of(session, run.id)
    if tried:
        fallback = attempts_cost(tried)
    else:
        fallback = elapsed_cost(run.dph, run.started_at or run.created_at) if run.instance_id else 0.0
    return label_cost(ctx, run.label, since=run.created_at.timestamp(), fallback_usd=fallback)


def label_cost(ctx: PilotContext, label: str, *, since: float, fallback_usd: float) -> float:
    """What the provider charged for every instance carrying ``label`` (the charges of a day either side of
    ``since`` and now); ``fallback_usd`` (elapsed time x $/h) when the provider has no charges API, it fails, or
    it has published no charge for the label yet (a run that rented is never settled at $0)."""
    if isinstance(ctx.gpu, ChargesProvider):
        try:
            rows = [
                c for c in ctx.gpu.charges(since - 86400, time.time() + 86400) if getattr(c, "label", None) == label
            ]
            if rows or fallback_usd <= 0:
                return float(sum(float(c.amount_usd) for c in rows))
            logger.warning("No charges published for %s yet: settling at elapsed time x $/h", label)
        except PilotError as exc:
            logger.warning("Charges of %s unavailable (%s): using elapsed time x $/h", label, exc)
    return fallback_usd


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
