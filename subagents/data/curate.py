"""Curation: from execution records to train / eval / golden examples.

The pipeline, in this order (each record leaves at the first step that rejects it, with one reason):
  1. quality filters      success, all tests passed, rating, a non-empty output          -> ``dropped``
  2. injection screening  any text of the record                                         -> ``quarantined``
  3. exact dedup          ``content_hash``; the first occurrence in input order is kept   -> ``dropped``
  4. near dedup           MinHash + LSH + exact Jaccard on prompt+output, per domain      -> ``dropped``
  5. scrubbing            prompt, output and tests; counts by kind                       -> ``scrubbed``
  6. split                by task cluster (clusters.py: the same task reworded, across all domains): a
                          cluster goes whole to the split of its first record's ``split_key(prompt)``
                          (golden if a member's key is in ``frozen_golden``); its examples carry that key
  7. ``max_examples``     caps train only (eval and golden must stay comparable between snapshots)

Invariants:
- Every example's messages are exactly [user: scrubbed prompt, assistant: scrubbed output].
- A record's ``tests`` (test code, optional) travel as the example's ``tests``, scrubbed like the messages; an
  example without tests serialises exactly as before the field existed (no key), so snapshot hashes of such
  data do not change.
- The golden split never reaches train: no task cluster straddles two splits within a snapshot. Across
  snapshots, records arrive in time order and clusters only merge, so a cluster keeps its first record's split;
  a merge of two clusters (a record that bridges them) or a late, older record can move one, unless the caller
  passes the previous golden prompts' keys as ``frozen_golden``, which keeps a golden cluster golden.
  An example's ``split_key`` is its cluster's key, so ``assign_split(example.split_key)`` is its split (or it
  is golden by ``frozen_golden``).
- Deterministic: the same records in the same order and config give the same result.

With ``rewards`` (the reinforcement layer, subagents/data/rewards.py): every example carries its record's reward,
and the records the quality filters drop as failures (not_success, tests_failed, low_rating; they still count in
``dropped``) are kept as ``failures`` for preference data, after the same injection screening, exact dedup and
scrubbing. The splits of the successful examples do not change: clusters are computed over them alone, as
without ``rewards``; a failure then takes the split of the success clusters it joins when clustered together
with them, or its own key's split when it joins none. A failure that joins clusters in two splits is dropped
(``failure_straddles``), so no task cluster reaches both training and golden through a failure.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from subagents.data.clusters import TaskItem, task_clusters
from subagents.data.dedup import near_duplicates
from subagents.data.injection import screen
from subagents.data.rewards import RewardWeights, reward, reward_distribution
from subagents.data.schema import ExecutionRecord, content_hash
from subagents.data.scrub import scrub
from subagents.data.split import Split, assign_split, split_key

__all__ = ["CurationConfig", "CurationResult", "DropReason", "Example", "curate", "outcome_weight"]

_SAMPLES_PER_REASON = 20


class DropReason:
    NOT_SUCCESS = "not_success"
    TESTS_FAILED = "tests_failed"
    LOW_RATING = "low_rating"
    EMPTY_OUTPUT = "empty_output"
    EXACT_DUPLICATE = "exact_duplicate"
    NEAR_DUPLICATE = "near_duplicate"
    OVER_MAX_EXAMPLES = "over_max_examples"
    FAILURE_STRADDLES = "failure_straddles"  # a failure kept for preference data linked two splits' clusters


# The quality reasons that mark an attempt that went wrong (kept, with ``rewards``, as preference data).
FAILURE_REASONS = frozenset({DropReason.NOT_SUCCESS, DropReason.TESTS_FAILED, DropReason.LOW_RATING})


@dataclass(frozen=True, slots=True)
class CurationConfig:
    """What curation keeps. Recorded in every snapshot manifest (``filters``)."""

    require_success: bool = True
    require_tests_pass: bool = True  # tests_passed == tests_total, when both are reported
    min_rating: int | None = None  # drop records whose human rating is below this
    near_dup_threshold: float = 0.85  # Jaccard similarity at or above which a record is a near duplicate
    cluster_threshold: float = 0.6  # content-token Jaccard at or above which two records are one task (clusters.py)
    eval_fraction: float = 0.1
    golden_fraction: float = 0.15
    max_examples: int | None = None  # cap on train examples (highest weight, then newest, are kept)

    def __post_init__(self) -> None:
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ValueError("near_dup_threshold must be in (0, 1]")
        if not 0.0 < self.cluster_threshold <= 1.0:
            raise ValueError("cluster_threshold must be in (0, 1]")
        if self.min_rating is not None and not 1 <= self.min_rating <= 5:
            raise ValueError("min_rating must be 1..5")
        if self.max_examples is not None and self.max_examples < 0:
            raise ValueError("max_examples must be >= 0")
        assign_split("0" * 16, eval_fraction=self.eval_fraction, golden_fraction=self.golden_fraction)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Example:
    """One training/eval example. ``messages`` is [{"role": "user", ...}, {"role": "assistant", ...}]."""

    id: str
    domain: str
    weight: float
    messages: tuple[dict[str, str], ...]
    split_key: str
    record_id: str
    tests: str = ""  # scrubbed test code the product ran (code tasks); "" when the record had none
    reward: float | None = None  # the record's reward (rewards.py), when curation computed rewards
    success: bool = True  # False for a failure kept for preference data
    rating: int | None = None  # the human rating of the record, if any (not serialised: it is in ``weight``)

    def to_json(self) -> str:
        """The snapshot line format (the demo task spec): id, domain, weight, messages, ``tests`` only when
        there are any, ``reward`` only when computed (readers must ignore keys they do not know;
        jobs.common.read_jsonl does)."""
        line: dict[str, object] = {
            "id": self.id,
            "domain": self.domain,
            "weight": self.weight,
            "messages": list(self.messages),
        }
        if self.tests:
            line["tests"] = self.tests
        if self.reward is not None:
            line["reward"] = self.reward
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class CurationResult:
    train: list[Example]
    eval: list[Example]
    golden: list[Example]
    dropped: dict[str, int]
    dropped_samples: dict[str, list[str]]  # reason -> first record ids
    quarantined: list[tuple[str, str]]  # (record_id, reason)
    scrubbed: dict[str, int]  # kind -> values replaced
    domain_counts: dict[str, dict[str, int]]  # split -> domain -> examples
    config: CurationConfig = field(default_factory=CurationConfig)
    records_in: int = 0
    task_clusters: dict[str, int] = field(default_factory=dict)  # clusters, records in multi-record clusters, largest
    failures: dict[str, list[Example]] = field(default_factory=dict)  # split -> failed attempts (with ``rewards``)
    rewards: dict[str, dict[str, float]] = field(default_factory=dict)  # domain -> reward distribution
    failures_skipped: dict[str, int] = field(default_factory=dict)  # why failed attempts were not kept

    def split(self, name: Split | str) -> list[Example]:
        return {Split.TRAIN: self.train, Split.EVAL: self.eval, Split.GOLDEN: self.golden}[Split(name)]


def outcome_weight(record: ExecutionRecord) -> float:
    """Training weight from the outcome: a human's 5 counts 1.5, a 4 counts 1.2, a 1-2 counts 0.5."""
    rating = record.feedback.rating if record.feedback is not None else None
    if rating is None or rating == 3:
        return 1.0
    return {5: 1.5, 4: 1.2}.get(rating, 0.5)


def _quality_reason(record: ExecutionRecord, config: CurationConfig) -> str | None:
    if config.require_success and not record.success:
        return DropReason.NOT_SUCCESS
    m = record.metrics
    if (
        config.require_tests_pass
        and m.tests_passed is not None
        and m.tests_total is not None
        and m.tests_passed != m.tests_total
    ):
        return DropReason.TESTS_FAILED
    if config.min_rating is not None:
        rating = record.feedback.rating if record.feedback is not None else None
        if rating is not None and rating < config.min_rating:
            return DropReason.LOW_RATING
    if not record.output.strip():
        return DropReason.EMPTY_OUTPUT
    return None


def _screen_record(record: ExecutionRecord) -> str | None:
    for text in (record.prompt, record.output, record.task, record.code_context, record.error_context, record.tests):
        reason = screen(text)
        if reason is not None:
            return reason
    return None


def curate(
    records: Iterable[ExecutionRecord],
    config: CurationConfig | None = None,
    *,
    frozen_golden: Collection[str] = (),
    rewards: RewardWeights | None = None,
) -> CurationResult:
    """Filter, screen, deduplicate, scrub and split ``records`` (see the module docstring).

    ``frozen_golden``: split keys that were golden before (``split_key`` of the previous snapshot's golden
    prompts); a task cluster holding any of them is golden whatever else joined it. ``rewards``: compute each
    example's reward and keep failed attempts for preference data (the module docstring)."""
    config = config or CurationConfig()
    dropped: Counter[str] = Counter()
    samples: dict[str, list[str]] = defaultdict(list)
    quarantined: list[tuple[str, str]] = []

    def drop(reason: str, record_id: str) -> None:
        dropped[reason] += 1
        if len(samples[reason]) < _SAMPLES_PER_REASON:
            samples[reason].append(record_id)

    # Steps 1-3, streaming.
    seen: set[str] = set()
    kept: list[tuple[ExecutionRecord, str]] = []
    n_in = 0
    failed: list[tuple[ExecutionRecord, str]] = []
    failure_skips: Counter[str] = Counter()
    for record in records:
        n_in += 1
        reason = _quality_reason(record, config)
        if reason is not None:
            drop(reason, record.record_id)
            if rewards is not None and reason in FAILURE_REASONS and record.output.strip():
                _keep_failure(record, failed, failure_skips)
            continue
        injection = _screen_record(record)
        if injection is not None:
            quarantined.append((record.record_id, injection))
            continue
        digest = content_hash(record)
        if digest in seen:
            drop(DropReason.EXACT_DUPLICATE, record.record_id)
            continue
        seen.add(digest)
        kept.append((record, digest))

    # Step 4, per domain: the same prompt under another domain is another task.
    by_domain: dict[str, list[int]] = defaultdict(list)
    for idx, (record, _) in enumerate(kept):
        by_domain[record.domain].append(idx)
    near: set[int] = set()
    for indices in by_domain.values():
        texts = [f"{kept[i][0].prompt}\n{kept[i][0].output}" for i in indices]
        for pos, dup_of in enumerate(near_duplicates(texts, config.near_dup_threshold)):
            if dup_of is not None:
                near.add(indices[pos])
    for idx in sorted(near):
        drop(DropReason.NEAR_DUPLICATE, kept[idx][0].record_id)

    # Step 6's clusters, over every record that reached dedup (so a dropped near duplicate still links its
    # cluster). A cluster goes whole to the split of its first record (timestamp, then record id): retries
    # follow the original, new records do not move old clusters, and the golden share stays the configured
    # fraction whatever the cluster sizes. A member key in ``frozen_golden`` makes the cluster golden.
    cluster_of = task_clusters([TaskItem(r.prompt, r.output) for r, _ in kept], config.cluster_threshold)
    first: dict[int, tuple[datetime, str, int]] = {}
    frozen_clusters: set[int] = set()
    for idx, (record, _) in enumerate(kept):
        c = cluster_of[idx]
        mark = (record.timestamp, record.record_id, idx)
        if c not in first or mark < first[c]:
            first[c] = mark
        if frozen_golden and split_key(record.prompt) in frozen_golden:
            frozen_clusters.add(c)
    cluster_key = {c: split_key(kept[mark[2]][0].prompt) for c, mark in first.items()}
    sizes = Counter(cluster_of)

    def cluster_split(c: int) -> Split:
        if c in frozen_clusters:
            return Split.GOLDEN
        return assign_split(cluster_key[c], eval_fraction=config.eval_fraction, golden_fraction=config.golden_fraction)

    # Steps 5-6.
    scrubbed: Counter[str] = Counter()
    splits: dict[Split, list[tuple[Example, ExecutionRecord]]] = {s: [] for s in Split}
    for idx, (record, digest) in enumerate(kept):
        if idx in near:
            continue
        example = _example(record, digest, cluster_key[cluster_of[idx]], rewards, scrubbed, success=True)
        splits[cluster_split(cluster_of[idx])].append((example, record))

    failures: dict[str, list[Example]] = {}
    if rewards is not None:
        seen_success = {digest for _, digest in kept}
        conflicting = sum(1 for _, d in failed if d in seen_success)
        if conflicting:  # the same answer to the same task reported both ways: no signal either way
            failure_skips["same_as_success"] += conflicting
            failed = [(r, d) for r, d in failed if d not in seen_success]
        placed = _place_failures(kept, failed, cluster_of, cluster_split, cluster_key, config, frozen_golden)
        failures = {s.value: [] for s in Split}
        for (record, digest), where in zip(failed, placed, strict=True):
            if where is None:
                failure_skips[DropReason.FAILURE_STRADDLES] += 1
                continue
            which, key = where
            failures[which.value].append(_example(record, digest, key, rewards, scrubbed, success=False))

    # Step 7: cap train, keeping the highest weight, then the newest; the survivors keep input order.
    train = splits[Split.TRAIN]
    if config.max_examples is not None and len(train) > config.max_examples:
        ranked = sorted(range(len(train)), key=lambda i: (-train[i][0].weight, -train[i][1].timestamp.timestamp()))
        keep = set(ranked[: config.max_examples])
        for i, (example, _) in enumerate(train):
            if i not in keep:
                drop(DropReason.OVER_MAX_EXAMPLES, example.record_id)
        splits[Split.TRAIN] = [pair for i, pair in enumerate(train) if i in keep]

    out = {s: [example for example, _ in pairs] for s, pairs in splits.items()}
    domain_counts = {s.value: dict(sorted(Counter(e.domain for e in out[s]).items())) for s in Split}
    rewarded = [*out[Split.TRAIN], *out[Split.EVAL], *out[Split.GOLDEN], *(e for f in failures.values() for e in f)]
    distribution = (
        reward_distribution((e.domain, e.reward, e.success) for e in rewarded if e.reward is not None)
        if rewards is not None
        else {}
    )
    return CurationResult(
        train=out[Split.TRAIN],
        eval=out[Split.EVAL],
        golden=out[Split.GOLDEN],
        dropped=dict(sorted(dropped.items())),
        dropped_samples={k: list(v) for k, v in sorted(samples.items())},
        quarantined=quarantined,
        scrubbed=dict(sorted(scrubbed.items())),
        domain_counts=domain_counts,
        config=config,
        records_in=n_in,
        task_clusters={
            "clusters": len(sizes),
            "clustered_records": sum(n for n in sizes.values() if n > 1),
            "largest": max(sizes.values(), default=0),
        },
        failures=failures,
        rewards=distribution,
        failures_skipped=dict(sorted(failure_skips.items())),
    )


def _example(
    record: ExecutionRecord,
    digest: str,
    key: str,
    rewards: RewardWeights | None,
    scrubbed: Counter[str],
    *,
    success: bool,
) -> Example:
    """The scrubbed example of ``record`` in the cluster keyed ``key`` (scrub counts added to ``scrubbed``)."""
    prompt, output, tests = scrub(record.prompt), scrub(record.output), scrub(record.tests)
    scrubbed.update(prompt.counts)
    scrubbed.update(output.counts)
    scrubbed.update(tests.counts)
    return Example(
        id=f"ex-{hashlib.sha256(digest.encode()).hexdigest()[:20]}",
        domain=record.domain,
        weight=outcome_weight(record),
        messages=({"role": "user", "content": prompt.text}, {"role": "assistant", "content": output.text}),
        split_key=key,
        record_id=record.record_id,
        tests=tests.text,
        reward=reward(record, rewards).total if rewards is not None else None,
        success=success,
        rating=record.feedback.rating if record.feedback is not None else None,
    )


def _keep_failure(record: ExecutionRecord, failed: list[tuple[ExecutionRecord, str]], skips: Counter[str]) -> None:
    """Screen a failed attempt and keep it (once per content) for preference data."""
    injection = _screen_record(record)
    if injection is not None:
        skips[f"injection:{injection}"] += 1
        return
    digest = content_hash(record)
    if any(d == digest for _, d in failed):
        skips[DropReason.EXACT_DUPLICATE] += 1
        return
    failed.append((record, digest))


def _place_failures(
    kept: list[tuple[ExecutionRecord, str]],
    failed: list[tuple[ExecutionRecord, str]],
    cluster_of: list[int],
    cluster_split: Any,
    cluster_key: dict[int, str],
    config: CurationConfig,
    frozen_golden: Collection[str],
) -> list[tuple[Split, str] | None]:
    """Each failure's (split, cluster key), or None when it joins success clusters of two splits."""
    if not failed:
        return []
    n = len(kept)
    joint = task_clusters(
        [TaskItem(r.prompt, r.output) for r, _ in kept] + [TaskItem(r.prompt, r.output) for r, _ in failed],
        config.cluster_threshold,
    )
    success_clusters: dict[int, list[int]] = defaultdict(list)  # joint cluster -> success clusters, in order
    failure_first: dict[int, int] = {}  # joint cluster -> its first failure (for failure-only clusters)
    frozen: set[int] = set()
    for i, g in enumerate(joint):
        if i < n:
            if cluster_of[i] not in success_clusters[g]:
                success_clusters[g].append(cluster_of[i])
        else:
            failure_first.setdefault(g, i - n)
            if frozen_golden and split_key(failed[i - n][0].prompt) in frozen_golden:
                frozen.add(g)
    out: list[tuple[Split, str] | None] = []
    for j in range(len(failed)):
        g = joint[n + j]
        members = success_clusters.get(g, [])
        splits = {cluster_split(c) for c in members}
        if g in frozen:
            splits.add(Split.GOLDEN)
        if len(splits) > 1:
            out.append(None)
        elif members:
            out.append((splits.pop(), cluster_key[members[0]]))
        else:
            key = split_key(failed[failure_first[g]][0].prompt)
            which = (
                Split.GOLDEN
                if g in frozen
                else assign_split(key, eval_fraction=config.eval_fraction, golden_fraction=config.golden_fraction)
            )
            out.append((which, key))
    return out
