"""The supervisor's nodes up to a trained candidate: observe, decide, snapshot, plan, approval, train, await_run.

Each node is ``node(ctx, state) -> update``. ``interrupt()`` re-runs its node on resume, so nothing with a side
effect precedes one: approvals are created by the node before ``await_approval``; ``train`` only creates the run
(its row and reservation, idempotent per decision) and ``await_run`` waits for it with ``interrupt()`` while a
worker (the daemon's jobs worker, or ``run --once`` driving it) rents, watches and collects.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from langgraph.types import interrupt

from pilot.context import PilotContext
from pilot.data.snapshots import make_snapshot, new_data
from pilot.runs.lifecycle import create_run, training_params, version_for_run
from pilot.serving import registry
from pilot.spend.costs import reservation_for
from pilot.spend.effects import EPSILON
from pilot.spend.guardrails import Ruling, TrainingProposal, Verdict, rule_training
from pilot.store.models import Approval, DatasetSnapshot, Decision, TrainingRun
from pilot.store.status import ApprovalKind, ApprovalStatus, DecisionAction, RunStatus
from pilot.store.writers import alias_target
from pilot.supervisor import approvals, notify
from pilot.supervisor.agent import decide_with_agent, recent_decisions
from pilot.supervisor.facts import gather_facts
from pilot.supervisor.state import CycleState, get_decision, log_line, run_for_decision, update_decision
from subagents.data.errors import SnapshotError
from subagents.lengths import truncation_report
from subagents.training import (
    METHOD_FILES,
    ChampionAdapter,
    GrpoParams,
    MethodChoice,
    PreferenceParams,
    TrainingPlan,
    choose_init,
    choose_method,
    count_tokens,
    kto_weights,
    plan_training,
    requirements_for,
)
from tools.errors import PilotError


def choose_run_method(ctx: PilotContext, snap: DatasetSnapshot) -> MethodChoice:
    """Supervised, DPO, KTO or GRPO, from what the snapshot holds (subagents/training.py: choose_method)."""
    r = ctx.settings.reinforcement
    return choose_method(
        dict(snap.manifest.get("preference") or {}),
        train_examples=snap.train_count,
        enabled=r.enabled and r.choose_method,
        min_pairs=r.min_pairs,
        min_undesirable=r.min_undesirable,
        allow_rl=r.allow_rl,
        min_rl_prompts=r.min_rl_prompts,
        min_rl_failure_share=r.min_rl_failure_share,
    )


def grpo_params(ctx: PilotContext) -> GrpoParams:
    r = ctx.settings.reinforcement
    return GrpoParams(
        num_generations=r.grpo_num_generations,
        max_new_tokens=r.grpo_max_new_tokens,
        temperature=r.grpo_temperature,
        top_p=r.grpo_top_p,
        beta=r.grpo_beta,
        epsilon=r.grpo_epsilon,
        num_iterations=r.grpo_num_iterations,
        test_timeout_s=r.grpo_test_timeout_s,
        sandbox=r.grpo_sandbox,
    )


def champion_adapter(ctx: PilotContext) -> ChampionAdapter | None:
    """The current champion, with the training params its run recorded, for GRPO's init (None: the base serves)."""
    with ctx.store.session() as session:
        version_id = alias_target(session, registry.CHAMPION)
        if version_id is None:
            return None
        version = registry.get_version(session, version_id)
        run = session.get(TrainingRun, version.run_id) if version.run_id else None
        recorded = (run.config or {}).get("params") if run is not None else None
        return ChampionAdapter(
            version=version.id,
            base_model=version.base_model,
            params=dict(recorded) if isinstance(recorded, dict) else None,
            adapter_files=dict(version.adapter_files or {}),
        )


def price_run(ctx: PilotContext, snapshot_id: str) -> tuple[DatasetSnapshot, TrainingPlan | None]:
    """The training subagent chooses the method and prices the snapshot's run on the provider's offers as they
    are now (a preference or RL method at its cost factor: its steps cost more GPU time per token). GRPO's tokens
    are its prompts' plus the completion budget (``grpo_max_new_tokens``) per prompt: the answers it trains on
    are generated, not in the file."""
    with ctx.store.session() as session:
        snap = session.get(DatasetSnapshot, snapshot_id)
    assert snap is not None
    choice = choose_run_method(ctx, snap)
    data = Path(snap.path) / METHOD_FILES[choice.method]
    examples, tokens = count_tokens(data)
    r = ctx.settings.reinforcement
    if choice.method == "grpo":
        tokens += examples * r.grpo_max_new_tokens
    params = training_params(ctx)
    offers = ctx.gpu.search_offers(requirements_for(params, max_dph=ctx.settings.budget.max_dph))
    remote = ctx.gpu.name != "local"
    cut = truncation_report(
        Path(snap.path) / "train.jsonl", params.seq_len, max_share=ctx.settings.training.max_truncated_share
    )
    factor = r.cost_factor(choice.method)
    plan = plan_training(
        params,
        offers,
        train_examples=examples,
        train_tokens=tokens,
        remote=remote,
        truncation=cut,
        method=choice,
        cost_factor=factor,
    )
    if plan is not None and choice.method == "grpo":
        plan.figures["grpo"] = asdict(grpo_params(ctx))
        init = choose_init(params, champion_adapter(ctx))
        plan.figures["init"] = init
        plan.figures["method_reason"] = f"{choice.reason}; init: {init['summary']}"
    elif plan is not None and choice.method != "sft":
        good, bad = kto_weights(int(choice.figures["desirable"]), int(choice.figures["undesirable"]))
        pref = PreferenceParams(
            choice.method, beta=r.beta, sft_weight=r.sft_weight, desirable_weight=good, undesirable_weight=bad
        )
        plan.figures["preference"] = asdict(pref)
    return snap, plan


def max_spend(ctx: PilotContext, training: TrainingPlan) -> float:
    """The most the run may spend: its reservation. This is the figure a human approves."""
    return reservation_for(training.estimated_cost_usd, ctx.settings.budget)


def rule_on(ctx: PilotContext, training: TrainingPlan, state: CycleState) -> Ruling:
    """Every guardrail, on the priced proposal (its reservation included) and the facts as they are now."""
    facts = gather_facts(ctx, new_examples=state["new_examples"], per_domain_new=state["per_domain_new"])
    proposal = TrainingProposal(
        training.estimated_cost_usd, training.offer.dph_total, training.expected_hours, max_spend(ctx, training)
    )
    return rule_training(proposal, facts, ctx.settings)


def plan_figures(ctx: PilotContext, training: TrainingPlan) -> dict[str, Any]:
    return {**training.figures, "max_spend_usd": max_spend(ctx, training)}


def observe(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    """Data subagent: what is new since the last training."""
    data = new_data(ctx)
    if ctx.settings.knowledge.enabled:
        from pilot.data.knowledge import (  # Qdrant and the embedder load only when the KB is on
            knowledge_base,
            refresh_knowledge_base,
        )

        try:
            kb = refresh_knowledge_base(ctx, kb=knowledge_base(ctx))
            line = f"knowledge base: {kb.upserted} solutions upserted, {kb.total} total"
        except PilotError as exc:  # the KB helps prompts; it never blocks training decisions
            line = f"knowledge base: not refreshed ({exc})"
        state = {**state, "log": log_line(state, line)}
    line = (
        f"observe: {data.new_records} new records since the last training, {data.new_examples} curated "
        f"examples {data.per_domain}"
    )
    return {"new_examples": data.new_examples, "per_domain_new": data.per_domain, "log": log_line(state, line)}


def decide(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    """Supervisor: the deterministic policy screens first (cost-free rules); the plan node prices the run."""
    settings = ctx.settings
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
        "log": log_line(state, f"decide: {action}: {reason}"),
    }


def snapshot(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    try:
        snap, result = make_snapshot(ctx)
    except SnapshotError as exc:  # the final pass found a secret the scrubber missed: nothing ships
        why = f"snapshot refused: {exc}"
        update_decision(ctx, state["decision_id"], action=DecisionAction.WAIT, reason=why[:500])
        return {"action": DecisionAction.WAIT.value, "outcome": why, "log": log_line(state, why)}
    line = (
        f"snapshot {snap.id}: {snap.train_count} train / {snap.eval_count} eval / {snap.golden_count} golden; "
        f"dropped {dict(result.dropped)}; scrubbed {dict(result.scrubbed)}; quarantined {len(result.quarantined)}"
    )
    return {"snapshot_id": snap.id, "log": log_line(state, line)}


def plan(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    """Training subagent prices the run on real offers; every guardrail rules on the priced proposal."""
    _, training = price_run(ctx, state["snapshot_id"])
    decision = get_decision(ctx, state["decision_id"])
    if training is None:
        reason = f"no offer on {ctx.gpu.name} meets the job's requirements within ${ctx.settings.budget.max_dph}/h"
        update_decision(ctx, decision.id, action=DecisionAction.WAIT, reason=reason)
        return {"action": DecisionAction.WAIT.value, "reason": reason, "log": log_line(state, f"plan: {reason}")}
    ruling = rule_on(ctx, training, state)
    figures = {
        **decision.figures,
        "plan": plan_figures(ctx, training),
        "ruling": ruling.rule,
        "verdict": ruling.verdict,
    }
    if ruling.verdict in (Verdict.DENY, Verdict.WAIT):
        update_decision(ctx, decision.id, action=DecisionAction.WAIT, reason=ruling.reason, figures=figures)
        return {
            "action": DecisionAction.WAIT.value,
            "reason": ruling.reason,
            "log": log_line(state, f"plan: {ruling.reason}"),
        }
    update_decision(ctx, decision.id, figures=figures)
    line = (
        f"plan: {training.figures.get('method_reason', 'supervised')}; "
        f"{training.train_examples} examples (~{training.train_tokens} tokens) on {training.offer.gpu_name} at "
        f"${training.offer.dph_total:.3f}/h, ~{training.expected_hours:.3f} h, est. ${training.estimated_cost_usd:.4f} "
        f"(at most ${max_spend(ctx, training):.4f}); {ruling.reason}"
    )
    cut = training.figures.get("truncation") or {}
    if cut.get("too_many"):
        line += f"; {cut.get('message')}"
    return {"verdict": ruling.verdict.value, "log": log_line(state, line)}


def request_approval(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    settings = ctx.settings
    decision = get_decision(ctx, state["decision_id"])
    figures = decision.figures.get("plan", {})
    ceiling = float(figures.get("max_spend_usd", figures.get("estimated_cost_usd", 0.0)))
    why = decision.reason + (f"; asked again: {state['reapprove']}" if state.get("reapprove") else "")
    with ctx.store.session(write=True) as session:
        approval = approvals.request_approval(
            session,
            decision=decision,
            kind=ApprovalKind.TRAINING,
            summary={
                "what": f"LoRA fine-tune, method {figures.get('method', 'sft')}",
                "why": f"{why}; {figures['method_reason']}" if figures.get("method_reason") else why,
                "snapshot": state["snapshot_id"],
                "plan": figures,
                "max_spend_usd": ceiling,
                "eval_plan": "candidate vs champion on the frozen golden split; paired bootstrap gate, "
                f"margin {settings.evaluation.margin}",
                "rollback_plan": "aliases: previous champion stays registered; `learning-pilot rollback`",
            },
            cost_ceiling_usd=ceiling,
            expiry_minutes=settings.policy.approval_expiry_minutes,
        )
    notify.notify_approval_requested(ctx, approval.id)
    line = (
        f"approval {approval.id} requested (the run may spend up to ${ceiling:.4f}): "
        f"`learning-pilot approve {approval.id}` or `reject {approval.id}`"
    )
    return {"approval_id": approval.id, "reapprove": "", "log": log_line(state, line)}


def await_approval(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    interrupt({"approval_id": state["approval_id"], "kind": "training", "decision_id": state["decision_id"]})
    with ctx.store.session() as session:
        approval = session.get(Approval, state["approval_id"])
    assert approval is not None
    notify.notify_outcome(ctx, approval.id)
    if approval.status != ApprovalStatus.APPROVED:
        why = f"approval {approval.id} {approval.status}" + (
            f" by {approval.decided_by}" if approval.decided_by else ""
        )
        return {"action": DecisionAction.WAIT.value, "outcome": why, "log": log_line(state, why)}
    return {"log": log_line(state, f"approval {approval.id} approved by {approval.decided_by}")}


def train(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    """Re-price (prices move between the approval and the launch), rule again, and create the run: its row and
    reservation. A price that now needs approval, or more than the approved ceiling, goes back to a human."""
    decision = get_decision(ctx, state["decision_id"])
    existing = run_for_decision(ctx, decision.id)
    if existing is not None:
        return {"run_id": existing.id, "log": log_line(state, f"train: run {existing.id} exists ({existing.status})")}
    snap, training = price_run(ctx, state["snapshot_id"])
    if training is None:
        why = "no offer available at launch time"
        return {"outcome": why, "log": log_line(state, f"train: {why}")}
    # An approval never bypasses the kill switch or a cap: every rule rules again at launch time.
    ruling = rule_on(ctx, training, state)
    if ruling.verdict in (Verdict.DENY, Verdict.WAIT):
        return {"outcome": f"not launched: {ruling.reason}", "log": log_line(state, f"train: {ruling.reason}")}
    most = max_spend(ctx, training)
    approval_id = state.get("approval_id") or None
    reapprove = None
    if approval_id:
        with ctx.store.session() as session:
            approval = session.get(Approval, approval_id)
        ceiling = approval.cost_ceiling_usd if approval is not None else 0.0
        if most > ceiling + EPSILON:
            reapprove = f"the price rose: the run may now spend ${most:.4f}, above the ${ceiling:.4f} approved"
    elif ruling.verdict is Verdict.NEEDS_APPROVAL:
        reapprove = f"the price rose past the approval threshold: {ruling.reason}"
    if reapprove is not None:
        figures = {**decision.figures, "plan": plan_figures(ctx, training), "reapproved": reapprove}
        update_decision(ctx, decision.id, figures=figures)
        return {"reapprove": reapprove, "approval_id": "", "log": log_line(state, f"train: {reapprove}; asking again")}
    try:
        run = create_run(ctx, decision_id=decision.id, approval_id=approval_id, snapshot=snap, plan=training)
    except PilotError as exc:
        return {"outcome": f"not launched: {exc}", "log": log_line(state, f"train: not launched: {exc}")}
    reserved = float(run.config.get("reserved_usd", run.estimated_cost_usd))
    line = f"train: run {run.id} created, ${reserved:.4f} reserved; a worker rents and watches it"
    return {"run_id": run.id, "log": log_line(state, line)}


def _find_run(ctx: PilotContext, run_id: str) -> TrainingRun:
    with ctx.store.session() as session:
        run = session.get(TrainingRun, run_id, populate_existing=True)
    assert run is not None
    return run


def await_run(ctx: PilotContext, state: CycleState) -> dict[str, Any]:
    """Wait (``interrupt``) until the run is terminal; then register its candidate or say why it ended."""
    run = _find_run(ctx, state["run_id"])
    if not RunStatus(run.status).is_terminal:
        interrupt({"run_id": run.id, "kind": "run", "decision_id": state["decision_id"]})
        run = _find_run(ctx, state["run_id"])
        if not RunStatus(run.status).is_terminal:
            return {"log": log_line(state, f"run {run.id} still {run.status}")}
    if run.status != RunStatus.SUCCEEDED:
        why = f"run {run.id} {run.status}: {run.status_message or run.termination_reason}"
        return {"outcome": why, "log": log_line(state, f"train: {why}")}
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
    return {"version_id": version.id, "log": log_line(state, line)}
