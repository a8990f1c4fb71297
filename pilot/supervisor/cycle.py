"""One supervisor pass: expire approvals, resume the threads whose approval was answered or whose job (a training
run, an evaluation stage) ended,
continue threads a crash interrupted, then start a new cycle thread. Used by ``run --once``, the daemon and the
demo.

Every thread is advanced under its lease (``thread:<thread_id>``, pilot/store/leases.py): a thread another live
process is advancing — ``run --once`` next to the daemon, or two daemons around a leader change — is skipped, and
the effect gate refuses the effects of a process that lost the lease. ``drive=True`` (``run --once``, the demo)
drives a thread's job (run or evaluation stage) to its end in this process, under the job's lease, and resumes the
thread; the daemon passes ``drive=False``: its jobs worker advances runs and stages and the next pass resumes the
thread, so a pass never blocks on a host.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from langgraph.types import Command
from sqlmodel import col, select

from pilot.context import PilotContext
from pilot.data.ingest import ingest_drop_dir
from pilot.evaluation import stages
from pilot.runs.driver import watch_run
from pilot.store.leases import LeaseKeeper, thread_lease
from pilot.store.models import Approval, Decision, EvalStage, TrainingRun
from pilot.store.status import ApprovalStatus, RunStatus
from pilot.supervisor import approvals
from pilot.supervisor.graph import build_graph, open_checkpointer

logger = logging.getLogger(__name__)


@dataclass
class CycleResult:
    thread_id: str
    resumed: bool
    outcome: str
    waiting_on: str | None = None  # the approval id (or run id) the thread is interrupted on
    log: list[str] = field(default_factory=list)


def _waiting(out: dict[str, Any]) -> dict[str, Any] | None:
    interrupts = out.get("__interrupt__") or []
    return dict(interrupts[0].value) if interrupts else None


def _result(thread_id: str, out: dict[str, Any], *, resumed: bool, seen: int = 0) -> CycleResult:
    """``seen``: how many log lines the thread had before this invocation (a resumed thread reports only new ones)."""
    waiting = _waiting(out)
    waiting_on = None
    outcome = out.get("outcome") or out.get("reason", "")
    if waiting is not None and waiting.get("approval_id"):
        waiting_on = str(waiting["approval_id"])
        outcome = out.get("outcome") or f"waiting for approval {waiting_on}"
    elif waiting is not None and waiting.get("run_id"):
        waiting_on = str(waiting["run_id"])
        outcome = out.get("outcome") or f"waiting for run {waiting_on}"
    elif waiting is not None and waiting.get("stage_id"):
        waiting_on = str(waiting["stage_id"])
        outcome = out.get("outcome") or f"waiting for evaluation stage {waiting_on}"
    return CycleResult(thread_id, resumed, str(outcome), waiting_on, list(out.get("log", []))[seen:])


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


def _job_done(ctx: PilotContext, waiting: dict[str, Any]) -> bool | None:
    """Whether the job a thread waits on (a run, an evaluation stage) is done; None when there is no such job (the
    thread waits on a human, or the row is gone): such a thread is never resumed for a job."""
    with ctx.store.session() as session:
        if waiting.get("run_id"):
            run = session.get(TrainingRun, str(waiting["run_id"]))
            return None if run is None else RunStatus(run.status).is_terminal
        if waiting.get("stage_id"):
            stage = session.get(EvalStage, str(waiting["stage_id"]))
            return None if stage is None else stages.is_ready(stage)
    return None


def _drive(ctx: PilotContext, waiting: dict[str, Any]) -> dict[str, str] | None:
    """Drive the job a thread waits on to its end in this process; the resume value, or None when another process
    holds the job (or the thread waits on a human)."""
    if waiting.get("run_id"):
        run = watch_run(ctx, str(waiting["run_id"]))
        return {"run_id": run.id} if RunStatus(run.status).is_terminal else None
    if waiting.get("stage_id"):
        stage = stages.drive_stage(ctx, str(waiting["stage_id"]))
        return {"stage_id": stage.id} if stages.is_ready(stage) else None
    return None


class _Pass:
    """One pass over the threads, with the compiled graph."""

    def __init__(self, ctx: PilotContext, app: Any, *, drive: bool) -> None:
        self.ctx, self.app, self.drive = ctx, app, drive
        self.results: list[CycleResult] = []
        self.done: set[str] = set()

    def advance(self, thread_id: str, value: Any, *, resumed: bool) -> None:
        """Invoke the thread under its lease; while it waits on a run and ``drive`` is on, drive the run here and
        resume the thread with the run's end."""
        ttl = self.ctx.settings.scheduler.lease_ttl_s
        with LeaseKeeper(self.ctx.store, thread_lease(thread_id), self.ctx.owner, ttl_s=ttl) as lease:
            if not lease.held:
                logger.info("Thread %s is advanced by another process; skipping it", thread_id)
                self.done.add(thread_id)
                return
            config: Any = {"configurable": {"thread_id": thread_id}}
            seen = len(self.app.get_state(config).values.get("log", [])) if resumed else 0
            out = self.app.invoke(value, config)
            while self.drive and not lease.lost.is_set():
                waiting = _waiting(out)
                resume = _drive(self.ctx, waiting) if waiting is not None else None
                if resume is None:
                    break  # a human decides, or another process drives the job (its lease): resume later
                out = self.app.invoke(Command(resume=resume), config)
            self.results.append(_result(thread_id, out, resumed=resumed, seen=seen))
            self.done.add(thread_id)

    def pending_state(self, thread_id: str) -> Any:
        return self.app.get_state({"configurable": {"thread_id": thread_id}})


def run_cycle(ctx: PilotContext, *, ingest: bool = True, drive: bool = True) -> list[CycleResult]:
    if ingest and ctx.settings.drop_dir.is_dir():
        ingest_drop_dir(ctx.store, ctx.settings.drop_dir, batch_size=ctx.settings.ingest.batch_size)
    with ctx.store.session(write=True) as session:
        for approval in approvals.expire_due(session):
            logger.info("Approval %s expired: denied by default", approval.id)
    with open_checkpointer(ctx) as saver:
        work = _Pass(ctx, build_graph(ctx).compile(checkpointer=saver), drive=drive)
        for thread_id, approval_id in _threads_to_resume(ctx):
            state = work.pending_state(thread_id)
            waiting = [i.value for i in state.interrupts]
            if (
                thread_id in work.done
                or not state.next
                or not any(w.get("approval_id") == approval_id for w in waiting)
            ):
                continue
            work.advance(thread_id, Command(resume={"approval_id": approval_id}), resumed=True)
        for thread_id in _unfinished_threads(ctx):
            if thread_id in work.done:
                continue
            state = work.pending_state(thread_id)
            if not state.next:
                continue
            waiting = [i.value for i in state.interrupts]
            jobs = [w for w in waiting if w.get("run_id") or w.get("stage_id")]
            if jobs:
                done = _job_done(ctx, jobs[0])
                if done is not None and (drive or done):
                    resume = {k: str(jobs[0][k]) for k in ("run_id", "stage_id") if jobs[0].get(k)}
                    work.advance(thread_id, Command(resume=resume), resumed=True)
                continue
            if waiting:
                continue  # waits for a human
            logger.warning("Continuing thread %s, interrupted at %s by a restart", thread_id, state.next)
            work.advance(thread_id, None, resumed=True)
        cycle_id = uuid.uuid4().hex[:10]
        work.advance(f"cycle-{cycle_id}", {"cycle_id": cycle_id, "log": []}, resumed=False)
    return work.results
