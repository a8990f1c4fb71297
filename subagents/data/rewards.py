"""The reward of one execution: a number from what happened (outcome, tests, time, tokens, a human's rating).

The reinforcement layer ranks attempts by this number: preference pairs (a higher and a lower reward at one
task), desirable / undesirable examples, and the reward distribution in every snapshot manifest.

Invariants:
- A pure function of the record and the weights: no clock, no randomness, no I/O.
- The seed values are the documented defaults (``RewardWeights()``, and ``[rewards]`` in the settings):
  success +1.0, failure -1.0, +0.5 per test passed, -0.01 per second, -0.05 per 1,000 tokens, a performance
  bonus of +0.2 for a success with every test passing in at most ``fast_s`` seconds, a concision bonus of
  +0.1 for a success whose output is at most ``concise_chars`` characters, and +0.5 per rating step above 3
  (-0.5 per step below).
- A metric the record does not report contributes 0 (not a penalty): missing data is not evidence.
- ``RewardBreakdown.parts`` sums to ``total`` (up to rounding to 6 places), so a manifest or an explanation can
  show why an attempt scored what it did.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from subagents.data.schema import ExecutionRecord

__all__ = ["RewardBreakdown", "RewardWeights", "reward", "reward_distribution"]


@dataclass(frozen=True, slots=True)
class RewardWeights:
    """Weights of the reward's terms; the defaults are the seed design's values."""

    success: float = 1.0
    failure: float = -1.0
    per_test_passed: float = 0.5
    per_second: float = -0.01
    per_1k_tokens: float = -0.05
    performance_bonus: float = 0.2
    fast_s: float = 5.0
    concision_bonus: float = 0.1
    concise_chars: int = 400
    per_rating_step: float = 0.5

    def __post_init__(self) -> None:
        for name in ("success", "failure", "per_test_passed", "per_second", "per_1k_tokens", "per_rating_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                raise ValueError(f"rewards.{name} must be a number, got {value!r}")
        if self.success <= self.failure:
            raise ValueError("rewards.success must be above rewards.failure")
        if self.fast_s < 0 or self.concise_chars < 0:
            raise ValueError("rewards.fast_s and rewards.concise_chars must be >= 0")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RewardBreakdown:
    total: float
    parts: dict[str, float]


def reward(record: ExecutionRecord, weights: RewardWeights | None = None) -> RewardBreakdown:
    """The reward of ``record`` under ``weights`` (default: the seed values), with its terms."""
    w = weights or RewardWeights()
    m = record.metrics
    parts: dict[str, float] = {"outcome": w.success if record.success else w.failure}
    if m.tests_passed is not None:
        parts["tests"] = w.per_test_passed * m.tests_passed
    if m.duration_s is not None:
        parts["duration"] = w.per_second * m.duration_s
    if m.tokens is not None:
        parts["tokens"] = w.per_1k_tokens * m.tokens / 1000.0
    all_passed = m.tests_total is None or m.tests_passed == m.tests_total
    if record.success and all_passed and m.duration_s is not None and m.duration_s <= w.fast_s:
        parts["performance"] = w.performance_bonus
    if record.success and record.output.strip() and len(record.output) <= w.concise_chars:
        parts["concision"] = w.concision_bonus
    rating = record.feedback.rating if record.feedback is not None else None
    if rating is not None:
        parts["rating"] = w.per_rating_step * (rating - 3)
    parts = {k: round(v, 6) for k, v in parts.items()}
    return RewardBreakdown(round(sum(parts.values()), 6), parts)


def reward_distribution(items: Iterable[tuple[str, float, bool]]) -> dict[str, dict[str, float]]:
    """Per domain, from (domain, reward, desirable) triples: n, mean, min, median, max and how many are
    desirable (successes) vs not; the manifest's ``rewards``."""
    by_domain: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for domain, value, good in items:
        by_domain[domain].append((value, good))
    out: dict[str, dict[str, float]] = {}
    for domain in sorted(by_domain):
        values = [v for v, _ in by_domain[domain]]
        out[domain] = {
            "n": len(values),
            "desirable": sum(1 for _, good in by_domain[domain] if good),
            "undesirable": sum(1 for _, good in by_domain[domain] if not good),
            "mean": round(statistics.fmean(values), 4),
            "min": round(min(values), 4),
            "median": round(statistics.median(values), 4),
            "max": round(max(values), 4),
        }
    return out
