"""The kill switch: full order with verification, idempotence, persistence across restarts, partial failure."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from pilot.context import PilotContext, build_context
from pilot.runs.teardown import TeardownPolicy
from pilot.service import killswitch
from pilot.serving.deploy import make_target
from pilot.settings import Settings
from pilot.spend.ledger import reserve
from pilot.store import Store
from pilot.store.models import Approval, Event, SpendEntry, TrainingRun, utcnow
from pilot.store.status import ApprovalKind, ApprovalStatus, RunStatus
from pilot.store.writers import is_paused
from pilot.supervisor import approvals
from tests import factories
from tools.artifacts.base import sha256_file
from tools.gpu.base import LaunchSpec
from tools.gpu.fake import FakeGpuProvider
from tools.slack_fake import FakeSlack


class StuckGpu(FakeGpuProvider):
    """Terminate silently does nothing for the instances in ``stuck`` (a provider that lies)."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck: set[str] = set()

    def terminate(self, instance_id: str) -> None:
        if instance_id not in self.stuck:
            super().terminate(instance_id)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def _settings(make_settings: Callable[..., Settings], slack: FakeSlack) -> Settings:
    return make_settings(
        gpu={"provider": "fake"},
        slack={"enabled": True, "bot_token": slack.token, "base_url": slack.base_url, "channel": "#ops"},
    )


def _launch(gpu: FakeGpuProvider, label: str) -> str:
    return gpu.launch(LaunchSpec(label=label, offer_id="fake-1", image="x", command=["true"])).id


def _deploy_canary(settings: Settings, tmp_path: Path) -> None:
    adapter = tmp_path / "canary"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "adapter_config.json").write_text("{}")
    expected = {p.name: sha256_file(p) for p in adapter.iterdir()}
    make_target(settings).deploy("v9-canary", adapter, expected_sha256=expected)


def _world(ctx: PilotContext, gpu: FakeGpuProvider) -> dict[str, str]:
    """Two runs in flight with instances and reservations, one pending approval, an orphan, a foreign instance."""
    ids: dict[str, str] = {}
    with ctx.store.session(write=True) as session:
        for name in ("a", "b"):
            run_id = f"run-{name}"
            label = f"{ctx.label_prefix}{run_id}"
            instance = _launch(gpu, label)
            factories.run(
                session,
                id=run_id,
                label=label,
                instance_id=instance,
                status=RunStatus.RUNNING,
                dph=1.0,
                started_at=utcnow() - timedelta(hours=1),
            )
            reserve(ctx.store, session, amount_usd=2.0, caps=ctx.settings.budget, run_id=run_id)
            ids[name] = instance
        decision = factories.decision(session)
        ids["approval"] = approvals.request_approval(
            session,
            decision=decision,
            kind=ApprovalKind.TRAINING,
            summary={"what": "LoRA fine-tune"},
            cost_ceiling_usd=2.0,
            expiry_minutes=60,
        ).id
    ids["orphan"] = _launch(gpu, ctx.instance_label("run-unknown"))
    ids["foreign"] = _launch(gpu, "learning-pilot/prod/run-other")
    return ids


def test_engage_runs_the_whole_order_and_verifies(
    store: Store, make_settings: Callable[..., Settings], slack: FakeSlack, tmp_path: Path
) -> None:
    settings = _settings(make_settings, slack)
    ctx = build_context(settings, store=store)
    gpu = ctx.gpu
    assert isinstance(gpu, FakeGpuProvider)
    ids = _world(ctx, gpu)
    _deploy_canary(settings, tmp_path)

    report = killswitch.engage(ctx, actor="human:alice", reason="runaway spend")

    assert report.ok, report.problems
    assert report.paused and not report.was_paused
    assert report.approvals_cancelled == [ids["approval"]]
    assert {i.instance_id for i in report.instances if i.gone} == {ids["a"], ids["b"], ids["orphan"]}
    assert gpu.list_owned(ctx.label_prefix) == []
    assert [i.id for i in gpu.list_owned("learning-pilot/prod/")] == [ids["foreign"]]  # not ours: left alone
    assert report.deployment is not None and report.deployment["action"] == "undeployed"
    assert make_target(settings).current() is None  # no champion: the base model serves
    json.dumps(report.to_dict())  # the HTTP answer

    with store.session() as session:
        assert is_paused(session)
        runs = session.exec(select(TrainingRun).order_by(col(TrainingRun.id))).all()
        assert [(r.status, r.termination_reason) for r in runs] == [("cancelled", "kill_switch")] * 2
        assert all(r.actual_cost_usd == pytest.approx(1.0, rel=0.01) for r in runs)
        ledger = session.exec(select(SpendEntry)).all()
        assert not [e for e in ledger if e.kind == "reservation" and e.active]
        assert sorted(e.amount_usd for e in ledger if e.kind == "actual") == pytest.approx([1.0, 1.0], rel=0.01)
        approval = session.get(Approval, ids["approval"])
        assert approval is not None and approval.status == ApprovalStatus.CANCELLED
        events = session.exec(select(Event).order_by(col(Event.id))).all()
    # The order: paused first, then approvals, then runs, the incident last.
    order = [
        next(i for i, e in enumerate(events) if e.entity_type == "pilot" and e.new == "paused"),
        next(i for i, e in enumerate(events) if e.entity_type == "approval" and e.new == "cancelled"),
        next(i for i, e in enumerate(events) if e.entity_type == "training_run" and e.new == "cancelled"),
        next(i for i, e in enumerate(events) if e.entity_type == "incident"),
    ]
    assert order == sorted(order)
    incident = events[order[-1]]
    assert incident.actor == "human:alice" and incident.data["ok"] is True
    posted = [c.body.get("text", "") for c in slack.calls_to("chat.postMessage")]
    assert any("Kill switch engaged by human:alice" in t for t in posted)


def test_engage_is_idempotent_and_survives_a_restart(
    store: Store, make_settings: Callable[..., Settings], slack: FakeSlack
) -> None:
    settings = _settings(make_settings, slack)
    ctx = build_context(settings, store=store)
    assert isinstance(ctx.gpu, FakeGpuProvider)
    _world(ctx, ctx.gpu)
    killswitch.engage(ctx, actor="human:alice", reason="first")
    again = killswitch.engage(ctx, actor="human:bob", reason="second")
    assert again.ok and again.was_paused
    assert again.instances == [] and again.runs_cancelled == [] and again.approvals_cancelled == []

    restarted = Store(store.url)  # a new process: the flag is in the store
    try:
        fresh = build_context(settings, store=restarted)
        assert killswitch.paused(fresh)
        assert killswitch.resume(fresh, actor="human:carol", reason="fixed") == {"was_paused": True, "paused": False}
        assert not killswitch.paused(fresh)
        assert killswitch.resume(fresh, actor="human:carol", reason="again")["was_paused"] is False
    finally:
        restarted.close()


def test_an_instance_that_will_not_die_is_reported_not_hidden(
    store: Store, make_settings: Callable[..., Settings], slack: FakeSlack
) -> None:
    settings = _settings(make_settings, slack)
    ctx = build_context(settings, store=store)
    gpu = StuckGpu()
    ctx.gpu = gpu
    ids = _world(ctx, gpu)
    gpu.stuck.add(ids["a"])

    report = killswitch.engage(ctx, actor="human:alice", reason="test", policy=TeardownPolicy(deadline_s=0.5))

    assert not report.ok
    assert report.to_dict()["instances_not_verified"] == [ids["a"]]
    assert any(ids["a"] in p for p in report.problems)
    assert [i.id for i in gpu.list_owned(ctx.label_prefix)] == [ids["a"]]
    with store.session() as session:
        run = session.get(TrainingRun, "run-a")
        assert run is not None and run.status == RunStatus.CANCELLED  # stop billing intent; reconciler retries
        assert "NOT verified destroyed" in (run.status_message or "")
        assert is_paused(session)


def test_slack_down_does_not_stop_the_kill(
    store: Store, make_settings: Callable[..., Settings], slack: FakeSlack
) -> None:
    settings = _settings(make_settings, slack)
    ctx = build_context(settings, store=store)
    assert isinstance(ctx.gpu, FakeGpuProvider)
    _world(ctx, ctx.gpu)
    slack.fail_next("ratelimited", count=10)
    report = killswitch.engage(ctx, actor="human:alice", reason="test")
    assert report.ok and report.slack_notified is False
    assert ctx.gpu.list_owned(ctx.label_prefix) == []
