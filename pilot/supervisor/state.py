"""The supervisor thread's state (checkpointed by LangGraph) and the helpers every node shares."""

from __future__ import annotations

import logging
from typing import Any, TypedDict

from sqlmodel import select

from pilot.context import PilotContext
from pilot.store.leases import thread_lease
from pilot.store.models import Decision, TrainingRun

logger = logging.getLogger(__name__)


class CycleState(TypedDict, total=False):
    cycle_id: str
    decision_id: str
    action: str
    reason: str
    snapshot_id: str
    approval_id: str
    review_id: str
    run_id: str
    version_id: str
    stage_id: str  # the candidate's evaluation stage on a rented host
    awaiting_stage: bool  # the stage is rented: the graph waits until a worker drove it to its end
    verdict: str
    outcome: str
    reapprove: str  # why the price or the ceiling sent the run back to a human
    new_examples: int
    per_domain_new: dict[str, int]
    log: list[str]


def log_line(state: CycleState, line: str) -> list[str]:
    logger.info("%s", line)
    return [*state.get("log", []), line]


def thread_id_of(state: CycleState) -> str:
    return f"cycle-{state['cycle_id']}"


def lease_of(state: CycleState) -> str:
    """The thread's lease: the effect gate checks it before this thread rents, promotes or deploys."""
    return thread_lease(thread_id_of(state))


def get_decision(ctx: PilotContext, decision_id: str) -> Decision:
    with ctx.store.session() as session:
        decision = session.get(Decision, decision_id)
    assert decision is not None
    return decision


def update_decision(ctx: PilotContext, decision_id: str, **fields: Any) -> None:
    with ctx.store.session(write=True) as session:
        decision = session.get(Decision, decision_id)
        assert decision is not None
        for key, value in fields.items():
            setattr(decision, key, value)


def run_for_decision(ctx: PilotContext, decision_id: str) -> TrainingRun | None:
    """The run already created for this decision (a resumed node must not create a second one)."""
    with ctx.store.session() as session:
        return session.exec(select(TrainingRun).where(TrainingRun.decision_id == decision_id)).first()
