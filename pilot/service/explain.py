"""``learning-pilot explain VERSION``: the chain from records to a promotion, read from the store.

records -> snapshot (hash, counts, what was dropped/scrubbed, which producers sent the records it saw) -> decision
(why) -> approval (who) -> run (method and its data, offer, price, cost) -> adapter (sha256) -> evaluation (gate
report) -> promotion history (who, when, why).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from pilot.serving.registry import get_version
from pilot.store import Store
from pilot.store.models import AliasHistory, Approval, DatasetSnapshot, Decision, Event, ExecutionRecordRow, TrainingRun
from subagents.methods import describe_method


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def explain(store: Store, version_id: str) -> dict[str, Any]:
    with store.session() as s:
        version = get_version(s, version_id)
        run = s.get(TrainingRun, version.run_id) if version.run_id else None
        snapshot = s.get(DatasetSnapshot, version.snapshot_id) if version.snapshot_id else None
        decision = s.get(Decision, run.decision_id) if run else None
        approval = s.get(Approval, run.approval_id) if run and run.approval_id else None
        moves = s.exec(
            select(AliasHistory)
            .where((AliasHistory.new_version == version_id) | (AliasHistory.old_version == version_id))
            .order_by(col(AliasHistory.id))
        ).all()
        events = s.exec(
            select(Event)
            .where(col(Event.entity_id).in_([version_id, *([run.id] if run else [])]))
            .order_by(col(Event.id))
        ).all()
        manifest = snapshot.manifest if snapshot else {}
        producers: dict[str, int] = {}
        if snapshot is not None:
            rows = s.exec(
                select(ExecutionRecordRow.producer, func.count())
                .where(col(ExecutionRecordRow.id) <= snapshot.max_record_pk)
                .group_by(col(ExecutionRecordRow.producer))
            ).all()
            producers = {name or "unknown (before producer tokens)": int(n) for name, n in rows}
        plan = ((run.config or {}).get("plan") if run else None) or {}
        return {
            "version": {"id": version.id, "status": version.status, "base_model": version.base_model},
            # how the adapter was trained: method, its data, the chooser's reason line and figures
            "method": describe_method(plan) if run else None,
            "records": manifest.get("source"),
            "snapshot": {
                "id": snapshot.id,
                "content_hash": snapshot.content_hash,
                "counts": {"train": snapshot.train_count, "eval": snapshot.eval_count, "golden": snapshot.golden_count},
                "dropped": manifest.get("dropped"),
                "scrubbed": manifest.get("scrubbed"),
                "quarantined": len(manifest.get("quarantined") or []),
                "producers": producers,  # who sent the records the snapshot saw, and how many each
            }
            if snapshot
            else None,
            "decision": {
                "id": decision.id,
                "action": decision.action,
                "reason": decision.reason,
                "rationale": decision.rationale,
                "figures": decision.figures,
                "at": _iso(decision.created_at),
            }
            if decision
            else None,
            "approval": {
                "id": approval.id,
                "status": approval.status,
                "by": approval.decided_by,
                "at": _iso(approval.decided_at),
                "cost_ceiling_usd": approval.cost_ceiling_usd,
            }
            if approval
            else None,
            "run": {
                "id": run.id,
                "status": run.status,
                "provider": run.provider,
                "offer": run.offer_id,
                "dph": run.dph,
                "estimated_cost_usd": run.estimated_cost_usd,
                "actual_cost_usd": run.actual_cost_usd,
                "metrics": run.metrics,
            }
            if run
            else None,
            "adapter": {"uri": version.adapter_uri, "sha256": version.adapter_sha256, "files": version.adapter_files},
            "evaluation": version.eval_report or None,
            "promotion_history": [
                {
                    "alias": m.alias,
                    "from": m.old_version,
                    "to": m.new_version,
                    "actor": m.actor,
                    "reason": m.reason,
                    "at": _iso(m.at),
                }
                for m in moves
            ],
            "events": [
                {
                    "at": _iso(e.at),
                    "entity": e.entity_id,
                    "actor": e.actor,
                    "old": e.old,
                    "new": e.new,
                    "reason": e.reason,
                }
                for e in events
            ],
        }
