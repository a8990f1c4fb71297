"""The supervisor: a LangGraph StateGraph over the data, training, deployment and monitoring subagents.

One thread per cycle (``thread_id = cycle-<id>``), checkpointed (SQLite, or PostgreSQL with a Postgres store).
The approval and review steps call ``interrupt()`` and resume with ``Command(resume=...)``; since a resumed
node runs again from its start, nothing with a side effect precedes an ``interrupt()``: approvals are created by
the node *before* it, and the waiting node only reads the answer from the store, which is the source of truth.

    monitor ─► observe ─► decide ─┬─► finish
                                  └─► snapshot ─► plan ─┬─► finish (denied / nothing to rent)
                                                        ├─► request_approval ─► await_approval ─┬─► train
                                                        └─► train                              └─► finish
    train ─► evaluate ─► gate ─┬─► finish (promoted / rejected)
                               └─► request_review ─► await_review ─► finish
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from sqlmodel import select

from pilot.context import PilotContext
from pilot.data.snapshots import make_snapshot, new_data
from pilot.data.stats import task_drift
from pilot.evaluation.evaluate import EvaluationError, evaluate_version
from pilot.evaluation.report import gate_report_lines
from pilot.runs.driver import launch_run, watch_run
from pilot.runs.lifecycle import create_run, training_params, version_for_run
from pilot.serving import canary, registry
from pilot.serving.deploy import make_target, sync_champion
from pilot.spend.guardrails import Ruling, TrainingProposal, Verdict, rule_training
from pilot.store.models import Approval, DatasetSnapshot, Decision, ModelVersion, TrainingRun, utcnow
from pilot.store.status import ApprovalKind, ApprovalStatus, DecisionAction, ModelStatus, RunStatus
from pilot.store.writers import record_event, switch_model_status
from pilot.supervisor import approvals, notify
from pilot.supervisor.agent import decide_with_agent, recent_decisions
from pilot.supervisor.facts import gather_facts
from subagents.training import TrainingPlan, count_tokens, plan_training, requirements_for
from tools.errors import PilotError

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
    verdict: str
    outcome: str
    new_examples: int
    per_domain_new: dict[str, int]
    log: list[str]


Node = Callable[[CycleState], dict[str, Any]]


def _log(state: CycleState, line: str) -> list[str]:
    logger.info("%s", line)
    return [*state.get("log", []), line]


def _decision(ctx: PilotContext, decision_id: str) -> Decision:
    with ctx.store.session() as session:
        decision = session.get(Decision, decision_id)
    assert decision is not None
    return decision


def _update_decision(ctx: PilotContext, decision_id: str, **fields: Any) -> None:
    with ctx.store.session(write=True) as session:
        decision = session.get(Decision, decision_id)
        assert decision is not None
        for key, value in fields.items():
            setattr(decision, key, value)


def run_for_decision(ctx: PilotContext, decision_id: str) -> str | None:
    """The run already created for this decision (a resumed node must not create a second one)."""
    with ctx.store.session() as session:
        run = session.exec(select(TrainingRun).where(TrainingRun.decision_id == decision_id)).first()
    return run.id if run else None


def build_graph(ctx: PilotContext) -> StateGraph:
    settings = ctx.settings

    def price_run(snapshot_id: str) -> tuple[DatasetSnapshot, TrainingPlan | None]:
        """The training subagent prices the snapshot's run on the provider's offers as they are now."""
        with ctx.store.session() as session:
            snap = session.get(DatasetSnapshot, snapshot_id)
        assert snap is not None
        examples, tokens = count_tokens(Path(snap.path) / "train.jsonl")
        params = training_params(ctx)
        offers = ctx.gpu.search_offers(requirements_for(params, max_dph=settings.budget.max_dph))
        remote = ctx.gpu.name != "local"
        return snap, plan_training(params, offers, train_examples=examples, train_tokens=tokens, remote=remote)

    def rule_on(training: TrainingPlan, state: CycleState) -> Ruling:
        """Every guardrail, on the priced proposal and the facts as they are now."""
        facts = gather_facts(ctx, new_examples=state["new_examples"], per_domain_new=state["per_domain_new"])
        proposal = TrainingProposal(training.estimated_cost_usd, training.offer.dph_total, training.expected_hours)
        return rule_training(proposal, facts, settings)

    def deploy_champion(why: str) -> str:
        """Make the serving target agree with the registry; a refused deploy rolls the promotion back."""
        try:
            outcome = sync_champion(settings, ctx.store, ctx.artifacts, make_target(settings))
        except PilotError as exc:
            logger.error("Deploy after %s failed: %s", why, exc)
            with ctx.store.session(write=True) as session:
                registry.rollback(session, to_version=None, actor="system", reason=f"deploy failed: {exc}")
            with contextlib.suppress(PilotError):
                sync_champion(settings, ctx.store, ctx.artifacts, make_target(settings))
            return f"; deploy FAILED ({exc}), promotion rolled back"
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type="deployment",
                entity_id=settings.deploy.target,
                actor="system",
                reason=f"{why}: {outcome.action}",
                old=outcome.before,
                new=outcome.after,
            )
        return f"; serving {outcome.after or 'the base model'} on {outcome.target} ({outcome.action})"

    def announce_gate(state: CycleState, version_id: str, outcome: str) -> None:
        """The gate's report (overall, interval, per domain) to Slack: in the training approval's thread when
        there is one, else a top-level message."""
        with ctx.store.session() as session:
            version = session.get(ModelVersion, version_id)
            evaluation = dict(version.eval_report) if version is not None else {}
        text = "\n".join([f"Gate: {outcome}", *gate_report_lines(version_id, evaluation)[1:]])
        approval_id = state.get("approval_id")
        if not (approval_id and notify.notify_progress(ctx, approval_id, text)):
            notify.notify_incident(ctx, text)

    def monitor(state: CycleState) -> dict[str, Any]:
        """Monitoring subagent: the champion's live window against its baseline (pilot/serving/canary.py); a healthy
        canary steps up, a significant drop rolls back (alias move + serving target + event + Slack)."""
        with ctx.store.session(write=True) as session:
            watched = canary.watch(session, settings)
            drift = task_drift(session)
            decision = None
            if watched.action == "rollback":
                decision = Decision(
                    id=f"dec-{state['cycle_id']}",
                    thread_id=f"cycle-{state['cycle_id']}",
                    action=DecisionAction.ROLLBACK,
                    reason=watched.reason,
                    figures={**(watched.figures or {}), "drift": drift.to_dict()},
                )
                session.add(decision)
                session.flush()
                move = registry.rollback(session, to_version=None, actor="supervisor", reason=watched.reason)
                canary.end_rollout(session, actor="supervisor", reason=f"rolled back: {watched.reason}")
        drifted = "" if drift.js_divergence is None else f"; input drift JS={drift.js_divergence:.3f}"
        if decision is None:
            line = f"monitor: {watched.reason}{drifted}"
            if watched.action in ("step", "complete"):
                notify.notify_incident(ctx, f"Learning Pilot {line}")
            return {"log": _log(state, line)}
        line = f"monitor: rolled back {move.from_version} -> {move.to_version or 'base'}: {watched.reason}"
        line += deploy_champion(f"rolled back {move.from_version}") + drifted
        notify.notify_incident(ctx, f":rotating_light: Learning Pilot {line}")
        return {
            "decision_id": decision.id,
            "action": DecisionAction.ROLLBACK.value,
            "reason": watched.reason,
            "outcome": line,
            "log": _log(state, line),
        }

    def observe(state: CycleState) -> dict[str, Any]:
        """Data subagent: what is new since the last training."""
        data = new_data(ctx)
        if settings.knowledge.enabled:
            from pilot.data.knowledge import (  # Qdrant and the embedder load only when the KB is on
                knowledge_base,
                refresh_knowledge_base,
            )

            try:
                kb = refresh_knowledge_base(ctx, kb=knowledge_base(ctx))
                state = {
                    **state,
                    "log": _log(state, f"knowledge base: {kb.upserted} solutions upserted, {kb.total} total"),
                }
            except PilotError as exc:  # the KB helps prompts; it never blocks training decisions
                state = {**state, "log": _log(state, f"knowledge base: not refreshed ({exc})")}
        line = (
            f"observe: {data.new_records} new records since the last training, {data.new_examples} curated "
            f"examples {data.per_domain}"
        )
        return {"new_examples": data.new_examples, "per_domain_new": data.per_domain, "log": _log(state, line)}

    def decide(state: CycleState) -> dict[str, Any]:
        """Supervisor: the deterministic policy screens first (cost-free rules); the plan node prices the run."""
        facts = gather_facts(ctx, new_examples=state["new_examples"], per_domain_new=state["per_domain_new"])
        screen = rule_training(TrainingProposal(0.0, 0.0, 0.0), facts, settings)
        proceed = screen.verdict in (Verdict.ALLOW, Verdict.NEEDS_APPROVAL)
        action = DecisionAction.FINETUNE if proceed else DecisionAction.WAIT
        reason = (
            f"{facts.new_examples} new curated examples (>= {settings.policy.min_new_examples}), no run in flight, "
            "not paused, cooldown over"
            if proceed
            else screen.reason
        )
        decision_id = f"dec-{state['cycle_id']}"
        # The agent (when a model is configured) may only make this more conservative; see pilot/supervisor/agent.py.
        agent = decide_with_agent(ctx, facts, action, reason, recent_decisions(ctx), decision_id=decision_id)
        if agent.action != action:
            action, reason = DecisionAction(agent.action), agent.rationale[:500]
        with ctx.store.session(write=True) as session:
            session.add(
                Decision(
                    id=decision_id,
                    thread_id=f"cycle-{state['cycle_id']}",
                    action=action,
                    reason=reason,
                    rationale=agent.rationale if settings.llm.model else None,
                    figures={
                        "agent": agent.figures,
                        "rule": screen.rule,
                        "verdict": screen.verdict,
                        "new_examples": facts.new_examples,
                        "per_domain_new": facts.per_domain_new,
                        "runs_in_flight": facts.runs_in_flight,
                        "pending_approvals": facts.pending_approvals,
                        "paused": facts.paused,
                        "spend": facts.spend.to_dict(),
                    },
                )
            )
        return {
            "decision_id": decision_id,
            "action": action.value,
            "reason": reason,
            "log": _log(state, f"decide: {action}: {reason}"),
        }

    def snapshot(state: CycleState) -> dict[str, Any]:
        snap, result = make_snapshot(ctx)
        line = (
            f"snapshot {snap.id}: {snap.train_count} train / {snap.eval_count} eval / {snap.golden_count} golden; "
            f"dropped {dict(result.dropped)}; scrubbed {dict(result.scrubbed)}; quarantined {len(result.quarantined)}"
        )
        return {"snapshot_id": snap.id, "log": _log(state, line)}

    def plan(state: CycleState) -> dict[str, Any]:
        """Training subagent prices the run on real offers; every guardrail rules on the priced proposal."""
        _, training = price_run(state["snapshot_id"])
        decision = _decision(ctx, state["decision_id"])
        if training is None:
            reason = f"no offer on {ctx.gpu.name} meets the job's requirements within ${settings.budget.max_dph}/h"
            _update_decision(ctx, decision.id, action=DecisionAction.WAIT, reason=reason)
            return {"action": DecisionAction.WAIT.value, "reason": reason, "log": _log(state, f"plan: {reason}")}
        ruling = rule_on(training, state)
        figures = {**decision.figures, "plan": training.figures, "ruling": ruling.rule, "verdict": ruling.verdict}
        if ruling.verdict in (Verdict.DENY, Verdict.WAIT):
            _update_decision(ctx, decision.id, action=DecisionAction.WAIT, reason=ruling.reason, figures=figures)
            return {
                "action": DecisionAction.WAIT.value,
                "reason": ruling.reason,
                "log": _log(state, f"plan: {ruling.reason}"),
            }
        _update_decision(ctx, decision.id, figures=figures)
        line = (
            f"plan: {training.train_examples} examples (~{training.train_tokens} tokens) "
            f"on {training.offer.gpu_name} at "
            f"${training.offer.dph_total:.3f}/h, ~{training.expected_hours:.3f} h, "
            f"est. ${training.estimated_cost_usd:.4f}; {ruling.reason}"
        )
        return {"verdict": ruling.verdict.value, "log": _log(state, line)}

    def request_approval(state: CycleState) -> dict[str, Any]:
        decision = _decision(ctx, state["decision_id"])
        plan_figures = decision.figures.get("plan", {})
        with ctx.store.session(write=True) as session:
            approval = approvals.request_approval(
                session,
                decision=decision,
                kind=ApprovalKind.TRAINING,
                summary={
                    "what": "LoRA fine-tune",
                    "why": decision.reason,
                    "snapshot": state["snapshot_id"],
                    "plan": plan_figures,
                    "eval_plan": "candidate vs champion on the frozen golden split; paired bootstrap gate, "
                    f"margin {settings.evaluation.margin}",
                    "rollback_plan": "aliases: previous champion stays registered; `learning-pilot rollback`",
                },
                cost_ceiling_usd=float(plan_figures.get("estimated_cost_usd", 0.0)),
                expiry_minutes=settings.policy.approval_expiry_minutes,
            )
        notify.notify_approval_requested(ctx, approval.id)
        line = f"approval {approval.id} requested: `learning-pilot approve {approval.id}` or `reject {approval.id}`"
        return {"approval_id": approval.id, "log": _log(state, line)}

    def await_approval(state: CycleState) -> dict[str, Any]:
        interrupt({"approval_id": state["approval_id"], "kind": "training", "decision_id": state["decision_id"]})
        with ctx.store.session() as session:
            approval = session.get(Approval, state["approval_id"])
        assert approval is not None
        notify.notify_outcome(ctx, approval.id)
        if approval.status != ApprovalStatus.APPROVED:
            why = f"approval {approval.id} {approval.status}" + (
                f" by {approval.decided_by}" if approval.decided_by else ""
            )
            return {"action": DecisionAction.WAIT.value, "outcome": why, "log": _log(state, why)}
        return {"log": _log(state, f"approval {approval.id} approved by {approval.decided_by}")}

    def train(state: CycleState) -> dict[str, Any]:
        decision = _decision(ctx, state["decision_id"])
        snap, training = price_run(state["snapshot_id"])  # again: prices move between the approval and the launch
        if training is None:
            why = "no offer available at launch time"
            return {"outcome": why, "log": _log(state, f"train: {why}")}
        ceiling = decision.figures.get("plan", {}).get("estimated_cost_usd")
        if state.get("approval_id") and ceiling is not None and training.estimated_cost_usd > float(ceiling) + 1e-9:
            why = f"price rose above the approved ceiling ${float(ceiling):.4f}: ask again next cycle"
            return {"outcome": why, "log": _log(state, f"train: {why}")}
        if run_for_decision(ctx, decision.id) is None:
            # An approval never bypasses the kill switch or a cap: every rule rules again at launch time.
            ruling = rule_on(training, state)
            if ruling.verdict in (Verdict.DENY, Verdict.WAIT):
                return {"outcome": f"not launched: {ruling.reason}", "log": _log(state, f"train: {ruling.reason}")}
        try:
            run = create_run(
                ctx, decision_id=decision.id, approval_id=state.get("approval_id"), snapshot=snap, plan=training
            )
        except PilotError as exc:
            return {"outcome": f"not launched: {exc}", "log": _log(state, f"train: not launched: {exc}")}
        if run.status == RunStatus.PENDING:
            run = launch_run(ctx, run, snap)
        if not RunStatus(run.status).is_terminal:
            run = watch_run(ctx, run.id)
        if run.status != RunStatus.SUCCEEDED:
            why = f"run {run.id} {run.status}: {run.status_message or run.termination_reason}"
            return {"run_id": run.id, "outcome": why, "log": _log(state, f"train: {why}")}
        version = version_for_run(ctx, run.id)
        assert version is not None
        with ctx.store.session(write=True) as session:
            registry.mark_candidate(session, version.id, actor="system", reason=f"trained by {run.id}")
        metrics = run.metrics
        line = (
            f"train: run {run.id} succeeded in {metrics.get('duration_s', '?')} s ({metrics.get('steps', '?')} steps, "
            f"train loss {metrics.get('train_loss', '?')}); candidate {version.id}, adapter sha256 "
            f"{(version.adapter_sha256 or '')[:16]}"
        )
        return {"run_id": run.id, "version_id": version.id, "log": _log(state, line)}

    def evaluate(state: CycleState) -> dict[str, Any]:
        try:
            report, record = evaluate_version(ctx, state["version_id"])
        except (EvaluationError, PilotError) as exc:
            with ctx.store.session(write=True) as session:
                registry.reject(session, state["version_id"], actor="system", reason=f"evaluation failed: {exc}")
            return {"verdict": "reject", "outcome": f"evaluation failed: {exc}", "log": _log(state, f"evaluate: {exc}")}
        with ctx.store.session(write=True) as session:
            version = session.get(ModelVersion, state["version_id"])
            assert version is not None
            version.eval_report = record
        line = (
            f"evaluate: {state['version_id']} {report.candidate_score:.3f} vs {record['champion_label']} "
            f"{report.champion_score:.3f} on {report.n_items} golden items "
            f"(diff {report.diff:+.3f}, CI [{report.ci_low:+.3f}, {report.ci_high:+.3f}])"
        )
        return {"verdict": str(report.verdict), "reason": report.reason, "log": _log(state, line)}

    def gate(state: CycleState) -> dict[str, Any]:
        version_id, verdict, reason = state["version_id"], state["verdict"], state.get("reason", "")
        with ctx.store.session(write=True) as session:
            if verdict == "promote":
                move = registry.promote(session, version_id, actor="supervisor", reason=reason)
                rollout = canary.start_rollout(session, settings, version_id, actor="supervisor")
                outcome = f"PROMOTED {version_id} to champion (was {move.from_version or 'base'}): {reason}"
                if rollout is not None:
                    outcome += f"; canary: {rollout.share:.0%} of sessions first"
            elif verdict == "reject":
                registry.reject(session, version_id, actor="supervisor", reason=reason)
                outcome = f"REJECTED {version_id}: {reason}"
            else:
                switch_model_status(session, version_id, ModelStatus.AWAITING_REVIEW, actor="supervisor", reason=reason)
                outcome = f"INCONCLUSIVE {version_id}: {reason}; a human decides"
        if verdict == "promote":
            outcome += deploy_champion(f"promoted {version_id}")
        announce_gate(state, version_id, outcome)
        return {"outcome": outcome, "log": _log(state, f"gate: {outcome}")}

    def request_review(state: CycleState) -> dict[str, Any]:
        decision = _decision(ctx, state["decision_id"])
        with ctx.store.session(write=True) as session:
            approval = approvals.request_approval(
                session,
                decision=decision,
                kind=ApprovalKind.PROMOTION,
                summary={"what": f"promote {state['version_id']}", "why": state.get("reason", "")},
                cost_ceiling_usd=0.0,
                expiry_minutes=settings.policy.approval_expiry_minutes,
            )
        notify.notify_approval_requested(ctx, approval.id)
        return {
            "review_id": approval.id,
            "log": _log(state, f"review {approval.id} requested for {state['version_id']}"),
        }

    def await_review(state: CycleState) -> dict[str, Any]:
        interrupt({"approval_id": state["review_id"], "kind": "promotion", "version_id": state["version_id"]})
        with ctx.store.session(write=True) as session:
            approval = session.get(Approval, state["review_id"])
            assert approval is not None
            actor = approval.decided_by or "system"
            if approval.status == ApprovalStatus.APPROVED:
                registry.promote(session, state["version_id"], actor=actor, reason=f"approved on review {approval.id}")
                canary.start_rollout(session, settings, state["version_id"], actor=actor)
                outcome = f"PROMOTED {state['version_id']} on human review by {actor}"
            else:
                registry.reject(
                    session, state["version_id"], actor=actor, reason=f"review {approval.id} {approval.status}"
                )
                outcome = f"REJECTED {state['version_id']}: review {approval.status}"
        notify.notify_outcome(ctx, state["review_id"])
        if outcome.startswith("PROMOTED"):
            outcome += deploy_champion(f"promoted {state['version_id']} on review")
        return {"outcome": outcome, "log": _log(state, outcome)}

    def finish(state: CycleState) -> dict[str, Any]:
        decision_id = state.get("decision_id")
        outcome = state.get("outcome") or state.get("reason") or state.get("action", "")
        if decision_id:
            with ctx.store.session(write=True) as session:
                decision = session.get(Decision, decision_id)
                if decision is not None and decision.finished_at is None:
                    decision.finished_at = utcnow()
                    decision.outcome = outcome
                    record_event(
                        session, entity_type="decision", entity_id=decision_id, actor="supervisor", reason=outcome
                    )
        return {"outcome": outcome}

    def after_monitor(state: CycleState) -> Literal["observe", "finish"]:
        return "finish" if state.get("action") == DecisionAction.ROLLBACK else "observe"

    def after_decide(state: CycleState) -> Literal["snapshot", "finish"]:
        return "snapshot" if state["action"] == DecisionAction.FINETUNE else "finish"

    def after_plan(state: CycleState) -> Literal["request_approval", "train", "finish"]:
        if state["action"] != DecisionAction.FINETUNE:
            return "finish"
        return "request_approval" if state.get("verdict") == Verdict.NEEDS_APPROVAL else "train"

    def after_approval(state: CycleState) -> Literal["train", "finish"]:
        return "finish" if state.get("outcome") else "train"

    def after_train(state: CycleState) -> Literal["evaluate", "finish"]:
        return "evaluate" if state.get("version_id") and not state.get("outcome") else "finish"

    def after_evaluate(state: CycleState) -> Literal["gate", "finish"]:
        return "finish" if state.get("outcome") else "gate"

    def after_gate(state: CycleState) -> Literal["request_review", "finish"]:
        return "request_review" if state.get("verdict") == "inconclusive" else "finish"

    graph = StateGraph(CycleState)
    nodes: dict[str, Node] = {
        "monitor": monitor,
        "observe": observe,
        "decide": decide,
        "snapshot": snapshot,
        "plan": plan,
        "request_approval": request_approval,
        "await_approval": await_approval,
        "train": train,
        "evaluate": evaluate,
        "gate": gate,
        "request_review": request_review,
        "await_review": await_review,
        "finish": finish,
    }
    for name, fn in nodes.items():
        graph.add_node(name, fn)  # type: ignore[call-overload]
    graph.add_edge(START, "monitor")
    graph.add_conditional_edges("monitor", after_monitor)
    graph.add_edge("observe", "decide")
    graph.add_conditional_edges("decide", after_decide)
    graph.add_edge("snapshot", "plan")
    graph.add_conditional_edges("plan", after_plan)
    graph.add_edge("request_approval", "await_approval")
    graph.add_conditional_edges("await_approval", after_approval)
    graph.add_conditional_edges("train", after_train)
    graph.add_conditional_edges("evaluate", after_evaluate)
    graph.add_conditional_edges("gate", after_gate)
    graph.add_edge("request_review", "await_review")
    graph.add_edge("await_review", "finish")
    graph.add_edge("finish", END)
    return graph


@contextmanager
def open_checkpointer(ctx: PilotContext) -> Iterator[Any]:
    """SQLite checkpoints beside the store; PostgreSQL ones when the store is PostgreSQL."""
    if ctx.store.is_sqlite:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        path = ctx.settings.data_dir / "checkpoints.sqlite"
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
        finally:
            conn.close()
    else:
        from langgraph.checkpoint.postgres import PostgresSaver

        url = ctx.store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with PostgresSaver.from_conn_string(url) as pg_saver:
            pg_saver.setup()
            yield pg_saver
