"""The effect gate, rule by rule (table-driven), on SQLite and PostgreSQL: what it allows and refuses right before
a side effect, and that every refusal leaves an event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import select

from pilot.settings import Settings
from pilot.spend.effects import ALLOWED_WHILE_PAUSED, Effect, EffectRefused, authorize
from pilot.spend.ledger import reserve
from pilot.store import Store
from pilot.store.leases import acquire, run_lease, stage_lease
from pilot.store.models import Approval, DatasetSnapshot, Decision, EvalStage, Event, TrainingRun, utcnow
from pilot.store.status import ApprovalStatus, RunStatus, StageStatus
from pilot.store.writers import set_paused

ME = "me"


@dataclass
class Case:
    name: str
    effect: Effect
    expect: str | None  # a fragment of the refusal's reason; None: allowed
    paused: bool = False
    lease_owner: str | None = ME  # who holds the lease (None: nobody)
    run_status: RunStatus = RunStatus.PENDING
    reserved: float | None = 2.0
    price: float | None = 1.0
    approval: str | None = "approved"  # approved | pending | rejected | None
    ceiling: float = 2.0
    threshold: float = 0.0
    stage_status: StageStatus = StageStatus.PENDING
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("rent allowed", Effect.RENT, None),
    Case("rent while paused", Effect.RENT, "paused", paused=True),
    Case("rent without the lease", Effect.RENT, "not held by this process", lease_owner="other"),
    Case("rent with no lease at all", Effect.RENT, "held by nobody", lease_owner=None),
    Case("rent for a cancelled run", Effect.RENT, "is cancelled", run_status=RunStatus.CANCELLED),
    Case("rent with no reservation", Effect.RENT, "no active reservation", reserved=None),
    Case("rent above the reservation", Effect.RENT, "above the run's", price=2.5),
    Case("rent with no approval", Effect.RENT, "must approve", approval=None),
    Case("rent with a pending approval", Effect.RENT, "is pending", approval="pending"),
    Case("rent with a rejected approval", Effect.RENT, "is rejected", approval="rejected"),
    Case("ceiling below the reservation", Effect.RENT, "less than the run's", ceiling=1.5),
    Case("under the threshold needs no approval", Effect.RENT, None, approval=None, threshold=5.0),
    Case("over the threshold needs one", Effect.RENT, "must approve", approval=None, threshold=1.0),
    Case("stage allowed", Effect.START_STAGE, None),
    Case("stage while paused", Effect.START_STAGE, "paused", paused=True),
    Case("stage cancelled", Effect.START_STAGE, "is cancelled", stage_status=StageStatus.CANCELLED),
    Case("stage above its reservation", Effect.START_STAGE, "above the stage's", price=3.0),
    Case("promote allowed", Effect.PROMOTE, None),
    Case("promote while paused", Effect.PROMOTE, "paused", paused=True),
    Case("promote without the lease", Effect.PROMOTE, "not held", lease_owner="other"),
    Case("deploy while paused", Effect.DEPLOY, "paused", paused=True),
    Case("canary step while paused", Effect.CANARY_STEP, "paused", paused=True),
    Case("rollback while paused", Effect.ROLLBACK, None, paused=True),
    Case("teardown while paused", Effect.TEARDOWN, None, paused=True),
    Case("settle while paused", Effect.SETTLE, None, paused=True),
]


def _world(store: Store, settings: Settings, case: Case) -> tuple[str, str]:
    with store.session(write=True) as s:
        s.add(Decision(id="dec-1", thread_id="cycle-1", action="finetune", reason="t"))
        s.add(DatasetSnapshot(id="snap-1", content_hash="h", path="/nowhere"))
        s.flush()
        approval_id = None
        if case.approval is not None:
            approval_id = "appr-1"
            s.add(
                Approval(
                    id=approval_id,
                    decision_id="dec-1",
                    kind="training",
                    status=ApprovalStatus(case.approval),
                    thread_id="cycle-1",
                    cost_ceiling_usd=case.ceiling,
                    expires_at=utcnow() + timedelta(hours=1),
                )
            )
        s.add(
            TrainingRun(
                id="run-1",
                decision_id="dec-1",
                approval_id=approval_id,
                snapshot_id="snap-1",
                status=case.run_status,
                provider="vast",
                label="learning-pilot/test/run-1",
            )
        )
        s.add(EvalStage(id="eval-1", version_id="v1", status=case.stage_status, label="learning-pilot/test/eval-1"))
        if case.reserved is not None:
            reserve(store, s, amount_usd=case.reserved, caps=settings.budget, run_id="run-1", note="t")
            reserve(store, s, amount_usd=case.reserved, caps=settings.budget, run_id="eval-1", note="t")
        if case.paused:
            set_paused(s, True, actor="human:test", reason="test")
    lease = stage_lease("eval-1") if case.effect is Effect.START_STAGE else run_lease("run-1")
    if case.lease_owner is not None:
        with store.session(write=True) as s:
            assert acquire(s, lease, case.lease_owner, ttl_s=60)
    return lease, "run-1"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gate(case: Case, store: Store, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(policy={"approval_required_above_usd": case.threshold})
    lease, run_id = _world(store, settings, case)
    kwargs: dict[str, Any] = {"owner": ME, "lease": lease, "price_usd": case.price}
    if case.effect is Effect.RENT:
        kwargs["run_id"] = run_id
    if case.effect is Effect.START_STAGE:
        kwargs["stage_id"] = "eval-1"
    if case.expect is None:
        authorize(store, case.effect, settings, **kwargs)
        return
    with pytest.raises(EffectRefused) as refused:
        authorize(store, case.effect, settings, **kwargs)
    assert case.expect in refused.value.reason
    with store.session() as s:
        events = s.exec(select(Event).where(Event.entity_type == "effect")).all()
    assert len(events) == 1 and case.expect in events[0].reason  # the refusal is on the audit trail


def test_only_teardown_settlement_and_rollback_act_while_paused() -> None:
    assert {Effect.TEARDOWN, Effect.SETTLE, Effect.ROLLBACK} == ALLOWED_WHILE_PAUSED
