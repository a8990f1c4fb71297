"""No silent truncation: how many examples the configured lengths cut, and the length that would fit.

Two limits cut text without an error: the training job's ``seq_len`` (jobs/finetune_lora.py keeps the answer
and drops the start of the prompt; an answer longer than ``seq_len`` is itself cut) and the generation job's
``max_new_tokens`` (an answer that needs more tokens is cut short and scored wrong). The daemon has no
tokenizer, so lengths are estimated from characters (``CHARS_PER_TOKEN``, conservative for code and English)
unless a ``count`` function (a real tokenizer's) is given.

Invariants:
- Pure functions over plain values and snapshot files; the reports are frozen dataclasses with ``to_dict``.
- ``proposed`` is the smallest multiple of ``_ROUND`` tokens that keeps the cut share at or under
  ``max_share``, with ``_HEADROOM`` for the estimate's error; it never proposes less than the current limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "GenerationLengthReport",
    "TruncationReport",
    "estimate_tokens",
    "generation_report",
    "truncation_report",
]

CHARS_PER_TOKEN = 4.0
TEMPLATE_TOKENS = 8  # chat template around one user/assistant pair (training.count_tokens uses the same)
_ROUND = 64
_HEADROOM = 1.15


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _proposal(lengths: Sequence[int], limit: int, max_share: float) -> int:
    if not lengths:
        return limit
    ordered = sorted(lengths)
    # The length that at most max_share of the examples exceed.
    keep = max(0, math.ceil(len(ordered) * (1.0 - max_share)) - 1)
    need = ordered[keep] * _HEADROOM
    return max(limit, int(math.ceil(need / _ROUND) * _ROUND))


@dataclass(frozen=True, slots=True)
class TruncationReport:
    """Training examples against ``seq_len``: ``over`` are longer (estimated); of those, ``answer_cut`` lose part
    of the answer (the answer alone is longer than seq_len), the rest lose the start of their prompt."""

    examples: int
    seq_len: int
    over: int
    prompt_cut: int
    answer_cut: int
    longest: int
    proposed_seq_len: int
    max_share: float

    @property
    def share(self) -> float:
        return self.over / self.examples if self.examples else 0.0

    @property
    def too_many(self) -> bool:
        return self.share > self.max_share

    def message(self) -> str:
        if not self.over:
            return f"seq_len {self.seq_len} fits every training example (longest ~{self.longest} tokens)."
        text = (
            f"seq_len {self.seq_len} cuts {self.over} of {self.examples} training examples ({self.share:.1%}): "
            f"{self.prompt_cut} lose the start of the prompt, {self.answer_cut} lose part of the answer "
            f"(longest ~{self.longest} tokens, estimated)."
        )
        if self.too_many:
            text += (
                f" That is over the {self.max_share:.0%} allowed (training.max_truncated_share): set "
                f"training.seq_len = {self.proposed_seq_len} to fit all but {self.max_share:.0%}."
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "share": round(self.share, 6), "too_many": self.too_many, "message": self.message()}


def _messages(line: dict[str, Any]) -> tuple[str, str]:
    messages = line.get("messages", [])
    prompt = "".join(str(m.get("content", "")) for m in messages if m.get("role") != "assistant")
    answer = "".join(str(m.get("content", "")) for m in messages if m.get("role") == "assistant")
    return prompt, answer


def truncation_report(
    jsonl: Path, seq_len: int, *, max_share: float = 0.02, count: Callable[[str], int] = estimate_tokens
) -> TruncationReport:
    """How many examples of a snapshot split ``seq_len`` cuts, and the seq_len that would fit."""
    lengths: list[int] = []
    over = prompt_cut = answer_cut = 0
    with Path(jsonl).open(encoding="utf-8") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            prompt, answer = _messages(json.loads(raw))
            p, a = count(prompt), count(answer)
            total = p + a + TEMPLATE_TOKENS
            lengths.append(total)
            if total > seq_len:
                over += 1
                if a > seq_len:
                    answer_cut += 1
                else:
                    prompt_cut += 1
    return TruncationReport(
        examples=len(lengths),
        seq_len=seq_len,
        over=over,
        prompt_cut=prompt_cut,
        answer_cut=answer_cut,
        longest=max(lengths, default=0),
        proposed_seq_len=_proposal(lengths, seq_len, max_share),
        max_share=max_share,
    )


@dataclass(frozen=True, slots=True)
class GenerationLengthReport:
    """Golden references against ``max_new_tokens``: ``over`` need more tokens than the generation allows (their
    answers will be cut and scored wrong); ``hits`` is how many predictions stopped at the limit, when known."""

    items: int
    max_new_tokens: int
    over: int
    hits: int | None
    proposed_max_new_tokens: int
    max_share: float

    @property
    def share(self) -> float:
        worst = max(self.over, self.hits or 0)
        return worst / self.items if self.items else 0.0

    @property
    def too_many(self) -> bool:
        return self.share > self.max_share

    def message(self) -> str:
        hit = "" if self.hits is None else f"; {self.hits} predictions stopped at the limit"
        text = (
            f"max_new_tokens {self.max_new_tokens}: {self.over} of {self.items} golden answers need more "
            f"(estimated){hit}."
        )
        if self.too_many:
            text += (
                f" Over the {self.max_share:.0%} allowed (evaluation.max_truncated_share): answers cut short score "
                f"as wrong; set evaluation.max_new_tokens = {self.proposed_max_new_tokens}."
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "share": round(self.share, 6), "too_many": self.too_many, "message": self.message()}


def generation_report(
    references: Sequence[str],
    max_new_tokens: int,
    *,
    hits: Sequence[bool] | None = None,
    max_share: float = 0.02,
    count: Callable[[str], int] = estimate_tokens,
) -> GenerationLengthReport:
    """References (the golden answers) against the generation limit; ``hits[i]`` True when prediction ``i``
    stopped because it reached ``max_new_tokens`` (no end-of-sequence), if the generation job reports it."""
    lengths = [count(r) + 1 for r in references]  # + the end-of-sequence token
    return GenerationLengthReport(
        items=len(lengths),
        max_new_tokens=max_new_tokens,
        over=sum(n > max_new_tokens for n in lengths),
        hits=None if hits is None else sum(bool(h) for h in hits),
        proposed_max_new_tokens=_proposal(lengths, max_new_tokens, max_share),
        max_share=max_share,
    )
