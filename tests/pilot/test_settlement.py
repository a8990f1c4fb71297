"""Settlement that never under-counts: charges the provider publishes late, or never, or below the estimate.

The provider is the package's fake with a charges book the test fills in (what Vast's charges API would answer),
so the test decides when a charge is "published". The settle worker is ``pilot.service.workers.settle_charges``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlmodel import select

from pilot.context import PilotContext, build_context
from pilot.evaluation.remote import reconcile_stages
from pilot.runs.attempts import label_cost
from pilot.service.workers import settle_charges
from pilot.settings import Settings
from pilot.spend.ledger import reserve, settle, spend_summary
from pilot.store import Store
from pilot.store.models import EvalStage, Event, PendingSettlement, SpendEntry, utcnow
from pilot.store.status import StageStatus
from tools.errors import ProviderUnavailable
from tools.gpu.base import LaunchSpec, OfferRequirements
from tools.gpu.fake import FakeGpuProvider


@dataclass(frozen=True)
class Charge:
    instance_id: str
    label: str
    amount_usd: float


class ChargingFake(FakeGpuProvider):
    """The fake provider plus a charges API whose rows the test publishes."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[Charge] = []
        self.down = False
        self.reads = 0

    def charges(self, start: float, end: float) -> Iterable[Charge]:
        self.reads += 1
        if self.down:
            raise ProviderUnavailable("charges: HTTP 503")
        return list(self.published)


def _ctx(store: Store, make_settings: Callable[..., Settings], **budget: float) -> tuple[PilotContext, ChargingFake]:
    settings = make_settings(budget={"settle_recheck_s": 60, "settle_window_h": 1, "settle_max_tries": 3, **budget})
    ctx = build_context(settings, store=store)
    gpu = ChargingFake()
    ctx.gpu = gpu
    return ctx, gpu


def _end_run(ctx: PilotContext, run_id: str, estimate: float) -> float:
    """A run that rented for a while ends: reserved $5, settled with label_cost (elapsed x $/h = ``estimate``)."""
    label = ctx.instance_label(run_id)
    with ctx.store.session(write=True) as session:
        reserve(ctx.store, session, amount_usd=5.0, caps=ctx.settings.budget, run_id=run_id)
    cost = label_cost(ctx, label, since=utcnow().timestamp() - 3600, fallback_usd=estimate)
    with ctx.store.session(write=True) as session:
        settle(session, run_id, cost, note="end of run")
    return cost


def _actual(store: Store, run_id: str) -> float:
    with store.session() as session:
        row = session.exec(select(SpendEntry).where(SpendEntry.run_id == run_id, SpendEntry.kind == "actual")).one()
        return row.amount_usd


def _later(ctx: PilotContext, minutes: float) -> None:
    """Move every pending re-read ``minutes`` earlier (the worker's clock is the store's time)."""
    with ctx.store.session(write=True) as session:
        for row in session.exec(select(PendingSettlement)).all():
            row.next_at = row.next_at - timedelta(minutes=minutes)
            row.until = row.until - timedelta(minutes=minutes)


def test_charges_published_late_raise_the_ledger_never_settled_at_zero(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    ctx, gpu = _ctx(store, make_settings)
    cost = _end_run(ctx, "run-late", estimate=0.40)
    assert cost == pytest.approx(0.40) and _actual(store, "run-late") == pytest.approx(0.40), (
        "no charge yet: the estimate, not $0"
    )
    with store.session() as session:
        assert spend_summary(session).reserved_usd == 0
        pending = session.get(PendingSettlement, ctx.instance_label("run-late"))
        assert pending is not None and not pending.done and pending.provider_usd is None

    assert settle_charges(ctx).checked == 0, "not due yet: nothing re-read"
    gpu.published.append(Charge("1", ctx.instance_label("run-late"), 0.47))  # the provider publishes, higher
    _later(ctx, 2)
    report = settle_charges(ctx)
    assert report.raised == ["run-late"] and report.closed == ["run-late"]
    assert _actual(store, "run-late") == pytest.approx(0.47)
    assert settle_charges(ctx).checked == 0, "closed: not read again"


def test_charges_never_published_keep_the_estimate_and_give_up_after_the_tries(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    ctx, gpu = _ctx(store, make_settings)
    _end_run(ctx, "run-never", estimate=0.30)
    gpu.down = True  # the first re-read fails: counted as a try without a figure
    for _ in range(3):
        _later(ctx, 10)
        settle_charges(ctx)
    with store.session() as session:
        row = session.get(PendingSettlement, ctx.instance_label("run-never"))
        assert row is not None and row.done and row.tries == 3
        assert "gave up after 3 tries" in (row.outcome or "") and "$0.3000 stays" in (row.outcome or "")
        events = session.exec(select(Event).where(Event.entity_id == "run-never")).all()
    assert len(events) == 1 and "settlement: gave up" in events[0].reason
    assert _actual(store, "run-never") == pytest.approx(0.30)


def test_a_lower_provider_figure_waits_and_lowers_the_estimate_only_once_it_is_stable(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    ctx, gpu = _ctx(store, make_settings)
    gpu.published.append(Charge("1", ctx.instance_label("run-low"), 0.10))  # partial: less than elapsed x $/h
    assert _end_run(ctx, "run-low", estimate=0.25) == 0.25, "the larger figure at settlement"
    gpu.published.append(Charge("2", ctx.instance_label("run-low"), 0.05))  # more arrives: still below
    _later(ctx, 2)
    settle_charges(ctx)
    assert _actual(store, "run-low") == pytest.approx(0.25), "a figure that moved is not authoritative"
    _later(ctx, 10)
    settle_charges(ctx)  # $0.15 again: the provider's figure is final
    assert _actual(store, "run-low") == pytest.approx(0.15)
    with store.session() as session:
        row = session.get(PendingSettlement, ctx.instance_label("run-low"))
        assert row is not None and row.done and "authoritative" in (row.outcome or "")
        events = session.exec(select(Event).where(Event.entity_id == "run-low")).all()
    assert [e.reason.startswith("settlement: provider charges $0.1500 unchanged") for e in events] == [True]


def test_charges_published_partly_then_in_full_raise_the_ledger(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    ctx, gpu = _ctx(store, make_settings)
    gpu.published.append(Charge("1", ctx.instance_label("run-part"), 0.10))
    assert _end_run(ctx, "run-part", estimate=0.25) == 0.25
    gpu.published.append(Charge("2", ctx.instance_label("run-part"), 0.20))  # the rest: $0.30 in all
    _later(ctx, 2)
    assert settle_charges(ctx).raised == ["run-part"]
    assert _actual(store, "run-part") == pytest.approx(0.30)


def test_a_run_still_reserved_is_never_settled_by_the_worker(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    ctx, gpu = _ctx(store, make_settings)
    label = ctx.instance_label("run-open")
    with store.session(write=True) as session:
        reserve(store, session, amount_usd=5.0, caps=ctx.settings.budget, run_id="run-open")
    label_cost(ctx, label, since=utcnow().timestamp(), fallback_usd=0.2)  # a cost read while the run still runs
    gpu.published.append(Charge("1", label, 0.9))
    _later(ctx, 2)
    report = settle_charges(ctx)
    assert report.skipped == ["run-open"] and not report.raised
    with store.session() as session:
        assert spend_summary(session).reserved_usd == 5.0, "the reservation stands until the run itself settles"


def test_without_a_charges_api_nothing_is_queued(store: Store, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    ctx = build_context(settings, store=store)
    ctx.gpu = FakeGpuProvider()
    assert label_cost(ctx, ctx.instance_label("run-x"), since=0.0, fallback_usd=0.5) == 0.5
    with store.session() as session:
        assert session.exec(select(PendingSettlement)).all() == []


def _abandoned_stage(ctx: PilotContext, gpu: ChargingFake, stage_id: str) -> str:
    """An evaluation stage whose opener died after the provider accepted the create: reserved, a host live under its
    label, no launch on the row, created three hours ago (past its deadline). Returns the host's id."""
    label = ctx.instance_label(stage_id)
    with ctx.store.session(write=True) as session:
        reserve(ctx.store, session, amount_usd=5.0, caps=ctx.settings.budget, run_id=stage_id)
        session.add(
            EvalStage(
                id=stage_id,
                version_id="v9",
                status=StageStatus.PENDING,
                label=label,
                dph=1.0,
                reserved_usd=5.0,
                created_at=utcnow() - timedelta(hours=3),
            )
        )
    offer = gpu.search_offers(OfferRequirements())[0]
    return gpu.launch(LaunchSpec(label=label, offer_id=offer.id, image="img", command=["sleep", "60"])).id


def test_a_stage_abandoned_before_its_launch_was_recorded_is_settled_at_elapsed_time_not_zero(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    ctx, gpu = _ctx(store, make_settings)
    _abandoned_stage(ctx, gpu, "eval-v9-abandon1")
    assert reconcile_stages(ctx) == ["eval-v9-abandon1"]
    assert gpu.list_owned(ctx.instance_label("eval-v9-abandon1")) == []
    assert _actual(store, "eval-v9-abandon1") == pytest.approx(3.0, rel=0.01), "3 h x $1/h, not $0"
    with store.session() as session:
        assert spend_summary(session).reserved_usd == 0
        pending = session.get(PendingSettlement, ctx.instance_label("eval-v9-abandon1"))
        assert pending is not None and not pending.done, "queued for the settle worker's re-read"
    gpu.published.append(Charge("1", ctx.instance_label("eval-v9-abandon1"), 3.2))
    _later(ctx, 2)
    assert settle_charges(ctx).raised == ["eval-v9-abandon1"]
    with store.session() as session:
        stage = session.get(EvalStage, "eval-v9-abandon1")
        assert stage is not None and stage.actual_cost_usd == pytest.approx(3.2), "the stage row shows the re-read"


def test_a_stage_whose_host_is_not_verified_gone_keeps_its_reservation_until_the_reconciler_confirms(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(gpu={"teardown_deadline_s": 1}, budget={"settle_recheck_s": 60})
    ctx = build_context(settings, store=store)
    gpu = ChargingFake()
    ctx.gpu = gpu
    instance = _abandoned_stage(ctx, gpu, "eval-v9-stubborn")
    gpu.stubborn[instance] = 10**6
    assert reconcile_stages(ctx) == [], "not verified gone: not settled"
    with store.session() as session:
        assert spend_summary(session).reserved_usd == pytest.approx(5.0), "the reservation is kept"
        assert session.exec(select(SpendEntry).where(SpendEntry.kind == "actual")).all() == []
        stage = session.get(EvalStage, "eval-v9-stubborn")
        assert stage is not None and StageStatus(stage.status) is StageStatus.FAILED and stage.instance_id is None
    gpu.stubborn[instance] = 0
    assert reconcile_stages(ctx) == ["eval-v9-stubborn"], "the next pass confirms it gone and settles"
    assert gpu.list_owned(ctx.instance_label("eval-v9-stubborn")) == []
    assert _actual(store, "eval-v9-stubborn") == pytest.approx(3.0, rel=0.01)
    with store.session() as session:
        assert spend_summary(session).reserved_usd == 0
