"""The supervisor's nodes from a candidate on: monitor, evaluate, gate, review, finish.

Promotion and deployment ask the effect gate (``pilot/spend/effects.py``) right before they act, with the
thread's lease: a paused pilot, or a process that lost the thread, promotes and deploys nothing.
"""

from __future__ import annotations

from typing import Any

from langgraph.types import interrupt

from pilot import testpoints
from pilot.context import PilotContext
from pilot.evaluation import remote as remote_eval
from pilot.evaluation import stages
from pilot.evaluation.evaluate import EvaluationError, evaluate_version, prepare_evaluation, score_evaluation
from pilot.evaluation.report import gate_report_lines
from pilot.serving import canary, registry
from pilot.serving.deploy import apply_champion
from pilot.spend.effects import Effect, EffectRefused, authorize
from pilot.store.models import Approval, Decision, ModelVersion, utcnow
from pilot.store.status import ApprovalKind, ApprovalStatus, DecisionAction, EntityType, ModelStatus
from pilot.store.writers import record_event, switch_model_status
from pilot.supervisor import approvals, notify
from pilot.supervisor.monitor import watch_live_quality
from pilot.supervisor.state import CycleState, get_decision, lease_of, log_line
from tools.errors import PilotError


def monitor(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    """Monitoring subagent (pilot/supervisor/monitor.py): the daemon also runs it on its own schedule."""
    outcome = watch_live_quality(ctx, cycle_id=state["cycle_id"], lease=lease_of(state))
    if outcome.decision_id is None:
        return {"log": log_line(state, outcome.line)}
    return {
        "decision_id": outcome.decision_id,
        "action": DecisionAction.ROLLBACK.value,
        "reason": outcome.reason,
        "outcome": outcome.line,
        "log": log_line(state, outcome.line),
    }


def announce_gate(ctx: PilotContext, state: CycleState, version_id: str, outcome: str) -> None:
    """The gate's report (overall, interval, per domain) to Slack: in the training approval's thread when there is
    one, else a top-level message."""
    with ctx.store.session() as session:
        version = session.get(ModelVersion, version_id)
        evaluation = dict(version.eval_report) if version is not None else {}
    text = "\n".join([f"Gate: {outcome}", *gate_report_lines(version_id, evaluation)[1:]])
    approval_id = state.get("approval_id")
    if not (approval_id and notify.notify_progress(ctx, approval_id, text)):
        notify.notify_incident(ctx, text)


def _remote_stage(ctx: PilotContext, state: CycleState) -> tuple[str | None, dict[str, Any] | None]:
    """For an evaluation on a rented host: (stage id, None) when the stage is ready to be scored, else (stage id,
    the node's update) after opening the stage (or finding the one a restart left): the graph then waits on it."""
    version_id = state["version_id"]
    stage_id = state.get("stage_id") or None
    if stage_id is None:
        existing = stages.stage_for_version(ctx, version_id)
        stage_id = existing.id if existing is not None else None
    if stage_id is None:
        prep = prepare_evaluation(ctx, version_id)  # adapters verified before anything is rented
        stage_id = remote_eval.open_stage(
            ctx, version_id=version_id, golden=prep.golden, adapters=prep.adapters, lease=lease_of(state)
        )
    if stages.is_ready(stages.get_stage(ctx, stage_id)):
        return stage_id, None
    line = f"evaluate: {version_id} on a rented host (stage {stage_id}); a worker watches it"
    return stage_id, {"stage_id": stage_id, "awaiting_stage": True, "log": log_line(state, line)}


def evaluate(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    """Evaluate the candidate against the champion and gate. On this machine it runs here; on a rented host the
    node opens the stage and returns (``await_stage`` waits with ``interrupt()``), and scores it when resumed."""
    version_id = state["version_id"]
    try:
        if remote_eval.evaluates_remotely(ctx.settings):
            stage_id, waiting = _remote_stage(ctx, state)
            if waiting is not None:
                return waiting
            assert stage_id is not None
            prep = prepare_evaluation(ctx, version_id, fetch_adapters=False)  # verified before the stage was rented
            generated = remote_eval.collect_stage(ctx, stage_id, prep.golden_ids)
            report, record = score_evaluation(ctx, prep, generated)
        else:
            report, record = evaluate_version(ctx, version_id, lease=lease_of(state))
    except (EvaluationError, PilotError) as exc:
        with ctx.store.session(write=True) as session:
            registry.reject(session, version_id, actor="system", reason=f"evaluation failed: {exc}")
        return {"verdict": "reject", "outcome": f"evaluation failed: {exc}", "log": log_line(state, f"evaluate: {exc}")}
    with ctx.store.session(write=True) as session:
        version = session.get(ModelVersion, version_id)
        assert version is not None
        version.eval_report = record
    line = (
        f"evaluate: {version_id} {report.candidate_score:.3f} vs {record['champion_label']} "
        f"{report.champion_score:.3f} on {report.n_items} golden items "
        f"(diff {report.diff:+.3f}, CI [{report.ci_low:+.3f}, {report.ci_high:+.3f}])"
    )
    return {
        "verdict": str(report.verdict),
        "reason": report.reason,
        "awaiting_stage": False,
        "log": log_line(state, line),
    }


def await_stage(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    """Wait (``interrupt``) until the evaluation stage is ready: its host uploaded the predictions, or it ended."""
    stage_id = state["stage_id"]
    if not stages.is_ready(stages.get_stage(ctx, stage_id)):
        interrupt({"stage_id": stage_id, "kind": "stage", "version_id": state["version_id"]})
        row = stages.get_stage(ctx, stage_id)
        if not stages.is_ready(row):
            return {"log": log_line(state, f"evaluation stage {stage_id} still {row.status}")}
    return {"awaiting_stage": False}


def _may_promote(ctx: PilotContext, state: CycleState, actor: str) -> str | None:
    try:
        authorize(ctx.store, Effect.PROMOTE, ctx.settings, owner=ctx.owner, lease=lease_of(state), actor=actor)
    except EffectRefused as exc:
        return exc.reason
    return None


def gate(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    version_id, verdict, reason = state["version_id"], state["verdict"], state.get("reason", "")
    testpoints.reached("gate_passed")
    refused = _may_promote(ctx, state, "supervisor") if verdict == "promote" else None
    with ctx.store.session(write=True) as session:
        if verdict == "promote" and refused is not None:
            outcome = f"NOT PROMOTED {version_id} (the gate passed: {reason}): {refused}; it stays a candidate"
        elif verdict == "promote":
            move = registry.promote(session, version_id, actor="supervisor", reason=reason)
            rollout = canary.start_rollout(session, ctx.settings, version_id, actor="supervisor")
            outcome = f"PROMOTED {version_id} to champion (was {move.from_version or 'base'}): {reason}"
            if rollout is not None:
                outcome += f"; canary: {rollout.share:.0%} of sessions first"
        elif verdict == "reject":
            registry.reject(session, version_id, actor="supervisor", reason=reason)
            outcome = f"REJECTED {version_id}: {reason}"
        else:
            switch_model_status(session, version_id, ModelStatus.AWAITING_REVIEW, actor="supervisor", reason=reason)
            outcome = f"INCONCLUSIVE {version_id}: {reason}; a human decides"
    if outcome.startswith("PROMOTED"):
        testpoints.reached("promoted")
        outcome += apply_champion(ctx, f"promoted {version_id}", lease=lease_of(state))
    announce_gate(ctx, state, version_id, outcome)
    return {"outcome": outcome, "log": log_line(state, f"gate: {outcome}")}


def request_review(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    decision = get_decision(ctx, state["decision_id"])
    with ctx.store.session(write=True) as session:
        approval = approvals.request_approval(
            session,
            decision=decision,
            kind=ApprovalKind.PROMOTION,
            summary={"what": f"promote {state['version_id']}", "why": state.get("reason", "")},
            cost_ceiling_usd=0.0,
            expiry_minutes=ctx.settings.policy.approval_expiry_minutes,
        )
    notify.notify_approval_requested(ctx, approval.id)
    return {
        "review_id": approval.id,
        "log": log_line(state, f"review {approval.id} requested for {state['version_id']}"),
    }


def await_review(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    interrupt({"approval_id": state["review_id"], "kind": "promotion", "version_id": state["version_id"]})
    with ctx.store.session() as session:
        approval = session.get(Approval, state["review_id"])
    assert approval is not None
    actor = approval.decided_by or "system"
    refused = _may_promote(ctx, state, actor) if approval.status == ApprovalStatus.APPROVED else None
    with ctx.store.session(write=True) as session:
        if approval.status == ApprovalStatus.APPROVED and refused is None:
            registry.promote(session, state["version_id"], actor=actor, reason=f"approved on review {approval.id}")
            canary.start_rollout(session, ctx.settings, state["version_id"], actor=actor)
            outcome = f"PROMOTED {state['version_id']} on human review by {actor}"
        elif refused is not None:
            outcome = f"NOT PROMOTED {state['version_id']} (approved by {actor}): {refused}; it awaits review again"
        else:
            registry.reject(session, state["version_id"], actor=actor, reason=f"review {approval.id} {approval.status}")
            outcome = f"REJECTED {state['version_id']}: review {approval.status}"
    notify.notify_outcome(ctx, state["review_id"])
    if outcome.startswith("PROMOTED"):
        outcome += apply_champion(ctx, f"promoted {state['version_id']} on review", lease=lease_of(state))
    return {"outcome": outcome, "log": log_line(state, outcome)}


def finish(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    decision_id = state.get("decision_id")
    outcome = state.get("outcome") or state.get("reason") or state.get("action", "")
    if decision_id:
        with ctx.store.session(write=True) as session:
            decision = session.get(Decision, decision_id)
            if decision is not None and decision.finished_at is None:
                decision.finished_at = utcnow()
                decision.outcome = outcome
                record_event(
                    session, entity_type=EntityType.DECISION, entity_id=decision_id, actor="supervisor", reason=outcome
                )
    return {"outcome": outcome}
