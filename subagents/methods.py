"""How a run's training method reads to people: the method and its data in a few words, from a plan's figures.

Pure and light (no imports beyond the standard library): ``learning-pilot status`` imports it and must answer
fast. ``subagents/training.py: choose_method`` writes the figures read here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["describe_method", "method_data"]


def method_data(method: str, figures: dict[str, Any]) -> str:
    """What ``method`` trains on, in a few words, from ``MethodChoice.figures`` (a plan's ``method_figures``)."""
    f = figures
    if method == "dpo":
        return f"{f.get('pairs', 0)} pairs {f.get('pair_sources') or {}}"
    if method == "kto":
        return f"{f.get('undesirable', 0)} failed attempts, {f.get('desirable', 0)} successes"
    if method == "grpo":
        share = float(f.get("rl_failure_share", 0.0))
        return (
            f"{f.get('prompts_with_tests', 0)} prompts with tests, {share:.0%} of their {f.get('rl_attempts', 0)} "
            "attempts failed"
        )
    return f"{f.get('train_examples', '?')} successful examples"


def describe_method(plan: dict[str, Any]) -> dict[str, Any]:
    """The method of a plan's figures for status, explain, Slack and the dashboard: method, its data in a few
    words (GRPO's with what its policy starts from, ``init``), the chooser's reason line, the cost factor it was
    priced at and the figures. A plan written before the method existed reads as supervised."""
    method = str(plan.get("method") or "sft")
    figures = dict(plan.get("method_figures") or {})
    if not figures and plan.get("train_examples") is not None:
        figures = {"train_examples": plan["train_examples"]}
    data = method_data(method, figures)
    init = plan.get("init") or {}
    if method == "grpo" and init.get("summary"):  # what the policy starts from: the champion's adapter or the base
        data += f"; init: {init['summary']}"
    return {
        "method": method,
        "data": data,
        "init": init.get("summary") if method == "grpo" else None,
        "reason": str(plan.get("method_reason") or ""),
        "cost_factor": float(plan.get("cost_factor", 1.0)),
        "figures": figures,
    }
