"""What ``learning-pilot status`` shows, as one plain dict (``--json`` prints it as is).

Kept light on purpose: it imports the store and nothing of the graph, the LLM or the training stack, so the
command answers in well under half a second.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from pilot.settings import Settings
from pilot.spend.ledger import spend_summary
from pilot.store import Store
from pilot.store.installation import INSTALLATION_KEY, read_others
from pilot.store.models import (
    Approval,
    DeadLetter,
    Decision,
    ExecutionRecordRow,
    ModelVersion,
    PilotState,
    TrainingRun,
)
from pilot.store.status import Alias, ApprovalStatus
from pilot.store.writers import alias_target, is_paused
from subagents.methods import describe_method


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _method(run: TrainingRun) -> dict[str, Any]:
    """The run's training method and what it trained on (subagents/training.py: describe_method)."""
    m = describe_method(((run.config or {}).get("plan")) or {})
    return {"method": m["method"], "method_data": m["data"]}


def build_status(settings: Settings, store: Store, *, limit: int = 5) -> dict[str, Any]:
    with store.session() as session:
        champion_id = alias_target(session, Alias.CHAMPION)
        champion = session.get(ModelVersion, champion_id) if champion_id else None
        runs = session.exec(select(TrainingRun).order_by(col(TrainingRun.created_at).desc()).limit(limit)).all()
        pending = session.exec(
            select(Approval).where(Approval.status == ApprovalStatus.PENDING).order_by(col(Approval.requested_at))
        ).all()
        decisions = session.exec(select(Decision).order_by(col(Decision.created_at).desc()).limit(limit)).all()
        spend = spend_summary(session)
        total_records = session.exec(select(func.count()).select_from(ExecutionRecordRow)).one()
        dead = session.exec(select(func.count()).select_from(DeadLetter)).one()
        versions = session.exec(select(func.count()).select_from(ModelVersion)).one()
        installation = session.get(PilotState, INSTALLATION_KEY)
        return {
            "paused": is_paused(session),
            "env": settings.env,
            "installation": installation.value if installation is not None else None,
            "other_installations": read_others(session),
            "store": store.display_url,
            "champion": {
                "version": champion.id,
                "base_model": champion.base_model,
                "adapter_sha256": champion.adapter_sha256,
                "score": champion.eval_report.get("candidate_score"),
                "promoted_from_run": champion.run_id,
            }
            if champion
            else {"version": None, "base_model": settings.training.base_model},
            "runs": [
                {
                    "id": r.id,
                    "status": r.status,
                    "provider": r.provider,
                    "reason": r.status_message or r.termination_reason,
                    "estimated_cost_usd": r.estimated_cost_usd,
                    "actual_cost_usd": r.actual_cost_usd,
                    "created_at": _iso(r.created_at),
                    **_method(r),
                }
                for r in runs
            ],
            "pending_approvals": [
                {
                    "id": a.id,
                    "kind": a.kind,
                    "decision_id": a.decision_id,
                    "why": a.summary.get("why") or a.summary.get("what"),
                    "cost_ceiling_usd": a.cost_ceiling_usd,
                    "expires_at": _iso(a.expires_at),
                }
                for a in pending
            ],
            "spend": {
                **spend.to_dict(),
                "cap_per_day_usd": settings.budget.per_day_usd,
                "cap_per_month_usd": settings.budget.per_month_usd,
                "cap_per_run_usd": settings.budget.per_run_usd,
            },
            "records": {"total": int(total_records), "dead_letters": int(dead)},
            "model_versions": int(versions),
            "decisions": [
                {
                    "id": d.id,
                    "action": d.action,
                    "reason": d.reason,
                    "outcome": d.outcome,
                    "rationale": d.rationale,
                    "agent_fallback": (d.figures.get("agent") or {}).get("fallback"),
                    "at": _iso(d.created_at),
                }
                for d in decisions
            ],
        }
