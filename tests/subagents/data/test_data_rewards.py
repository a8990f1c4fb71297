"""The reward over an execution's outcome: the seed values, every term, and bad weights refused."""

from __future__ import annotations

import pytest

from subagents.data.rewards import RewardWeights, reward, reward_distribution
from tests.subagents.data.data_factories import record


def test_seed_weights_are_the_documented_defaults() -> None:
    w = RewardWeights()
    assert (w.success, w.failure, w.per_test_passed, w.per_second) == (1.0, -1.0, 0.5, -0.01)
    assert w.per_1k_tokens < 0 and w.performance_bonus > 0 and w.concision_bonus > 0 and w.per_rating_step == 0.5


def test_success_with_all_tests_fast_and_concise() -> None:
    r = record(metrics={"tests_passed": 3, "tests_total": 3, "duration_s": 2.0, "tokens": 1000})
    out = reward(r)
    assert out.parts == {
        "outcome": 1.0,
        "tests": 1.5,
        "duration": -0.02,
        "tokens": -0.05,
        "performance": 0.2,
        "concision": 0.1,
    }
    assert out.total == pytest.approx(sum(out.parts.values()))


def test_failure_is_penalised_and_gets_no_bonus() -> None:
    r = record(success=False, output="userIdMap", metrics={"tests_passed": 1, "tests_total": 3, "duration_s": 30.0})
    out = reward(r)
    assert out.parts == {"outcome": -1.0, "tests": 0.5, "duration": -0.3}
    assert out.total == pytest.approx(-0.8)


def test_missing_metrics_contribute_nothing_and_ratings_move_the_reward() -> None:
    bare = record(metrics={}, output="x" * 1000)
    assert reward(bare).parts == {"outcome": 1.0}
    happy = record(metrics={}, output="x" * 1000, feedback={"rating": 5})
    sad = record(metrics={}, output="x" * 1000, feedback={"rating": 1})
    assert reward(happy).total == 2.0 and reward(sad).total == 0.0


def test_custom_weights() -> None:
    w = RewardWeights(per_test_passed=0.0, per_second=0.0, per_1k_tokens=0.0, performance_bonus=0, concision_bonus=0)
    assert reward(record(), w).total == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"success": -1.0, "failure": 1.0}, "success must be above"),
        ({"per_second": float("nan")}, "per_second must be a number"),
        ({"fast_s": -1.0}, "must be >= 0"),
        ({"per_test_passed": True}, "per_test_passed must be a number"),
    ],
)
def test_bad_weights_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RewardWeights(**overrides)  # type: ignore[arg-type]


def test_distribution_per_domain() -> None:
    dist = reward_distribution([("a", 1.0, True), ("a", -1.0, False), ("a", 2.0, True), ("b", 0.5, True)])
    assert dist["a"] == {
        "n": 3,
        "desirable": 2,
        "undesirable": 1,
        "mean": 0.6667,
        "min": -1.0,
        "median": 1.0,
        "max": 2.0,
    }
    assert dist["b"]["n"] == 1
