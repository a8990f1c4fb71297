"""The supervisor agent inside the control plane: an LLM's advice on the decide step, never past the guardrails.

Invariants:
- No model configured (``settings.llm.model`` empty): the policy's action and reason come back unchanged, and
  litellm is never imported.
- The agent can make a decision more conservative, never less: ``finetune`` comes out only when the deterministic
  policy said ``finetune`` AND the same screen the decide node uses (``rule_training`` on a zero-cost proposal)
  still allows it. An agent ``finetune`` against a policy ``wait`` is a ``wait`` with both reasons recorded; an
  agent ``wait`` vetoes a policy ``finetune``. promote/reject/rollback answers become proposals for the gate, the
  monitor or a human; this step never performs them. The priced plan, the caps and the approval are ruled on
  later by the plan and train nodes whatever the agent said.
- The per-day LLM budget (dollars and tokens) is checked before any call; every call's tokens and cost are written
  to the ledger (``record_spend``, category ``llm``) and to an ``llm_call`` event, fallbacks included.
- Any failure of the agent (model, budget, validation, even a bug building its brief) ends in the policy's
  decision with ``fallback`` saying why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from pilot.context import PilotContext
from pilot.settings import Settings
from pilot.spend.guardrails import Facts, TrainingProposal, Verdict, rule_training
from pilot.spend.ledger import LLM_EVENT, llm_usage_today, record_spend
from pilot.store.models import Decision, ExecutionRecordRow, ModelVersion
from pilot.store.status import DecisionAction
from pilot.store.writers import record_event
from tools.agent_tools import CostEstimate, DataSummary, EvaluationSummary, KnowledgeCoverage, Proposal

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from subagents.supervisor_agent import AgentDecision

logger = logging.getLogger(__name__)

AGENT_MAX_STEPS = 5
SAMPLE_RECORDS = 5


@dataclass(frozen=True)
class AgentOutcome:
    """What the decide node records: ``action`` (finetune | wait) and ``rationale`` go to the Decision row."""

    action: str
    rationale: str
    confidence: float | None
    fallback: str | None
    tokens: int
    cost_usd: float
    agent_action: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    proposals: tuple[Proposal, ...] = ()


def screen(facts: Facts, settings: Settings) -> Any:
    """The decide node's cost-free screen: every rule on a zero-cost proposal."""
    return rule_training(TrainingProposal(0.0, 0.0, 0.0), facts, settings)


def combine(
    policy_action: str,
    policy_reason: str,
    decision: AgentDecision | None,
    fallback: str | None,
    facts: Facts,
    settings: Settings,
) -> tuple[str, str]:
    """The final action and rationale. Pure: the whole "agent can only be more conservative" rule is here."""
    ruling = screen(facts, settings)
    rules_allow = ruling.verdict in (Verdict.ALLOW, Verdict.NEEDS_APPROVAL)
    policy_finetune = policy_action == DecisionAction.FINETUNE and rules_allow
    floor = DecisionAction.FINETUNE if policy_finetune else DecisionAction.WAIT
    floor_reason = policy_reason if policy_finetune or policy_action != DecisionAction.FINETUNE else ruling.reason
    if decision is None:
        return floor, f"deterministic policy (agent fallback: {fallback}): {floor_reason}"
    said = f"agent ({decision.action}, confidence {decision.confidence:.2f}): {decision.rationale}"
    match decision.action:
        case "finetune" if policy_finetune:
            return DecisionAction.FINETUNE, f"{said} | policy agrees: {policy_reason}"
        case "finetune":
            blocker = ruling.reason if not rules_allow else policy_reason
            return DecisionAction.WAIT, f"guardrails say wait ({blocker}); the agent's finetune was overruled | {said}"
        case "wait" if policy_finetune:
            return DecisionAction.WAIT, f"agent vetoed the fine-tune the policy allowed ({policy_reason}) | {said}"
        case "wait":
            return DecisionAction.WAIT, f"{said} | policy: {floor_reason}"
        case _:
            what = f"agent suggests {decision.action}: recorded as a proposal for the gate, the monitor or a human"
            return DecisionAction.WAIT, f"{what}; no fine-tune this cycle (policy: {floor_reason}) | {said}"


def facts_for_prompt(facts: Facts, settings: Settings) -> dict[str, Any]:
    """The figures the agent sees and may cite: aggregates only, so the size does not grow with the store."""
    caps = settings.budget
    cooldown_left = 0.0
    if facts.last_run_finished_at is not None:
        ready = facts.last_run_finished_at + timedelta(minutes=settings.policy.cooldown_minutes)
        cooldown_left = max(0.0, (ready - facts.now).total_seconds() / 60)
    top = dict(sorted(facts.per_domain_new.items(), key=lambda kv: (-kv[1], kv[0]))[:12])
    ruling = screen(facts, settings)
    return {
        "paused": facts.paused,
        "runs_in_flight": facts.runs_in_flight,
        "pending_approvals": facts.pending_approvals,
        "new_examples": facts.new_examples,
        "min_new_examples": settings.policy.min_new_examples,
        "per_domain_new_top": top,
        "domains_with_new_data": len(facts.per_domain_new),
        "cooldown_minutes_left": round(cooldown_left, 1),
        "spent_today_usd": round(facts.spend.today_usd, 4),
        "spent_month_usd": round(facts.spend.month_usd, 4),
        "reserved_usd": round(facts.spend.reserved_usd, 4),
        "per_run_cap_usd": caps.per_run_usd,
        "remaining_today_usd": round(max(0.0, caps.per_day_usd - facts.spend.today_usd), 4),
        "remaining_month_usd": round(max(0.0, caps.per_month_usd - facts.spend.month_usd), 4),
        "max_dph": caps.max_dph,
        "approval_required_above_usd": settings.policy.approval_required_above_usd,
        "screen_verdict": str(ruling.verdict),
        "screen_rule": ruling.rule,
    }


def recent_decisions(ctx: PilotContext, limit: int = 6) -> list[dict[str, Any]]:
    """The last ``limit`` decisions and their outcomes, oldest first: the agent's memory across cycles."""
    with ctx.store.session() as session:
        rows = session.exec(select(Decision).order_by(col(Decision.created_at).desc()).limit(limit)).all()
    memory = []
    for row in reversed(rows):
        agent = (row.figures or {}).get("agent") or {}
        memory.append(
            {
                "at": row.created_at.isoformat(timespec="minutes") if row.created_at else None,
                "action": row.action,
                "reason": row.reason,
                "outcome": row.outcome,
                "agent_action": agent.get("agent_action"),
                "fallback": agent.get("fallback"),
            }
        )
    return memory


def record_samples(ctx: PilotContext, n: int = SAMPLE_RECORDS) -> list[str]:
    """Text of the newest ``n`` records (a primary-key range: constant cost however large the store)."""
    with ctx.store.session() as session:
        payloads = session.exec(
            select(ExecutionRecordRow.payload).order_by(col(ExecutionRecordRow.id).desc()).limit(n)
        ).all()
    samples = []
    for payload in payloads:
        try:
            record = json.loads(payload)
        except json.JSONDecodeError:
            continue
        samples.append(f"[{record.get('domain', '?')}] task: {str(record.get('task', ''))[:400]}")
    return samples


def _cost_estimate(ctx: PilotContext, facts: Facts) -> CostEstimate:
    from pilot.runs.lifecycle import training_params
    from subagents.training import expected_hours, requirements_for

    caps = ctx.settings.budget
    remaining: dict[str, Any] = {
        "per_run_cap_usd": caps.per_run_usd,
        "remaining_today_usd": round(max(0.0, caps.per_day_usd - facts.spend.today_usd), 4),
        "remaining_month_usd": round(max(0.0, caps.per_month_usd - facts.spend.month_usd), 4),
    }
    params = training_params(ctx)
    offers = ctx.gpu.search_offers(requirements_for(params, max_dph=caps.max_dph), limit=16)
    if not offers:
        return CostEstimate(available=False, note=f"no offer on {ctx.gpu.name} within ${caps.max_dph}/h", **remaining)
    hours = expected_hours(params, facts.new_examples * params.seq_len // 2, remote=ctx.gpu.name != "local")
    best = min(offers, key=lambda o: o.dph_total)
    return CostEstimate(
        available=True,
        estimated_cost_usd=round(best.dph_total * hours, 4),
        dph=best.dph_total,
        expected_hours=round(hours, 4),
        gpu=best.gpu_name,
        note="rough, before the snapshot; the plan node prices the real run and the rules rule on that price",
        **remaining,
    )


def _evaluation_summary(ctx: PilotContext) -> EvaluationSummary:
    from pilot.serving import registry
    from pilot.supervisor.facts import live_stats
    from subagents import monitoring

    with ctx.store.session() as session:
        versions = session.exec(select(ModelVersion).order_by(col(ModelVersion.created_at).desc()).limit(5)).all()
        champion = registry.alias_target(session, registry.CHAMPION)
        previous = registry.alias_target(session, registry.PREVIOUS)
    judged = next((v for v in versions if v.eval_report), None)
    live_regressed, live_reason = None, "no champion/previous pair to compare yet"
    if champion and previous:
        m = ctx.settings.monitoring
        verdict = monitoring.compare_live(
            live_stats(ctx, champion),
            live_stats(ctx, previous),
            min_records=m.min_records,
            alpha=m.alpha,
            min_drop=m.min_drop,
        )
        live_regressed, live_reason = verdict.regressed, verdict.reason
    if judged is None:
        return EvaluationSummary(champion=champion, live_regressed=live_regressed, live_reason=live_reason)
    report = judged.eval_report
    return EvaluationSummary(
        version_id=judged.id,
        status=judged.status,
        verdict=report.get("verdict"),
        reason=str(report.get("reason", ""))[:300],
        diff=report.get("diff"),
        ci_low=report.get("ci_low"),
        ci_high=report.get("ci_high"),
        n_items=report.get("n_items"),
        champion=champion,
        live_regressed=live_regressed,
        live_reason=live_reason,
    )


def make_chat_model(settings: Settings) -> BaseChatModel:
    """The configured model as a LangChain chat model over litellm (imports litellm lazily, on the first call)."""
    from tools.llm import LiteLlmChatModel, LlmClient

    llm = settings.llm
    assert llm.model, "make_chat_model needs settings.llm.model"
    client = LlmClient(
        model=llm.model,
        api_base=llm.api_base,
        api_key=llm.api_key.get_secret_value() if llm.api_key else None,
        timeout_s=llm.timeout_s,
        max_retries=llm.max_retries,
        max_tokens=llm.max_tokens_per_decision,
        temperature=llm.temperature,
    )
    return LiteLlmChatModel(client=client)


def decide_with_agent(
    ctx: PilotContext,
    facts: Facts,
    policy_action: str,
    policy_reason: str,
    recent: list[dict[str, Any]],
    *,
    model: BaseChatModel | None = None,
    knowledge: Callable[[], KnowledgeCoverage] | None = None,
    decision_id: str | None = None,
) -> AgentOutcome:
    """Ask the agent, then hold its answer to the guardrails. ``model`` None: built from the settings."""
    settings = ctx.settings
    if not settings.llm.model and model is None:
        return AgentOutcome(policy_action, policy_reason, None, None, 0, 0.0)
    if policy_action not in (DecisionAction.FINETUNE, DecisionAction.WAIT):
        return AgentOutcome(policy_action, policy_reason, None, "the agent advises only on finetune|wait", 0, 0.0)
    from subagents.supervisor_agent import AgentRun

    run = AgentRun()
    try:
        run = _ask(ctx, facts, policy_action, policy_reason, recent, model=model, knowledge=knowledge)
    except Exception as exc:  # the agent is advice: whatever breaks, the policy decides and we say why
        logger.exception("Supervisor agent failed for %s; the deterministic policy decides", decision_id or "decision")
        run.fallback = f"agent unavailable: {type(exc).__name__}: {str(exc)[:200]}"
    action, rationale = combine(policy_action, policy_reason, run.decision, run.fallback, facts, settings)
    agent_action = run.decision.action if run.decision else None
    figures = {
        "agent_action": agent_action,
        "confidence": run.decision.confidence if run.decision else None,
        "figures_cited": dict(run.decision.figures_cited) if run.decision else {},
        "fallback": run.fallback,
        "final_action": str(action),
        "policy_action": str(policy_action),
        "tokens": run.tokens,
        "cost_usd": round(run.cost_usd, 6),
        "calls": run.calls,
        "proposals": [asdict(p) for p in run.proposals],
    }
    _record_usage(ctx, run.prompt_tokens, run.completion_tokens, run.cost_usd, figures, decision_id)
    logger.info(
        "Supervisor agent for %s: agent %s, final %s, %d tokens, $%.6f%s",
        decision_id or "decision",
        agent_action or "-",
        action,
        run.tokens,
        run.cost_usd,
        f", fallback: {run.fallback}" if run.fallback else "",
    )
    return AgentOutcome(
        action=str(action),
        rationale=rationale[:4000],
        confidence=run.decision.confidence if run.decision else None,
        fallback=run.fallback,
        tokens=run.tokens,
        cost_usd=run.cost_usd,
        agent_action=agent_action,
        figures=figures,
        proposals=tuple(run.proposals),
    )


def _ask(
    ctx: PilotContext,
    facts: Facts,
    policy_action: str,
    policy_reason: str,
    recent: list[dict[str, Any]],
    *,
    model: BaseChatModel | None,
    knowledge: Callable[[], KnowledgeCoverage] | None,
) -> Any:
    from subagents.supervisor_agent import AgentBrief, AgentBudget, AgentRun, run_agent
    from tools.agent_tools import ProposalBox, ToolDeps, make_agent_tools

    llm = ctx.settings.llm
    with ctx.store.session() as session:
        usd_today, tokens_today = llm_usage_today(session)
    usd_left, tokens_left = llm.daily_budget_usd - usd_today, llm.daily_token_budget - tokens_today
    if usd_left <= 0 or tokens_left <= 0:
        return AgentRun(
            fallback=f"daily LLM budget exhausted (${usd_today:.4f} of ${llm.daily_budget_usd:.2f}, "
            f"{tokens_today} of {llm.daily_token_budget} tokens)"
        )
    samples = record_samples(ctx)
    prompt_facts = facts_for_prompt(facts, ctx.settings)
    box = ProposalBox()
    deps = ToolDeps(
        data=lambda: DataSummary(
            new_records=facts.new_examples,
            new_examples=facts.new_examples,
            min_new_examples=ctx.settings.policy.min_new_examples,
            per_domain=dict(facts.per_domain_new),
            samples=tuple(samples),
        ),
        cost=lambda: _cost_estimate(ctx, facts),
        evaluation=lambda: _evaluation_summary(ctx),
        knowledge=knowledge,
    )
    brief = AgentBrief(
        facts=prompt_facts,
        policy_action=str(policy_action),
        policy_reason=policy_reason,
        memory=recent,
        samples=samples,
    )
    budget = AgentBudget(
        max_completion_tokens=llm.max_tokens_per_decision,
        max_total_tokens=tokens_left,
        max_cost_usd=usd_left,
        deadline_s=llm.timeout_s,
        max_steps=AGENT_MAX_STEPS,
    )
    chat = model if model is not None else make_chat_model(ctx.settings)
    return run_agent(chat, make_agent_tools(deps, box), brief, budget, proposals=box.items)


def _record_usage(
    ctx: PilotContext,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd: float,
    figures: Mapping[str, Any],
    decision_id: str | None,
) -> None:
    model = ctx.settings.llm.model or "injected-model"
    tokens = prompt_tokens + completion_tokens
    with ctx.store.session(write=True) as session:
        if tokens or cost_usd:
            record_spend(
                session, amount_usd=cost_usd, category="llm", note=f"supervisor agent {model}: {tokens} tokens"[:500]
            )
        record_event(
            session,
            entity_type=LLM_EVENT,
            entity_id=(decision_id or "supervisor")[:80],
            actor="supervisor",
            reason=f"fallback: {figures['fallback']}"
            if figures.get("fallback")
            else f"agent: {figures['agent_action']}",
            data={
                "model": model,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "tokens": tokens,
                "cost_usd": round(cost_usd, 6),
                "fallback": figures.get("fallback"),
                "agent_action": figures.get("agent_action"),
                "final_action": figures.get("final_action"),
            },
        )
