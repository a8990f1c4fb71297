"""The optional LLM judge over the golden answers (``evaluation.judge``, subagents/judge.py): advice recorded beside
the deterministic scores, never read by the gate; every call's cost on the ledger and its tokens on an
``llm_call`` event, so the daily LLM budget counts them."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pilot.context import PilotContext
from pilot.spend.ledger import LLM_EVENT, record_spend
from pilot.store.writers import record_event

if TYPE_CHECKING:
    from subagents.judge import Completer

logger = logging.getLogger(__name__)


# Each side's code answer gets at most this; a golden set of n code items costs at most 2 * n * wall_seconds.

JUDGE_EVENT = LLM_EVENT  # counted toward the daily LLM token budget (pilot/spend/ledger.py)


def make_judge_client(ctx: PilotContext) -> Completer | None:
    """The judge's model from ``evaluation.judge`` (model, k, temperature) and ``llm`` (endpoint, key, timeout);
    None when neither names a model."""
    judge, llm = ctx.settings.evaluation.judge, ctx.settings.llm
    model = judge.model or llm.model
    if not model:
        return None
    from tools.llm import LlmClient

    return LlmClient(
        model=model,
        api_base=llm.api_base,
        api_key=llm.api_key.get_secret_value() if llm.api_key else None,
        timeout_s=llm.timeout_s,
        max_retries=llm.max_retries,
        max_tokens=judge.max_tokens,
        temperature=judge.temperature,
    )


def _record_judge_usage(ctx: PilotContext, version_id: str, item_id: str, calls: Sequence[Any], model: str) -> None:
    """Each call to the ledger (its cost, its tokens in the note); the item's tokens to one ``llm_call`` event."""
    tokens = sum(c.tokens for c in calls)
    cost = sum(c.cost_usd for c in calls)
    with ctx.store.session(write=True) as session:
        for call in calls:
            if call.tokens or call.cost_usd:
                record_spend(
                    session,
                    amount_usd=call.cost_usd,
                    category="llm",
                    note=f"judge {call.model or model} for {version_id}/{item_id}: {call.tokens} tokens"[:500],
                )
        record_event(
            session,
            entity_type=JUDGE_EVENT,
            entity_id=f"judge-{version_id}"[:80],
            actor="system",
            reason=f"judge: {len(calls)} samples on golden item {item_id}"[:500],
            data={
                "purpose": "judge",
                "model": model,
                "item": item_id,
                "calls": len(calls),
                "prompt_tokens": sum(c.prompt_tokens for c in calls),
                "completion_tokens": sum(c.completion_tokens for c in calls),
                "tokens": tokens,
                "cost_usd": round(cost, 6),
                "failed_calls": sum(1 for c in calls if c.vote is None),
            },
        )


def judge_items(
    ctx: PilotContext,
    version_id: str,
    items: Sequence[Mapping[str, Any]],
    candidate: Mapping[str, str],
    champion: Mapping[str, str],
    client: Completer,
    *,
    model: str,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Judge both sides' answer to every item, k samples each, checking the daily LLM budget before each item.
    Returns per-item judge figures (``id -> {candidate, champion, candidate_agreement, champion_agreement}``) and
    the judge summary. Calls are accounted item by item, also when something breaks midway."""
    from pilot.spend.ledger import llm_usage_today
    from subagents.judge import RUBRIC_SHA256, JudgeCall, judge_answer

    k = ctx.settings.evaluation.judge.k
    llm = ctx.settings.llm
    per_item: dict[str, dict[str, float]] = {}
    all_calls: list[JudgeCall] = []
    stopped: str | None = None
    for item in items:
        with ctx.store.session() as session:
            usd_today, tokens_today = llm_usage_today(session)
        if usd_today >= llm.daily_budget_usd or tokens_today >= llm.daily_token_budget:
            stopped = (
                f"daily LLM budget exhausted after {len(per_item)} of {len(items)} items (${usd_today:.4f} of "
                f"${llm.daily_budget_usd:.2f}, {tokens_today} of {llm.daily_token_budget} tokens)"
            )
            logger.warning("Judge of %s stopped: %s", version_id, stopped)
            break
        calls: list[JudgeCall] = []
        try:
            figures: dict[str, float] = {}
            for side, answers in (("candidate", candidate), ("champion", champion)):
                verdict = judge_answer(
                    client,
                    question=str(item["prompt"]),
                    reference=str(item["ref"]),
                    answer=answers.get(item["id"], ""),
                    k=k,
                    on_call=calls.append,
                )
                figures[side] = verdict.score
                figures[f"{side}_agreement"] = verdict.agreement
            per_item[str(item["id"])] = figures
        finally:
            all_calls.extend(calls)
            if calls:
                _record_judge_usage(ctx, version_id, str(item["id"]), calls, model)
    n = len(per_item)
    cand = [f["candidate"] for f in per_item.values()]
    champ = [f["champion"] for f in per_item.values()]
    agreements = [f[a] for f in per_item.values() for a in ("candidate_agreement", "champion_agreement")]
    unparsed = sum(1 for c in all_calls if c.vote is None and (c.error or "").startswith("unparsed"))
    summary: dict[str, Any] = {
        "model": model,
        "k": k,
        "rubric_sha256": RUBRIC_SHA256,
        "items_judged": n,
        "items_total": len(items),
        "candidate_score": sum(cand) / n if n else None,
        "champion_score": sum(champ) / n if n else None,
        "diff": (sum(cand) - sum(champ)) / n if n else None,
        "mean_agreement": sum(agreements) / len(agreements) if agreements else None,
        "calls": len(all_calls),
        "unparsed": unparsed,
        "failed_calls": sum(1 for c in all_calls if c.vote is None) - unparsed,
        "tokens": sum(c.tokens for c in all_calls),
        "cost_usd": round(sum(c.cost_usd for c in all_calls), 6),
        "stopped": stopped,
        "used_by_gate": False,
    }
    return per_item, summary


def judge_answers(
    ctx: PilotContext,
    version_id: str,
    items: Sequence[Mapping[str, Any]],
    candidate: Mapping[str, str],
    champion: Mapping[str, str],
    client: Completer | None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any] | None]:
    """The judge when enabled; whatever goes wrong, the evaluation goes on without it and the record says why."""
    settings = ctx.settings.evaluation.judge
    if not settings.enabled:
        return {}, None
    model = settings.model or ctx.settings.llm.model or ("injected" if client is not None else "")
    try:
        client = client if client is not None else make_judge_client(ctx)
        if client is None:
            return {}, {"error": "evaluation.judge is enabled but no model is configured (judge.model or llm.model)"}
        return judge_items(ctx, version_id, items, candidate, champion, client, model=model)
    except Exception as exc:  # the judge is advice: a bug or an outage in it must not fail the evaluation
        logger.exception("LLM judge failed for %s; the deterministic scores stand alone", version_id)
        return {}, {"model": model, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
