"""Task clusters: records that are the same task (a reworded retry with the same answer), across all domains.

The split assigns whole clusters (curate.py), and the evaluation measures contamination with the same
relation, so "the golden set shares no task with training" is one definition used in both places.

Two items are the same task when, on their *content tokens* (case-folded words and identifiers, minus a small
list of filler words and minus the batch's template words — tokens in more than ``_TEMPLATE_SHARE`` of the
items, such as "rename" and "snake_case" in a batch of renames):
  (a) their normalised answers are equal and not trivial (``_MIN_ANSWER`` characters), and their prompts share
      at least half of the smaller prompt's content tokens ("Rename the function getUserName0 to snake_case."
      and "Please rename getUserName0 to snake_case, keep the behaviour." with the answer get_user_name0); or
  (b) the Jaccard similarity of their prompt+answer content tokens is at least ``threshold`` (MinHash over the
      token sets, banded LSH for candidates, the exact Jaccard decides).

Invariants:
- Clusters are the connected components of that relation (union-find), so they only ever merge as records
  are added; a record's cluster never depends on the input order.
- Deterministic across processes (seeded hashes, never Python's ``hash``).
- Cost is bounded: identical token sets are grouped before LSH, and within one LSH bucket or one answer group
  an item is compared with at most the ``_MAX_COMPARE`` items before it.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from subagents.data.dedup import lsh_bands, minhash_signatures

__all__ = [
    "Contamination",
    "Disagreement",
    "TaskItem",
    "contamination",
    "content_tokens",
    "file_contamination",
    "file_label_disagreement",
    "label_disagreement",
    "near_pairs",
    "task_clusters",
]

DEFAULT_THRESHOLD = 0.6
_TEMPLATE_SHARE = 0.02  # a token in more than this share of the items (and in >= _TEMPLATE_MIN) is template
_TEMPLATE_MIN = 20
_MIN_ANSWER = 6
_MAX_COMPARE = 16
_NUM_PERM = 60  # 20 bands of 3 rows: a pair at the threshold is a candidate with p >= 0.99

_WORD = re.compile(r"\w+")
_FILLER = frozenset(
    (
        "a", "an", "the", "to", "of", "and", "or", "in", "on", "at", "for", "with", "from", "by", "as", "is", "are",
        "be", "this", "that", "it", "its", "please", "can", "could", "would", "you", "your", "i", "me", "my", "we",
        "our", "us", "keep", "kindly", "just", "also", "then", "so", "do", "does", "make", "sure", "should", "must",
        "will", "now",
    )
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TaskItem:
    """What the relation looks at: the prompt (the task as the model saw it) and the answer."""

    prompt: str
    answer: str


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def content_tokens(text: str) -> set[str]:
    """Case-folded words and identifiers of ``text`` minus filler words (template words are removed per batch)."""
    return {t for t in _WORD.findall(_norm(text)) if t not in _FILLER}


def _answer_key(answer: str) -> str | None:
    norm = " ".join(_norm(answer).split()).strip(" `'\".")
    if len(norm) < _MIN_ANSWER:
        return None
    return hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


@dataclass
class _Prepared:
    prompt_sets: list[frozenset[str]]
    full_sets: list[frozenset[str]]
    answer_keys: list[str | None]


def _prepare(items: Sequence[TaskItem]) -> _Prepared:
    prompts = [content_tokens(i.prompt) for i in items]
    answers = [content_tokens(i.answer) for i in items]
    df: Counter[str] = Counter()
    for p, a in zip(prompts, answers, strict=True):
        df.update(p | a)
    limit = max(_TEMPLATE_MIN, _TEMPLATE_SHARE * len(items))
    template = {t for t, n in df.items() if n > limit}
    return _Prepared(
        prompt_sets=[frozenset(p - template) for p in prompts],
        full_sets=[frozenset((p | a) - template) for p, a in zip(prompts, answers, strict=True)],
        answer_keys=[_answer_key(i.answer) for i in items],
    )


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def _overlap(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _identical_sets(prep: _Prepared) -> dict[frozenset[str], list[int]]:
    by_set: dict[frozenset[str], list[int]] = defaultdict(list)
    for i, s in enumerate(prep.full_sets):
        if s:
            by_set[s].append(i)
    return by_set


def _candidate_groups(prep: _Prepared, threshold: float) -> list[list[int]]:
    """Groups of item indices that may be similar: equal answer keys, and shared LSH buckets of the token sets
    (identical token sets collapse onto one representative first)."""
    groups: list[list[int]] = []
    by_answer: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(prep.answer_keys):
        if key is not None:
            by_answer[key].append(i)
    groups.extend(g for g in by_answer.values() if len(g) > 1)

    by_set = _identical_sets(prep)
    groups.extend(g for g in by_set.values() if len(g) > 1)
    reps = [g[0] for g in by_set.values()]
    if len(reps) < 2:
        return groups
    texts = [" ".join(sorted(prep.full_sets[i])) for i in reps]
    sig = minhash_signatures(texts, num_perm=_NUM_PERM, k=1, seed=13)
    bands, rows = lsh_bands(_NUM_PERM, threshold)
    mult = (np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    rep_arr = np.asarray(reps, dtype=np.int64)
    for b in range(bands):
        keys = (sig[:, b * rows : (b + 1) * rows] * mult).sum(axis=1, dtype=np.uint64)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        # Runs of equal keys are buckets; only buckets of two or more are candidates.
        starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
        ends = np.concatenate((starts[1:], [len(order)]))
        for start, end in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist(), strict=True):
            groups.append(sorted(rep_arr[order[start:end]].tolist()))
    return groups


def _related(prep: _Prepared, i: int, j: int, threshold: float) -> bool:
    same_answer = prep.answer_keys[i] is not None and prep.answer_keys[i] == prep.answer_keys[j]
    if same_answer and _overlap(prep.prompt_sets[i], prep.prompt_sets[j]) >= 0.5:
        return True
    return _jaccard(prep.full_sets[i], prep.full_sets[j]) >= threshold


def near_pairs(items: Sequence[TaskItem], threshold: float = DEFAULT_THRESHOLD) -> list[tuple[int, int]]:
    """Verified pairs (i < j) of the same task among the candidates (the relation in the module docstring);
    within a candidate group each item is checked against at most the ``_MAX_COMPARE`` items before it."""
    prep = _prepare(items)
    seen: set[tuple[int, int]] = set()
    for group in _candidate_groups(prep, threshold):
        for pos, j in enumerate(group):
            for i in group[max(0, pos - _MAX_COMPARE) : pos]:
                pair = (min(i, j), max(i, j))
                if pair not in seen and _related(prep, pair[0], pair[1], threshold):
                    seen.add(pair)
    return sorted(seen)


def task_clusters(items: Sequence[TaskItem], threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """For each item, its cluster id: the index of the cluster's first item (so ids are input positions)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    prep = _prepare(items)
    uf = _UnionFind(len(items))
    for members in _identical_sets(prep).values():
        for j in members[1:]:
            uf.union(members[0], j)  # the same token set: Jaccard 1
    checked: set[tuple[int, int]] = set()
    full, prompts, keys = prep.full_sets, prep.prompt_sets, prep.answer_keys
    for group in _candidate_groups(prep, threshold):
        # One representative per cluster met in this group; a new item is compared with the last
        # _MAX_COMPARE of them, and becomes one itself when it joined none.
        reps: list[int] = []
        for j in group:
            joined = False
            for i in reversed(reps[-_MAX_COMPARE:]):
                if uf.find(i) == uf.find(j):
                    joined = True
                    break
                pair = (i, j) if i < j else (j, i)
                if pair in checked:  # the same pair meets again in other bands
                    continue
                checked.add(pair)
                # _related, inlined: this loop is the cost of clustering.
                a, b = full[i], full[j]
                inter = len(a & b)
                related = bool(a) and bool(b) and inter >= threshold * (len(a) + len(b) - inter)
                if not related and keys[i] is not None and keys[i] == keys[j]:
                    related = _overlap(prompts[i], prompts[j]) >= 0.5
                if related:
                    uf.union(i, j)
                    joined = True
            if not joined:
                reps.append(j)
    return [uf.find(i) for i in range(len(items))]


@dataclass(frozen=True, slots=True)
class Contamination:
    """How many golden items have a near-duplicate (the same task) in train."""

    golden: int
    contaminated: int
    ids: tuple[str, ...]  # the contaminated golden items' ids, first ones

    @property
    def share(self) -> float:
        return self.contaminated / self.golden if self.golden else 0.0


def _golden_train_pairs(
    golden: Sequence[TaskItem], train: Sequence[TaskItem], threshold: float, *, first_only: bool
) -> dict[int, list[int]]:
    """golden index -> the train indices it is the same task as (just the first when ``first_only``)."""
    items = [*golden, *train]
    n_golden = len(golden)
    prep = _prepare(items)
    out: dict[int, list[int]] = {}
    for group in _candidate_groups(prep, threshold):
        gold = [i for i in group if i < n_golden and not (first_only and i in out)]
        if not gold:
            continue
        trains = [j for j in group if j >= n_golden][: _MAX_COMPARE * 4]
        for i in gold:
            for j in trains:
                if _related(prep, i, j, threshold):
                    found = out.setdefault(i, [])
                    if j - n_golden not in found:
                        found.append(j - n_golden)
                    if first_only:
                        break
    return out


def contamination(
    golden: Sequence[tuple[str, TaskItem]],
    train: Sequence[TaskItem],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    max_ids: int = 50,
) -> Contamination:
    """The share of ``golden`` items (id, item) that are the same task as some ``train`` item."""
    hits = _golden_train_pairs([item for _, item in golden], train, threshold, first_only=True)
    ids = tuple(golden[i][0] for i in sorted(hits))
    return Contamination(golden=len(golden), contaminated=len(hits), ids=ids[:max_ids])


@dataclass(frozen=True, slots=True)
class Disagreement:
    """Trusted golden items whose task (the prompt, reworded or not) is in train with a different answer."""

    matched: int  # golden items with at least one near-duplicate prompt in train
    disagreeing: int  # ... of which some training answer differs from the trusted one
    ids: tuple[str, ...]

    @property
    def share(self) -> float:
        return self.disagreeing / self.matched if self.matched else 0.0


def _same_answer(a: str, b: str) -> bool:
    return " ".join(_norm(a).split()).strip(" `'\".") == " ".join(_norm(b).split()).strip(" `'\".")


def label_disagreement(
    golden: Sequence[tuple[str, TaskItem]],
    train: Sequence[TaskItem],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    max_ids: int = 50,
) -> Disagreement:
    """How often the training answers contradict a trusted golden set on the same tasks: golden and train are
    matched on their prompts alone (the relation's Jaccard rule, answers left out), then answers compared."""
    prompts_only = [TaskItem(item.prompt, "") for _, item in golden]
    pairs = _golden_train_pairs(prompts_only, [TaskItem(t.prompt, "") for t in train], threshold, first_only=False)
    bad = sorted(
        i for i, js in pairs.items() if any(not _same_answer(golden[i][1].answer, train[j].answer) for j in js)
    )
    return Disagreement(matched=len(pairs), disagreeing=len(bad), ids=tuple(golden[i][0] for i in bad)[:max_ids])


def _split_items(path: Path) -> list[tuple[str, TaskItem]]:
    out: list[tuple[str, TaskItem]] = []
    if not path.is_file():
        return out
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            example = json.loads(line)
            messages = example.get("messages", [])
            prompt = next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")
            answer = next((str(m.get("content", "")) for m in messages if m.get("role") == "assistant"), "")
            out.append((str(example.get("id", n)), TaskItem(prompt, answer)))
    return out


def file_contamination(golden: Path, train: Path, threshold: float = DEFAULT_THRESHOLD) -> Contamination:
    """``contamination`` of a golden JSONL file (a snapshot's golden split or a trusted golden file, lines of
    ``{"id", "messages": [user, assistant]}``) against a snapshot's train split."""
    return contamination(_split_items(golden), [item for _, item in _split_items(train)], threshold)


def file_label_disagreement(golden: Path, train: Path, threshold: float = DEFAULT_THRESHOLD) -> Disagreement:
    """``label_disagreement`` of a trusted golden JSONL file against a snapshot's train split."""
    return label_disagreement(_split_items(golden), [item for _, item in _split_items(train)], threshold)
