"""Guardrail rules, table-driven: the first rule that does not allow decides, with its reason."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pilot.settings import Settings, load_settings
from pilot.spend.guardrails import Facts, TrainingProposal, Verdict, rule_training
from pilot.spend.ledger import SpendSummary

NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "policy": {"min_new_examples": 100, "cooldown_minutes": 60, "approval_required_above_usd": 0},
        "budget": {"per_run_usd": 10, "per_day_usd": 20, "per_month_usd": 100, "max_dph": 2.0},
    }
    base.update(overrides)
    return load_settings(None, **base)


def facts(**overrides: Any) -> Facts:
    base = Facts(
        now=NOW,
        paused=False,
        runs_in_flight=0,
        pending_approvals=0,
        last_run_finished_at=None,
        new_examples=500,
        spend=SpendSummary(today_usd=0, month_usd=0, reserved_usd=0, actual_month_usd=0),
    )
    return replace(base, **overrides)


def proposal(cost: float = 1.0, dph: float = 0.5) -> TrainingProposal:
    return TrainingProposal(estimated_cost_usd=cost, dph=dph, expected_hours=2.0)


CASES = [
    ("paused beats everything", facts(paused=True, runs_in_flight=1), proposal(999, 99), Verdict.DENY, "paused"),
    ("a run in flight", facts(runs_in_flight=1), proposal(), Verdict.WAIT, "one_run_at_a_time"),
    ("an approval waiting", facts(pending_approvals=1), proposal(), Verdict.WAIT, "approval_pending"),
    (
        "cooldown",
        facts(last_run_finished_at=NOW - timedelta(minutes=10)),
        proposal(),
        Verdict.WAIT,
        "cooldown",
    ),
    ("too little new data", facts(new_examples=99), proposal(), Verdict.WAIT, "minimum_new_data"),
    ("$/h above cap", facts(), proposal(dph=2.5), Verdict.DENY, "max_dph"),
    ("per-run cap", facts(), proposal(cost=10.01), Verdict.DENY, "budget"),
    (
        "daily cap",
        facts(spend=SpendSummary(today_usd=15, month_usd=15, reserved_usd=0, actual_month_usd=15)),
        proposal(cost=6),
        Verdict.DENY,
        "budget",
    ),
    (
        "monthly cap",
        facts(spend=SpendSummary(today_usd=0, month_usd=99, reserved_usd=0, actual_month_usd=99)),
        proposal(cost=2),
        Verdict.DENY,
        "budget",
    ),
    ("everything fine: a human approves", facts(), proposal(), Verdict.NEEDS_APPROVAL, "approval_threshold"),
    (
        "cooldown over",
        facts(last_run_finished_at=NOW - timedelta(minutes=61)),
        proposal(),
        Verdict.NEEDS_APPROVAL,
        "approval_threshold",
    ),
]


@pytest.mark.parametrize(("name", "f", "p", "verdict", "rule"), CASES, ids=[c[0] for c in CASES])
def test_rules(name: str, f: Facts, p: TrainingProposal, verdict: Verdict, rule: str) -> None:
    ruling = rule_training(p, f, settings())
    assert (ruling.verdict, ruling.rule) == (verdict, rule)
    assert ruling.reason


def test_cheap_runs_below_the_threshold_need_no_approval() -> None:
    s = settings(policy={"min_new_examples": 100, "cooldown_minutes": 0, "approval_required_above_usd": 5})
    assert rule_training(proposal(cost=4), facts(), s).verdict is Verdict.ALLOW
    assert rule_training(proposal(cost=6), facts(), s).verdict is Verdict.NEEDS_APPROVAL
