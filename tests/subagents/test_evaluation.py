"""Scoring and the promotion gate: every verdict path, table-driven, with the figures in the reason."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from subagents.evaluation import (
    DomainResult,
    GateConfig,
    GateReport,
    PairedItem,
    compare,
    extract_code,
    normalise,
    score_code,
    score_exact,
    score_normalised,
    sign_test_p,
)
from tools.sandbox import SandboxLimits

# ------------------------------------------------------------------------------------------- factories


def domain_items(domain: str, *, n: int, wins: int = 0, losses: int = 0, both_right: int = 0) -> list[PairedItem]:
    """n paired 0/1 items: ``wins`` where only the candidate is right, ``losses`` where only the champion is,
    ``both_right`` ties at 1, the rest ties at 0."""
    assert wins + losses + both_right <= n
    out = []
    for i in range(n):
        if i < wins:
            cand, champ = 1.0, 0.0
        elif i < wins + losses:
            cand, champ = 0.0, 1.0
        elif i < wins + losses + both_right:
            cand, champ = 1.0, 1.0
        else:
            cand, champ = 0.0, 0.0
        out.append(PairedItem(id=f"{domain}-{i}", domain=domain, candidate=cand, champion=champ))
    return out


def items(*groups: list[PairedItem]) -> list[PairedItem]:
    return [item for group in groups for item in group]


CLEAR_WIN = items(
    domain_items("python-naming", n=100, wins=25, both_right=50),
    domain_items("js-naming", n=100, wins=20, both_right=60),
)

CASES = [
    # (id, items, candidate_loss, champion_loss, config overrides, verdict, phrase in reason)
    ("clear win promotes", CLEAR_WIN, 0.50, 0.60, {}, "promote", "clears the margin"),
    ("no losses given still promotes", CLEAR_WIN, None, None, {}, "promote", "clears the margin"),
    (
        "too few items rejects even a big win",
        domain_items("classes", n=10, wins=8),
        None,
        None,
        {},
        "reject",
        "Only 10 paired items, fewer than the 20 required",
    ),
    ("eval loss worse rejects", CLEAR_WIN, 0.61, 0.60, {}, "reject", "Eval loss rose from 0.6000 to 0.6100"),
    (
        "eval loss within tolerance promotes",
        CLEAR_WIN,
        0.65,
        0.60,
        {"max_eval_loss_increase": 0.10},
        "promote",
        "clears",
    ),
    ("nan candidate loss rejects", CLEAR_WIN, math.nan, 0.60, {}, "reject", "Candidate eval loss is nan"),
    (
        "one domain regressing rejects and is named",
        items(domain_items("python-naming", n=100, wins=60), domain_items("cli-flags", n=50, losses=10)),
        None,
        None,
        {},
        "reject",
        "Domain 'cli-flags' regressed by 0.200",
    ),
    (
        "a domain regressing exactly the allowance is tolerated",
        items(domain_items("python-naming", n=100, wins=60), domain_items("cli-flags", n=50, losses=5)),
        None,
        None,
        {},
        "promote",
        "clears",
    ),
    (
        "point diff below margin rejects",
        domain_items("constants", n=100, wins=3, both_right=50),
        None,
        None,
        {},
        "reject",
        "Difference +0.030 does not exceed the margin 0.050",
    ),
    (
        "point diff equal to margin rejects",
        domain_items("constants", n=100, wins=5, both_right=50),
        None,
        None,
        {},
        "reject",
        "does not exceed the margin",
    ),
    (
        "better but uncertain is inconclusive",
        domain_items("classes", n=20, wins=6, losses=4, both_right=5),
        None,
        None,
        {},
        "inconclusive",
        "a human decides",
    ),
    (
        "a higher margin turns a win inconclusive",
        CLEAR_WIN,
        None,
        None,
        {"margin": 0.20},
        "inconclusive",
        "does not clear the margin 0.200",
    ),
    ("empty set rejects", [], None, None, {}, "reject", "Only 0 paired items"),
]


@pytest.mark.parametrize(
    ("items_", "cand_loss", "champ_loss", "overrides", "verdict", "phrase"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_gate_verdicts(
    items_: list[PairedItem],
    cand_loss: float | None,
    champ_loss: float | None,
    overrides: dict[str, float],
    verdict: str,
    phrase: str,
) -> None:
    config = replace(GateConfig(bootstrap_samples=1000), **overrides)
    report = compare(items_, candidate_eval_loss=cand_loss, champion_eval_loss=champ_loss, config=config)
    assert report.verdict == verdict, report.reason
    assert phrase in report.reason
    assert f"n={len(items_)}" in report.reason
    assert report.n_items == len(items_)


def test_report_figures_for_a_clear_win() -> None:
    report = compare(CLEAR_WIN, candidate_eval_loss=0.5, champion_eval_loss=0.6, config=GateConfig())
    assert report.candidate_score == pytest.approx(0.775)
    assert report.champion_score == pytest.approx(0.55)
    assert report.diff == pytest.approx(0.225)
    assert report.ci_low < report.diff < report.ci_high
    assert report.ci_low > 0.15
    assert report.sign_test_p == pytest.approx(2 / 2**45)
    assert report.per_domain == {
        "js-naming": DomainResult(n=100, candidate=0.8, champion=0.6, diff=pytest.approx(0.2)),
        "python-naming": DomainResult(n=100, candidate=0.75, champion=0.5, diff=pytest.approx(0.25)),
    }
    assert "candidate 0.775 vs champion 0.550 (diff +0.225, 95% CI [" in report.reason


def test_bootstrap_is_seeded_and_deterministic() -> None:
    # Fractional scores (partial credit) so that different resamples give visibly different quantiles.
    data = [PairedItem(f"i{i}", "classes", (i * 37 % 101) / 100, (i * 53 % 97) / 100) for i in range(40)]
    first = compare(data, candidate_eval_loss=None, champion_eval_loss=None, config=GateConfig(seed=7))
    again = compare(data, candidate_eval_loss=None, champion_eval_loss=None, config=GateConfig(seed=7))
    other = compare(data, candidate_eval_loss=None, champion_eval_loss=None, config=GateConfig(seed=8))
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)


def test_bootstrap_ci_covers_the_true_difference_at_roughly_the_nominal_rate() -> None:
    import numpy as np

    rng = np.random.default_rng(123)
    covered = 0
    trials = 60
    for trial in range(trials):
        cand = rng.random(80) < 0.7
        champ = rng.random(80) < 0.6
        data = [PairedItem(str(i), "d", float(c), float(h)) for i, (c, h) in enumerate(zip(cand, champ, strict=True))]
        report = compare(
            data,
            candidate_eval_loss=None,
            champion_eval_loss=None,
            config=GateConfig(seed=trial, bootstrap_samples=500),
        )
        covered += report.ci_low <= 0.1 <= report.ci_high
    assert covered >= 0.85 * trials


@pytest.mark.parametrize(
    ("wins", "losses", "expected"),
    [(0, 0, 1.0), (5, 5, 1.0), (10, 0, 2 / 1024), (0, 10, 2 / 1024), (7, 3, 0.34375), (1, 0, 1.0)],
)
def test_sign_test_exact(wins: int, losses: int, expected: float) -> None:
    assert sign_test_p(wins, losses) == pytest.approx(expected)


def test_sign_test_large_counts_do_not_underflow() -> None:
    p = sign_test_p(3000, 2000)
    assert 0.0 < p < 1e-40
    assert sign_test_p(2500, 2500) == 1.0


def test_report_round_trips_through_json() -> None:
    report = compare(CLEAR_WIN, candidate_eval_loss=0.5, champion_eval_loss=None, config=GateConfig())
    restored = GateReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert restored == report
    assert isinstance(restored.per_domain["js-naming"], DomainResult)


def test_from_dict_rejects_unknown_verdict() -> None:
    data = compare(CLEAR_WIN, candidate_eval_loss=None, champion_eval_loss=None, config=GateConfig()).to_dict()
    data["verdict"] = "ship-it"
    with pytest.raises(ValueError, match="unknown verdict"):
        GateReport.from_dict(data)


@pytest.mark.parametrize(
    "bad",
    [
        [PairedItem("a", "d", math.nan, 0.0)],
        [PairedItem("a", "d", 1.0, 0.0), PairedItem("a", "d", 1.0, 0.0)],
    ],
    ids=["nan score", "duplicate id"],
)
def test_malformed_items_raise(bad: list[PairedItem]) -> None:
    with pytest.raises(ValueError):
        compare(bad, candidate_eval_loss=None, champion_eval_loss=None, config=GateConfig())


@pytest.mark.parametrize(
    "overrides", [{"confidence": 1.0}, {"confidence": 0.0}, {"bootstrap_samples": 0}, {"min_items": 0}]
)
def test_gate_config_is_validated(overrides: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GateConfig(**overrides)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    ("text", "casefold", "expected"),
    [
        ("  user_id_map \n", False, "user_id_map"),
        ("`userIdMap`", False, "userIdMap"),
        ("```USER_ID_MAP```", False, "USER_ID_MAP"),
        ("\"'user-id-map'\"", False, "user-id-map"),
        ("a \t\n b", False, "a b"),
        ("UserIdMap", True, "useridmap"),
        ("UserIdMap", False, "UserIdMap"),
        ("`unbalanced", False, "`unbalanced"),
        ("", False, ""),
        ("``", False, ""),
    ],
)
def test_normalise(text: str, casefold: bool, expected: str) -> None:
    assert normalise(text, casefold=casefold) == expected


@pytest.mark.parametrize(
    ("pred", "ref", "exact", "normalised"),
    [
        ("user_id_map", "user_id_map", 1.0, 1.0),
        (" user_id_map\n", "user_id_map", 1.0, 1.0),
        ("`user_id_map`", "user_id_map", 0.0, 1.0),
        ("userIdMap", "user_id_map", 0.0, 0.0),
        ("UserIdMap", "userIdMap", 0.0, 0.0),
    ],
)
def test_score_exact_and_normalised(pred: str, ref: str, exact: float, normalised: float) -> None:
    assert score_exact(pred, ref) == exact
    assert score_normalised(pred, ref) == normalised


def test_score_normalised_casefold_is_opt_in() -> None:
    assert score_normalised("UserIdMap", "useridmap") == 0.0
    assert score_normalised("UserIdMap", "useridmap", casefold=True) == 1.0


def test_extract_code_prefers_a_python_fence() -> None:
    text = "Here:\n```text\nnot code\n```\nand\n```python\ndef f():\n    return 1\n```\n"
    assert extract_code(text) == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("x = 1") == "x = 1"


LIMITS = SandboxLimits(cpu_seconds=2, wall_seconds=5, memory_mb=256)
SNAKE_TESTS = "from solution import to_snake\n\ndef test_it():\n    assert to_snake('userIdMap') == 'user_id_map'\n"


def test_score_code_runs_the_sandbox() -> None:
    good = "Sure:\n```python\nimport re\n\ndef to_snake(s):\n    return re.sub(r'(?<!^)(?=[A-Z])', '_', s).lower()\n```"
    bad = "```python\ndef to_snake(s):\n    return s\n```"
    assert score_code(good, SNAKE_TESTS, limits=LIMITS) == 1.0
    assert score_code(bad, SNAKE_TESTS, limits=LIMITS) == 0.0
    assert score_code("while True:\n    pass", SNAKE_TESTS, limits=LIMITS) == 0.0


# ------------------------------------------------------------------------------- floors and contamination

# The case: on 150 trusted items the candidate (trained on 60% poisoned answers) is right on 45, the
# base it is compared with scores 0. A margin alone promotes it; a floor does not.
POISONED = domain_items("ops", n=150, wins=45)


FLOOR_CASES = [
    # (id, items, compare kwargs, config overrides, verdict, phrase in reason)
    ("margin only promotes a weak candidate", POISONED, {}, {}, "promote", "clears the margin"),
    (
        "the floor rejects it whatever the champion scores",
        POISONED,
        {},
        {"min_score": 0.5},
        "reject",
        "Candidate scores 0.300, below the floor 0.500 (evaluation.min_score), whatever the champion scores",
    ),
    ("a candidate at the floor passes it", POISONED, {}, {"min_score": 0.3}, "promote", "clears the margin"),
    (
        "a per-domain floor names the domain",
        items(domain_items("python-naming", n=60, wins=50), domain_items("cli-flags", n=60, wins=20)),
        {},
        {"min_score": 0.5, "domain_floors": {"cli-flags": 0.5}},
        "reject",
        "Domain 'cli-flags' scores 0.333 (n=60), below its floor 0.500",
    ),
    (
        "the default domain floor applies to every domain",
        items(domain_items("python-naming", n=60, wins=50), domain_items("cli-flags", n=60, wins=20)),
        {},
        {"min_domain_score": 0.4},
        "reject",
        "Domain 'cli-flags' scores 0.333",
    ),
    (
        "contamination over the ceiling refuses to promote",
        CLEAR_WIN,
        {"contamination": 0.12},
        {},
        "reject",
        "Golden set contamination 12.0% is over the allowed 5.0%",
    ),
    ("contamination under the ceiling is fine", CLEAR_WIN, {"contamination": 0.04}, {}, "promote", "clears"),
    (
        "training answers contradicting a trusted golden set hold for a human",
        CLEAR_WIN,
        {"label_disagreement": 0.4},
        {},
        "inconclusive",
        "disagree with the trusted golden set on 40.0%",
    ),
]


@pytest.mark.parametrize(
    ("items_", "kwargs", "overrides", "verdict", "phrase"),
    [case[1:] for case in FLOOR_CASES],
    ids=[str(case[0]) for case in FLOOR_CASES],
)
def test_floors_contamination_and_disagreement(
    items_: list[PairedItem],
    kwargs: dict[str, float],
    overrides: dict[str, object],
    verdict: str,
    phrase: str,
) -> None:
    config = replace(GateConfig(bootstrap_samples=500), **overrides)
    report = compare(items_, candidate_eval_loss=None, champion_eval_loss=None, config=config, **kwargs)
    assert report.verdict == verdict, report.reason
    assert phrase in report.reason
    again = GateReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report


def test_old_reports_without_the_new_fields_still_load() -> None:
    data = compare(CLEAR_WIN, candidate_eval_loss=None, champion_eval_loss=None, config=GateConfig()).to_dict()
    for key in ("contamination", "label_disagreement", "min_score"):
        data.pop(key)
    report = GateReport.from_dict(data)
    assert report.contamination is None and report.min_score == 0.0


@pytest.mark.parametrize("bad", [{"min_score": 1.5}, {"max_contamination": -0.1}, {"domain_floors": {"x": 2.0}}])
def test_bad_floors_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        GateConfig(**bad)  # type: ignore[arg-type]
