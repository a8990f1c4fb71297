"""An approval covers what the run may spend (its reservation), and a price that moves after the plan goes back
to a human — never through: past the approved ceiling, or past the approval threshold when none was asked."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sqlmodel import select

from pilot.context import PilotContext, build_context
from pilot.data.ingest import ingest_lines
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import Approval, TrainingRun
from pilot.store.status import ApprovalStatus
from pilot.supervisor.approvals import answer
from pilot.supervisor.cycle import run_cycle
from subagents.data.samples import generate_demo_records
from tools.gpu.base import Offer, OfferRequirements
from tools.gpu.fake import FakeGpuProvider


class RisingPrices(FakeGpuProvider):
    """Offers whose price is multiplied by ``factor`` once ``rise()`` is called (a market that moved)."""

    factor = 1.0

    def rise(self, factor: float) -> None:
        self.factor = factor

    def search_offers(self, requirements: OfferRequirements, *, limit: int = 64) -> list[Offer]:
        found = super().search_offers(dataclasses.replace(requirements, max_dph=None), limit=limit)
        priced = [dataclasses.replace(o, dph_total=round(o.dph_total * self.factor, 4)) for o in found]
        return [o for o in priced if requirements.max_dph is None or o.dph_total <= requirements.max_dph]


def _ctx(store: Store, make_settings: Callable[..., Settings], **policy: float) -> PilotContext:
    settings = make_settings(
        store={"url": store.url},
        gpu={"provider": "fake"},
        policy={"min_new_examples": 50, "cooldown_minutes": 0, **policy},
        budget={"per_run_usd": 1000.0, "per_day_usd": 1000.0, "per_month_usd": 1000.0, "max_dph": 100.0},
        training={"base_model_params_b": 1.0, "max_steps": 10, "poll_interval_s": 0.01, "max_duration_minutes": 1},
    )
    ingest_lines(store, generate_demo_records(300, seed=3, malformed=0.0), source="test")
    ctx = build_context(settings, store=store)
    ctx.gpu = RisingPrices()
    return ctx


def test_the_approval_ceiling_is_the_reservation_not_the_estimate(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    ctx = _ctx(store, make_settings, approval_required_above_usd=0)
    [first] = run_cycle(ctx)
    with store.session() as s:
        approval = s.get(Approval, first.waiting_on)
    assert approval is not None
    plan = approval.summary["plan"]
    assert approval.cost_ceiling_usd == plan["max_spend_usd"] > plan["estimated_cost_usd"]
    assert approval.summary["max_spend_usd"] == approval.cost_ceiling_usd  # what Slack and the CLI show


def test_a_price_above_the_approved_ceiling_asks_again_and_rents_nothing(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    ctx = _ctx(store, make_settings, approval_required_above_usd=0)
    [first] = run_cycle(ctx)
    assert first.waiting_on is not None
    with store.session(write=True) as s:
        answer(s, first.waiting_on, approve=True, actor="human:alice")
    ctx.gpu.rise(3.0)  # type: ignore[attr-defined]  # between the approval and the launch
    results = run_cycle(ctx)
    resumed = next(r for r in results if r.resumed)
    assert resumed.waiting_on is not None and resumed.waiting_on != first.waiting_on  # a new approval
    assert "price rose" in " ".join(resumed.log)
    with store.session() as s:
        assert s.exec(select(TrainingRun)).all() == []  # nothing launched on the old approval
        again = s.get(Approval, resumed.waiting_on)
        old = s.get(Approval, first.waiting_on)
    assert again is not None and old is not None
    assert again.status == ApprovalStatus.PENDING and again.cost_ceiling_usd > old.cost_ceiling_usd * 2
    assert "price rose" in again.summary["why"]


def test_a_price_past_the_threshold_after_the_plan_goes_to_a_human(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    """Planned under the threshold (no approval asked); re-priced at launch above it: a human is asked first."""
    ctx = _ctx(store, make_settings, approval_required_above_usd=1.0)
    gpu = ctx.gpu
    calls = {"n": 0}
    search = gpu.search_offers

    def moving(requirements: OfferRequirements, *, limit: int = 64) -> list[Offer]:
        calls["n"] += 1
        if calls["n"] == 2:  # the train node's re-pricing: the market jumped
            gpu.rise(100.0)  # type: ignore[attr-defined]
        return search(requirements, limit=limit)

    gpu.search_offers = moving  # type: ignore[method-assign]
    [result] = run_cycle(ctx)
    assert result.waiting_on is not None, result.log
    assert "approval threshold" in " ".join(result.log)
    with store.session() as s:
        assert s.exec(select(TrainingRun)).all() == []
        approval = s.get(Approval, result.waiting_on)
    assert approval is not None and approval.cost_ceiling_usd > 1.0
