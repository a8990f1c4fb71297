"""Preference data from what curation kept: KTO examples (desirable / undesirable) and DPO pairs.

Both are built from one split's examples of a ``curate(..., rewards=...)`` result: its successes and the
failed attempts it kept, already screened for injection, deduplicated and scrubbed like supervised data, and
already placed by task cluster (a failure takes its cluster's split), so no task cluster of the golden split
reaches either file. Only the train split is ever written for training.

Line formats (what jobs/preference.py reads; it cannot import this module):
- KTO: ``{"id", "domain", "prompt": [messages before the answer], "completion": str, "label": bool,
  "weight": float, "reward": float}``; label true for a success (desirable), false for a failure.
- DPO: ``{"id", "domain", "prompt": [...], "chosen": str, "rejected": str, "margin": float, "source": str}``;
  ``chosen`` and ``rejected`` are two attempts at one task (one task cluster) whose rewards differ by at least
  ``min_margin``; ``source`` is ``outcome`` (a success against a failure), ``rating`` (same outcome, a human
  rated one or both, differently) or ``reward`` (same outcome, the reward's other terms differ). The prompt is the
  chosen attempt's.

Invariants:
- Deterministic: the same examples in the same order give the same lines.
- A pair never holds two identical answers, and each cluster gives at most ``max_pairs_per_cluster`` pairs
  (its best attempt against its worst ones first), so one much-retried task cannot dominate the data.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from subagents.data.curate import CurationResult, Example
from subagents.data.grpo import GrpoPrompt, grpo_data

__all__ = ["DpoPair", "KtoExample", "PreferenceData", "preference_data"]


@dataclass(frozen=True, slots=True)
class KtoExample:
    id: str
    domain: str
    prompt: tuple[dict[str, str], ...]
    completion: str
    label: bool
    weight: float
    reward: float
    record_id: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "domain": self.domain,
                "prompt": list(self.prompt),
                "completion": self.completion,
                "label": self.label,
                "weight": self.weight,
                "reward": self.reward,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class DpoPair:
    id: str
    domain: str
    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    margin: float
    source: str
    record_ids: tuple[str, str]  # (chosen, rejected)

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "domain": self.domain,
                "prompt": list(self.prompt),
                "chosen": self.chosen,
                "rejected": self.rejected,
                "margin": self.margin,
                "source": self.source,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class PreferenceData:
    kto: list[KtoExample]
    dpo: list[DpoPair]
    figures: dict[str, Any]  # what the supervisor reads: counts, clusters with both outcomes, pair sources, grpo
    grpo: list[GrpoPrompt] = field(default_factory=list)  # prompts with tests (subagents/data/grpo.py)


def _reward(e: Example) -> float:
    if e.reward is None:
        raise ValueError(f"example {e.id} has no reward: curate with rewards= to build preference data")
    return e.reward


def preference_data(
    result: CurationResult, *, split: str = "train", min_margin: float = 0.5, max_pairs_per_cluster: int = 4
) -> PreferenceData:
    """KTO examples and DPO pairs from ``split`` of ``result`` (see the module docstring)."""
    if min_margin <= 0:
        raise ValueError("min_margin must be > 0")
    if max_pairs_per_cluster < 1:
        raise ValueError("max_pairs_per_cluster must be >= 1")
    successes = list(result.split(split))
    failures = list(result.failures.get(split, []))
    kto = [
        KtoExample(
            id=e.id,
            domain=e.domain,
            prompt=e.messages[:-1],
            completion=e.messages[-1]["content"],
            label=e.success,
            weight=e.weight,
            reward=_reward(e),
            record_id=e.record_id,
        )
        for e in (*successes, *failures)
    ]
    clusters: dict[str, list[Example]] = defaultdict(list)
    for e in (*successes, *failures):
        clusters[e.split_key].append(e)
    pairs: list[DpoPair] = []
    sources: dict[str, int] = defaultdict(int)
    both = 0
    for members in clusters.values():
        if any(m.success for m in members) and any(not m.success for m in members):
            both += 1
        pairs.extend(_pairs(members, min_margin, max_pairs_per_cluster))
    for p in pairs:
        sources[p.source] += 1
    figures = {
        "split": split,
        "desirable": sum(1 for k in kto if k.label),
        "undesirable": sum(1 for k in kto if not k.label),
        "clusters": len(clusters),
        "clusters_with_both_outcomes": both,
        "pairs": len(pairs),
        "pair_sources": dict(sorted(sources.items())),
        "min_margin": min_margin,
    }
    grpo, figures["grpo"] = grpo_data(result, split=split)
    return PreferenceData(kto=kto, dpo=pairs, figures=figures, grpo=grpo)


def _pairs(members: Sequence[Example], min_margin: float, cap: int) -> list[DpoPair]:
    ranked = sorted(members, key=lambda e: (-_reward(e), e.id))
    out: list[DpoPair] = []
    seen: set[tuple[str, str]] = set()
    # The best attempt against the worst first, then the next best: the clearest contrasts lead.
    for hi in ranked:
        for lo in reversed(ranked):
            if len(out) >= cap:
                return out
            margin = round(_reward(hi) - _reward(lo), 6)
            chosen, rejected = hi.messages[-1]["content"], lo.messages[-1]["content"]
            if margin < min_margin or chosen == rejected or (chosen, rejected) in seen:
                continue
            seen.add((chosen, rejected))
            if hi.success != lo.success:
                source = "outcome"
            elif hi.rating != lo.rating:  # one or both rated, differently
                source = "rating"
            else:
                source = "reward"
            digest = hashlib.sha256(f"{hi.id}\n{lo.id}".encode()).hexdigest()[:20]
            out.append(
                DpoPair(
                    id=f"pair-{digest}",
                    domain=hi.domain,
                    prompt=hi.messages[:-1],
                    chosen=chosen,
                    rejected=rejected,
                    margin=margin,
                    source=source,
                    record_ids=(hi.record_id, lo.record_id),
                )
            )
    return out
