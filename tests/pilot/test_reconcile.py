"""The reconciler: orphans destroyed, vanished runs failed (twice-seen while running), lost PENDING runs failed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlmodel import col, select

from pilot.context import PilotContext, build_context
from pilot.service.reconcile import ReconcileState, reconcile
from pilot.settings import Settings
from pilot.spend.ledger import reserve
from pilot.store import Store
from pilot.store.models import Event, SpendEntry, TrainingRun, utcnow
from pilot.store.status import RunStatus
from tests import factories
from tools.gpu.base import LaunchSpec
from tools.gpu.fake import FakeGpuProvider


def _ctx(store: Store, make_settings: Callable[..., Settings]) -> tuple[PilotContext, FakeGpuProvider]:
    ctx = build_context(make_settings(gpu={"provider": "fake"}), store=store)
    assert isinstance(ctx.gpu, FakeGpuProvider)
    return ctx, ctx.gpu


def _launch(gpu: FakeGpuProvider, label: str) -> str:
    return gpu.launch(LaunchSpec(label=label, offer_id=None, image="x", command=["true"])).id


def _run(ctx: PilotContext, run_id: str, status: RunStatus, instance_id: str | None, **fields: object) -> None:
    with ctx.store.session(write=True) as session:
        factories.run(
            session, id=run_id, label=f"{ctx.label_prefix}{run_id}", status=status, instance_id=instance_id, **fields
        )
        reserve(ctx.store, session, amount_usd=1.0, caps=ctx.settings.budget, run_id=run_id)


def _get(ctx: PilotContext, run_id: str) -> TrainingRun:
    with ctx.store.session() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        return run


def test_orphans_are_destroyed_and_live_runs_left_alone(store: Store, make_settings: Callable[..., Settings]) -> None:
    ctx, gpu = _ctx(store, make_settings)
    live = _launch(gpu, f"{ctx.label_prefix}run-live")
    _run(ctx, "run-live", RunStatus.RUNNING, live)
    unknown = _launch(gpu, ctx.instance_label("run-ghost"))
    done = _launch(gpu, f"{ctx.label_prefix}run-done")
    _run(ctx, "run-done", RunStatus.FAILED, done)
    duplicate = _launch(gpu, f"{ctx.label_prefix}run-live")  # a second instance for one run (retry gone wrong)
    foreign = _launch(gpu, "learning-pilot/prod/run-x")

    report = reconcile(ctx)

    assert sorted(report.orphans_destroyed) == sorted([unknown, done, duplicate])
    assert sorted(i.id for i in gpu.list_owned("learning-pilot/")) == sorted([live, foreign])
    assert _get(ctx, "run-live").status == RunStatus.RUNNING
    with store.session() as session:
        events = session.exec(select(Event).where(Event.entity_type == "instance")).all()
    assert sorted(e.entity_id for e in events) == sorted(report.orphans_destroyed)
    assert all("verified gone" in e.reason for e in events)
    assert reconcile(ctx).orphans_destroyed == []  # level-triggered: nothing left to fix


def test_a_vanished_instance_fails_its_run_at_startup(store: Store, make_settings: Callable[..., Settings]) -> None:
    ctx, gpu = _ctx(store, make_settings)
    instance = _launch(gpu, f"{ctx.label_prefix}run-v")
    _run(ctx, "run-v", RunStatus.RUNNING, instance, dph=2.0, started_at=utcnow() - timedelta(minutes=30))
    gpu.vanish(instance)

    report = reconcile(ctx, state=None)

    assert report.runs_failed == [{"run_id": "run-v", "reason": "instance_vanished"}]
    run = _get(ctx, "run-v")
    assert (run.status, run.termination_reason) == (RunStatus.FAILED, "instance_vanished")
    assert run.actual_cost_usd is not None and abs(run.actual_cost_usd - 1.0) < 0.02
    with store.session() as session:
        entries = session.exec(select(SpendEntry).where(SpendEntry.run_id == "run-v")).all()
    assert [(e.kind, e.active) for e in entries if e.kind == "reservation"] == [("reservation", False)]


def test_while_running_a_vanished_instance_must_be_seen_twice(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    ctx, gpu = _ctx(store, make_settings)
    instance = _launch(gpu, f"{ctx.label_prefix}run-w")
    _run(ctx, "run-w", RunStatus.PROVISIONING, instance)
    gpu.vanish(instance)
    state = ReconcileState()
    first = reconcile(ctx, state=state)
    assert first.runs_failed == [] and first.suspects == ["run-w"]
    assert _get(ctx, "run-w").status == RunStatus.PROVISIONING
    second = reconcile(ctx, state=state)
    assert second.runs_failed == [{"run_id": "run-w", "reason": "instance_vanished"}]


def test_pending_runs_lost_for_ten_minutes_are_failed(store: Store, make_settings: Callable[..., Settings]) -> None:
    ctx, _gpu = _ctx(store, make_settings)
    _run(ctx, "run-old", RunStatus.PENDING, None, created_at=utcnow() - timedelta(minutes=11))
    _run(ctx, "run-new", RunStatus.PENDING, None, created_at=utcnow() - timedelta(minutes=2))
    report = reconcile(ctx)
    assert report.runs_failed == [{"run_id": "run-old", "reason": "daemon_lost_track"}]
    assert _get(ctx, "run-old").termination_reason == "daemon_lost_track"
    assert _get(ctx, "run-new").status == RunStatus.PENDING
    with store.session() as session:
        active = session.exec(
            select(SpendEntry.run_id).where(SpendEntry.kind == "reservation", col(SpendEntry.active).is_(True))
        ).all()
    assert list(active) == ["run-new"]  # the lost run's reservation was released
