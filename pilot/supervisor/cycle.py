"""One supervisor cycle: expire approvals, resume the threads whose approvals were answered, continue threads a
crash interrupted, then start a new cycle thread. Used by ``run --once``, the scheduler and the demo."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from langgraph.types import Command
from sqlmodel import col, select

from pilot.context import PilotContext
from pilot.data.ingest import ingest_drop_dir
from pilot.store.models import Approval, Decision
from pilot.store.status import ApprovalStatus
from pilot.supervisor import approvals
from pilot.supervisor.graph import build_graph, open_checkpointer

logger = logging.getLogger(__name__)


@dataclass
class CycleResult:
    thread_id: str
    resumed: bool
    outcome: str
    waiting_on: str | None = None  # the approval id the thread is interrupted on
    log: list[str] = field(default_factory=list)


def _result(thread_id: str, out: dict[str, Any], *, resumed: bool, seen: int = 0) -> CycleResult:
    """``seen``: how many log lines the thread had before this invocation (a resumed thread reports only new ones)."""
    interrupts = out.get("__interrupt__") or []
    waiting = str(interrupts[0].value.get("approval_id")) if interrupts else None
    outcome = out.get("outcome") or (f"waiting for approval {waiting}" if waiting else out.get("reason", ""))
    return CycleResult(thread_id, resumed, str(outcome), waiting, list(out.get("log", []))[seen:])


def _threads_to_resume(ctx: PilotContext) -> list[tuple[str, str]]:
    """(thread_id, approval_id) of unfinished decisions whose approval has an answer."""
    with ctx.store.session() as session:
        rows = session.exec(
            select(Approval.thread_id, Approval.id)
            .join(Decision, col(Decision.id) == col(Approval.decision_id))
            .where(Approval.status != ApprovalStatus.PENDING, col(Decision.finished_at).is_(None))
            .order_by(col(Approval.requested_at))
        ).all()
    return [(str(t), str(a)) for t, a in rows]


def _unfinished_threads(ctx: PilotContext) -> list[str]:
    with ctx.store.session() as session:
        rows = session.exec(select(Decision.thread_id).where(col(Decision.finished_at).is_(None))).all()
    return [str(r) for r in rows]


def run_cycle(ctx: PilotContext, *, ingest: bool = True) -> list[CycleResult]:
    if ingest and ctx.settings.drop_dir.is_dir():
        ingest_drop_dir(ctx.store, ctx.settings.drop_dir, batch_size=ctx.settings.ingest.batch_size)
    with ctx.store.session(write=True) as session:
        for approval in approvals.expire_due(session):
            logger.info("Approval %s expired: denied by default", approval.id)
    results: list[CycleResult] = []
    with open_checkpointer(ctx) as saver:
        app = build_graph(ctx).compile(checkpointer=saver)
        resumed_threads = set()
        for thread_id, approval_id in _threads_to_resume(ctx):
            config: Any = {"configurable": {"thread_id": thread_id}}
            before = app.get_state(config)
            if not before.next:
                continue
            out = app.invoke(Command(resume={"approval_id": approval_id}), config)
            results.append(_result(thread_id, out, resumed=True, seen=len(before.values.get("log", []))))
            resumed_threads.add(thread_id)
        for thread_id in _unfinished_threads(ctx):
            config = {"configurable": {"thread_id": thread_id}}
            state = app.get_state(config)
            if thread_id in resumed_threads or not state.next or state.interrupts:
                continue
            logger.warning("Continuing thread %s, interrupted at %s by a restart", thread_id, state.next)
            out = app.invoke(None, config)
            results.append(_result(thread_id, out, resumed=True, seen=len(state.values.get("log", []))))
        cycle_id = uuid.uuid4().hex[:10]
        thread_id = f"cycle-{cycle_id}"
        out = app.invoke({"cycle_id": cycle_id, "log": []}, {"configurable": {"thread_id": thread_id}})
        results.append(_result(thread_id, out, resumed=False))
    return results
