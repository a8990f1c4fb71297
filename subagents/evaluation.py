"""Scoring model outputs and the promotion gate: candidate vs champion on the same golden items.

Invariants:

- The gate is a pure function of its inputs: same items, losses and config (seed included) give the same
  report. No torch here; the daemon never imports it.
- Statistics are *paired*: each item is scored for both models and only per-item differences are used.
  The confidence interval is a seeded percentile bootstrap of the mean difference; the sign test is exact
  (two-sided binomial on wins vs losses, ties dropped).
- The verdict rules, in order (the first that fires decides, and ``reason`` names its figures):
  1. reject: fewer than ``min_items`` paired items;
  2. reject: the golden set's contamination (the share of golden items with a near-duplicate in the candidate's
     training split, subagents/data/clusters.py) is over ``max_contamination``: the score would measure
     memorisation, not skill;
  3. reject: eval loss got worse beyond ``max_eval_loss_increase`` (relative);
  4. reject: the candidate's mean score is below the absolute floor ``min_score``, whatever the champion
     scores (a margin over a base that scores 0 proves nothing), or some domain's mean is below its floor
     (``domain_floors[domain]``, else ``min_domain_score``);
  5. reject: some domain's mean difference is below ``-max_domain_regression``;
  6. reject: the point difference is not above ``margin``;
  7. inconclusive: it would promote, but the training answers disagree with a trusted golden file on
     near-duplicate tasks more than ``max_label_disagreement`` (poisoned labels?) — a human decides;
  8. promote: the bootstrap lower bound ``ci_low`` is above ``margin``;
  9. otherwise inconclusive: better on average, not surely enough — a human decides.
- Floors and contamination apply only when given: ``min_score`` 0 and ``contamination=None`` (not measured)
  disable them, so the gate's figures stay comparable with reports written before they existed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

import numpy as np

from tools.sandbox import SandboxLimits, run_python

__all__ = [
    "DomainResult",
    "GateConfig",
    "GateReport",
    "PairedItem",
    "Verdict",
    "compare",
    "extract_code",
    "normalise",
    "score_code",
    "score_exact",
    "score_normalised",
    "sign_test_p",
]

Verdict = Literal["promote", "reject", "inconclusive"]
_VERDICTS: tuple[Verdict, ...] = ("promote", "reject", "inconclusive")
_QUOTES = "`'\""
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)
_BOOTSTRAP_CHUNK = 256
# Scores are means of 0/1 items: compare thresholds with a tolerance so 0.8 - 0.9 counts as exactly -0.1.
_EPS = 1e-9


# --------------------------------------------------------------------------------------------- scoring


def normalise(text: str, *, casefold: bool = False) -> str:
    """Strip, collapse runs of whitespace, strip matching surrounding backticks/quotes (repeatedly, so
    ```` ``x`` ```` and ``"`x`"`` both become ``x``); casefold only when asked — identifier style answers are
    case-sensitive, so the default keeps case."""
    out = " ".join(text.split())
    while len(out) >= 2 and out[0] == out[-1] and out[0] in _QUOTES:
        out = out[1:-1].strip()
    return out.casefold() if casefold else out


def score_exact(pred: str, ref: str) -> float:
    """1.0 when the prediction equals the reference after stripping outer whitespace only."""
    return 1.0 if pred.strip() == ref.strip() else 0.0


def score_normalised(pred: str, ref: str, *, casefold: bool = False) -> float:
    return 1.0 if normalise(pred, casefold=casefold) == normalise(ref, casefold=casefold) else 0.0


def extract_code(text: str) -> str:
    """The code in a model answer: the first fenced block (preferring one tagged python), else the text."""
    blocks = _FENCE.findall(text)
    if not blocks:
        return text
    for lang, body in blocks:
        if lang.lower() in ("python", "py", "python3"):
            return str(body)
    return str(blocks[0][1])


def score_code(prediction: str, tests: str, *, limits: SandboxLimits) -> float | None:
    """1.0 when ``tests`` pass against the prediction's code in the sandbox, else 0.0; None when the sandbox could
    not isolate it and so ran nothing (not evaluated: never a score)."""
    result = run_python(extract_code(prediction), tests, limits)
    if not result.evaluated:
        return None
    return 1.0 if result.passed else 0.0


# ------------------------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class PairedItem:
    id: str
    domain: str
    candidate: float
    champion: float


@dataclass(frozen=True)
class GateConfig:
    margin: float = 0.05
    max_domain_regression: float = 0.10
    confidence: float = 0.95
    bootstrap_samples: int = 2000
    seed: int = 0
    max_eval_loss_increase: float = 0.0
    min_items: int = 20
    min_score: float = 0.0  # absolute floor on the candidate's mean score; 0 disables
    min_domain_score: float = 0.0  # floor on every domain's mean score; 0 disables
    domain_floors: Mapping[str, float] = field(default_factory=dict)  # per-domain floors (override the above)
    max_contamination: float = 0.05  # share of golden items with a near-duplicate in train
    max_label_disagreement: float = 0.10  # share of trusted golden items the training answers contradict

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.bootstrap_samples < 1:
            raise ValueError("bootstrap_samples must be at least 1")
        if self.max_domain_regression < 0 or self.max_eval_loss_increase < 0 or self.min_items < 1:
            raise ValueError(f"invalid gate config: {self}")
        floors = [self.min_score, self.min_domain_score, *self.domain_floors.values()]
        shares = [self.max_contamination, self.max_label_disagreement]
        if not all(0.0 <= f <= 1.0 for f in floors + shares):
            raise ValueError(f"gate floors and shares must be in [0, 1]: {self}")


@dataclass(frozen=True)
class DomainResult:
    n: int
    candidate: float
    champion: float
    diff: float


@dataclass(frozen=True)
class GateReport:
    verdict: Verdict
    reason: str
    n_items: int
    candidate_score: float
    champion_score: float
    diff: float
    ci_low: float
    ci_high: float
    sign_test_p: float
    per_domain: dict[str, DomainResult] = field(default_factory=dict)
    candidate_eval_loss: float | None = None
    champion_eval_loss: float | None = None
    contamination: float | None = None  # share of golden items with a near-duplicate in train (None: not measured)
    label_disagreement: float | None = None  # share of trusted golden items contradicted by training answers
    min_score: float = 0.0  # the floor the candidate was held to

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateReport:
        verdict = data["verdict"]
        if verdict not in _VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}")
        per_domain = {str(k): DomainResult(**v) for k, v in dict(data.get("per_domain", {})).items()}
        return cls(
            verdict=cast(Verdict, verdict),
            reason=str(data["reason"]),
            n_items=int(data["n_items"]),
            candidate_score=float(data["candidate_score"]),
            champion_score=float(data["champion_score"]),
            diff=float(data["diff"]),
            ci_low=float(data["ci_low"]),
            ci_high=float(data["ci_high"]),
            sign_test_p=float(data["sign_test_p"]),
            per_domain=per_domain,
            candidate_eval_loss=_opt_float(data.get("candidate_eval_loss")),
            champion_eval_loss=_opt_float(data.get("champion_eval_loss")),
            contamination=_opt_float(data.get("contamination")),
            label_disagreement=_opt_float(data.get("label_disagreement")),
            min_score=float(data.get("min_score", 0.0)),
        )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test: P(a split at least this uneven | p=0.5), ties already dropped."""
    m = wins + losses
    if m == 0:
        return 1.0
    k = min(wins, losses)
    # Exact integer arithmetic: 0.5**m underflows for large m, a ratio of big ints does not.
    tail = sum(math.comb(m, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**m)


def _bootstrap_ci(diffs: np.ndarray, config: GateConfig) -> tuple[float, float]:
    rng = np.random.default_rng(config.seed)
    n = diffs.shape[0]
    means = np.empty(config.bootstrap_samples)
    # Chunked so memory stays O(chunk * n) however large the golden set is.
    for start in range(0, config.bootstrap_samples, _BOOTSTRAP_CHUNK):
        stop = min(start + _BOOTSTRAP_CHUNK, config.bootstrap_samples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diffs[idx].mean(axis=1)
    alpha = 1.0 - config.confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _per_domain(items: Sequence[PairedItem]) -> dict[str, DomainResult]:
    grouped: dict[str, list[PairedItem]] = {}
    for item in items:
        grouped.setdefault(item.domain, []).append(item)
    out: dict[str, DomainResult] = {}
    for domain in sorted(grouped):
        group = grouped[domain]
        cand = sum(i.candidate for i in group) / len(group)
        champ = sum(i.champion for i in group) / len(group)
        out[domain] = DomainResult(n=len(group), candidate=cand, champion=champ, diff=cand - champ)
    return out


def _validate(items: Sequence[PairedItem]) -> None:
    seen: set[str] = set()
    for item in items:
        if not (math.isfinite(item.candidate) and math.isfinite(item.champion)):
            raise ValueError(f"item {item.id!r} has a non-finite score")
        if item.id in seen:
            raise ValueError(f"item {item.id!r} appears twice; pairs must be unique")
        seen.add(item.id)


def compare(
    items: Sequence[PairedItem],
    *,
    candidate_eval_loss: float | None,
    champion_eval_loss: float | None,
    config: GateConfig,
    contamination: float | None = None,
    label_disagreement: float | None = None,
) -> GateReport:
    """Decide promote / reject / inconclusive for a candidate against the champion (rules in the module
    docstring). ``contamination``: the share of golden items with a near-duplicate in the candidate's train
    split; ``label_disagreement``: the share of trusted golden items whose near-duplicate training answers
    differ (both None when not measured). Raises ``ValueError`` for malformed input (duplicate ids, NaN
    scores)."""
    _validate(items)
    n = len(items)
    level = f"{config.confidence:.0%}"
    if n:
        cand = np.array([i.candidate for i in items], dtype=float)
        champ = np.array([i.champion for i in items], dtype=float)
        diffs = cand - champ
        cand_mean, champ_mean, diff = float(cand.mean()), float(champ.mean()), float(diffs.mean())
        ci_low, ci_high = _bootstrap_ci(diffs, config)
        p = sign_test_p(int((diffs > 0).sum()), int((diffs < 0).sum()))
    else:
        cand_mean = champ_mean = diff = ci_low = ci_high = 0.0
        p = 1.0
    domains = _per_domain(items)
    figures = (
        f"candidate {cand_mean:.3f} vs champion {champ_mean:.3f} (diff {diff:+.3f}, "
        f"{level} CI [{ci_low:+.3f}, {ci_high:+.3f}], sign test p={p:.3g}, n={n})"
    )

    verdict: Verdict
    if n < config.min_items:
        verdict, reason = "reject", f"Only {n} paired items, fewer than the {config.min_items} required; {figures}."
    elif contamination is not None and contamination > config.max_contamination + _EPS:
        verdict = "reject"
        reason = (
            f"Golden set contamination {contamination:.1%} is over the allowed {config.max_contamination:.1%}: "
            f"that share of golden items has a near-duplicate in the candidate's training split, so the score "
            f"would measure memorisation; use a golden set that shares no task with training; {figures}."
        )
    elif (loss := _loss_regression(candidate_eval_loss, champion_eval_loss, config)) is not None:
        verdict, reason = "reject", f"{loss}; {figures}."
    elif config.min_score > 0 and cand_mean < config.min_score - _EPS:
        verdict = "reject"
        reason = (
            f"Candidate scores {cand_mean:.3f}, below the floor {config.min_score:.3f} (evaluation.min_score), "
            f"whatever the champion scores; {figures}."
        )
    elif (low := _below_floor(domains, config)) is not None:
        name, result, floor = low
        verdict = "reject"
        reason = (
            f"Domain {name!r} scores {result.candidate:.3f} (n={result.n}), below its floor {floor:.3f}; {figures}."
        )
    elif (worst := _worst_domain(domains, config)) is not None:
        name, result = worst
        verdict = "reject"
        reason = (
            f"Domain {name!r} regressed by {-result.diff:.3f} ({result.candidate:.3f} vs {result.champion:.3f}, "
            f"n={result.n}), more than the allowed {config.max_domain_regression:.3f}; {figures}."
        )
    elif diff <= config.margin + _EPS:
        verdict = "reject"
        reason = f"Difference {diff:+.3f} does not exceed the margin {config.margin:.3f}; {figures}."
    elif (
        ci_low > config.margin + _EPS
        and label_disagreement is not None
        and label_disagreement > config.max_label_disagreement + _EPS
    ):
        verdict = "inconclusive"
        reason = (
            f"Would promote, but the training answers disagree with the trusted golden set on "
            f"{label_disagreement:.1%} of its near-duplicate tasks (allowed {config.max_label_disagreement:.1%}): "
            f"the training data may carry wrong labels; held for a human; {figures}."
        )
    elif ci_low > config.margin + _EPS:
        verdict = "promote"
        reason = f"Lower bound {ci_low:+.3f} clears the margin {config.margin:.3f}; {figures}."
    else:
        verdict = "inconclusive"
        reason = (
            f"Better on average but the lower bound {ci_low:+.3f} does not clear the margin "
            f"{config.margin:.3f}; a human decides; {figures}."
        )
    return GateReport(
        verdict=verdict,
        reason=reason,
        n_items=n,
        candidate_score=cand_mean,
        champion_score=champ_mean,
        diff=diff,
        ci_low=ci_low,
        ci_high=ci_high,
        sign_test_p=p,
        per_domain=domains,
        candidate_eval_loss=candidate_eval_loss,
        champion_eval_loss=champion_eval_loss,
        contamination=contamination,
        label_disagreement=label_disagreement,
        min_score=config.min_score,
    )


def _below_floor(domains: Mapping[str, DomainResult], config: GateConfig) -> tuple[str, DomainResult, float] | None:
    """The domain furthest below its floor, if any."""
    low = []
    for name, result in domains.items():
        floor = config.domain_floors.get(name, config.min_domain_score)
        if floor > 0 and result.candidate < floor - _EPS:
            low.append((result.candidate - floor, name, result, floor))
    if not low:
        return None
    _, name, result, floor = min(low)
    return name, result, floor


def _loss_regression(candidate: float | None, champion: float | None, config: GateConfig) -> str | None:
    # Only comparable when both were measured on the same eval split; a missing loss is not evidence.
    if candidate is None or champion is None:
        return None
    if not math.isfinite(candidate):
        return f"Candidate eval loss is {candidate}"
    limit = champion * (1.0 + config.max_eval_loss_increase)
    if candidate > limit + _EPS * max(1.0, abs(limit)):
        return (
            f"Eval loss rose from {champion:.4f} to {candidate:.4f}, above the allowed {limit:.4f} "
            f"(+{config.max_eval_loss_increase:.1%})"
        )
    return None


def _worst_domain(domains: Mapping[str, DomainResult], config: GateConfig) -> tuple[str, DomainResult] | None:
    regressed = [(n, d) for n, d in domains.items() if d.diff < -config.max_domain_regression - _EPS]
    return min(regressed, key=lambda nd: nd[1].diff) if regressed else None
