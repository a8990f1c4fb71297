"""The facts the guardrails and the supervisor decide on, read from the store in one short transaction."""

from __future__ import annotations

from sqlalchemy import Integer, cast, func
from sqlmodel import col, select

from pilot.context import PilotContext
from pilot.spend.guardrails import Facts
from pilot.spend.ledger import spend_summary
from pilot.store.models import Approval, ExecutionRecordRow, TrainingRun, as_utc, utcnow
from pilot.store.status import ApprovalStatus, RunStatus
from pilot.store.writers import is_paused
from subagents.monitoring import LiveStats

TERMINAL = [s.value for s in RunStatus if s.is_terminal]


def gather_facts(ctx: PilotContext, *, new_examples: int, per_domain_new: dict[str, int] | None = None) -> Facts:
    with ctx.store.session() as session:
        in_flight = session.exec(
            select(func.count()).select_from(TrainingRun).where(col(TrainingRun.status).not_in(TERMINAL))
        ).one()
        pending = session.exec(
            select(func.count()).select_from(Approval).where(Approval.status == ApprovalStatus.PENDING)
        ).one()
        last_finished = session.exec(select(func.max(TrainingRun.finished_at))).one()
        return Facts(
            now=utcnow(),
            paused=is_paused(session),
            runs_in_flight=int(in_flight),
            pending_approvals=int(pending),
            last_run_finished_at=as_utc(last_finished) if last_finished is not None else None,
            new_examples=new_examples,
            spend=spend_summary(session),
            per_domain_new=per_domain_new or {},
        )


def live_stats(ctx: PilotContext, version_id: str) -> LiveStats:
    """Success counts of live records served by ``version_id``."""
    with ctx.store.session() as session:
        total, successes = session.exec(
            select(func.count(), func.coalesce(func.sum(cast(col(ExecutionRecordRow.success), Integer)), 0)).where(
                ExecutionRecordRow.model_version == version_id
            )
        ).one()
    return LiveStats(version=version_id, successes=int(successes), total=int(total))
