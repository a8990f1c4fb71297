"""Guardrails: ordered rules over a proposal, each answering allow / deny / needs_approval / wait with a reason.

These are code, not prompts: an LLM may explain or veto, never get past them. The first rule that does not
allow decides; ``needs_approval`` rules come last so that a proposal which breaks a cap is denied outright rather
than put in front of a human. Every ruling's reason reaches the decision row, the event log and the CLI.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pilot.settings import Settings
from pilot.spend.ledger import SpendSummary, check_caps


class Verdict(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    NEEDS_APPROVAL = "needs_approval"
    WAIT = "wait"


@dataclass(frozen=True)
class Ruling:
    verdict: Verdict
    rule: str
    reason: str


@dataclass(frozen=True)
class Facts:
    """What the rules look at, gathered from the store at the start of a decision."""

    now: datetime
    paused: bool
    runs_in_flight: int
    pending_approvals: int
    last_run_finished_at: datetime | None
    new_examples: int
    spend: SpendSummary
    per_domain_new: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingProposal:
    estimated_cost_usd: float
    dph: float
    expected_hours: float
    max_spend_usd: float | None = None  # the reservation: the most the run may spend (defaults to the estimate)

    @property
    def ceiling_usd(self) -> float:
        return self.estimated_cost_usd if self.max_spend_usd is None else max(self.max_spend_usd, 0.0)


Rule = Callable[[TrainingProposal, Facts, Settings], Ruling | None]


def paused(p: TrainingProposal, f: Facts, s: Settings) -> Ruling | None:
    if f.paused:
        return Ruling(Verdict.DENY, "paused", "the pilot is paused (kill switch); `learning-pilot resume` to continue")
    return None


def one_run_at_a_time(p: TrainingProposal, f: Facts, s: Settings) -> Ruling | None:
    if f.runs_in_flight:
        return Ruling(Verdict.WAIT, "one_run_at_a_time", f"{f.runs_in_flight} training run(s) already in flight")
    return None


def approval_pending(p: TrainingProposal, f: Facts, s: Settings) -> Ruling | None:
    if f.pending_approvals:
        return Ruling(Verdict.WAIT, "approval_pending", f"{f.pending_approvals} approval(s) still waiting for a human")
    return None


def cooldown(p: TrainingProposal, f: Facts, s: Settings) -> Ruling | None:
    if f.last_run_finished_at is None:
        return None
    ready = f.last_run_finished_at + timedelta(minutes=s.policy.cooldown_minutes)
    if f.now < ready:
        minutes = (ready - f.now).total_seconds() / 60
        return Ruling(Verdict.WAIT, "cooldown", f"cooldown: the last run ended recently, {minutes:.0f} min to go")
    return None


def minimum_new_data(p: TrainingProposal, f: Facts, s: Settings) -> Ruling | None:
    needed = s.policy.min_new_examples
    if f.new_examples < needed:
        return Ruling(
            Verdict.WAIT,
            "minimum_new_data",
            f"only {f.new_examples} new curated examples since the last training; {needed} needed",
        )
    return None


def max_dph(p: TrainingProposal, f: Facts, s: Settings) -> Ruling | None:
    if p.dph > s.budget.max_dph:
        return Ruling(Verdict.DENY, "max_dph", f"${p.dph:.2f}/h is above the cap ${s.budget.max_dph:.2f}/h")
    return None


def budget(p: TrainingProposal, f: Facts, s: Settings) -> Ruling | None:
    problem = check_caps(f.spend, p.ceiling_usd, s.budget)
    return Ruling(Verdict.DENY, "budget", problem) if problem else None


def approval_threshold(p: TrainingProposal, f: Facts, s: Settings) -> Ruling | None:
    threshold = s.policy.approval_required_above_usd
    if threshold == 0 or p.ceiling_usd > threshold:
        why = "every training run" if threshold == 0 else f"training that may spend more than ${threshold:.2f}"
        return Ruling(
            Verdict.NEEDS_APPROVAL,
            "approval_threshold",
            f"a human approves {why} (estimated ${p.estimated_cost_usd:.2f}, at most ${p.ceiling_usd:.2f})",
        )
    return None


TRAINING_RULES: tuple[Rule, ...] = (
    paused,
    one_run_at_a_time,
    approval_pending,
    cooldown,
    minimum_new_data,
    max_dph,
    budget,
    approval_threshold,
)


def rule_training(proposal: TrainingProposal, facts: Facts, settings: Settings) -> Ruling:
    for rule in TRAINING_RULES:
        ruling = rule(proposal, facts, settings)
        if ruling is not None:
            return ruling
    return Ruling(Verdict.ALLOW, "all_rules", "every guardrail allows this run")
