"""Stable, hash-based train / eval / golden split.

Invariants:
- The split of an example depends only on its *split key* (sha256 of the normalised prompt) and the two
  fractions, never on what else is in the batch or on the order: the same task lands in the same split in
  every snapshot, so a task once in the golden set never shows up in training later.
- The key space [0, 1) is cut as golden = [0, golden_fraction), eval = [golden_fraction, golden_fraction +
  eval_fraction), train = the rest. Changing the fractions moves keys between splits, so they are recorded
  in every manifest; keep them fixed for the life of a champion lineage.
"""

from __future__ import annotations

import hashlib
import unicodedata
from enum import StrEnum

__all__ = ["Split", "assign_split", "split_key"]


class Split(StrEnum):
    TRAIN = "train"
    EVAL = "eval"
    GOLDEN = "golden"


def split_key(prompt: str) -> str:
    """sha256 hex of the normalised prompt: NFKC, case-folded, whitespace collapsed.

    Normalisation is aggressive on purpose: two prompts that differ only in case or spacing are the same task
    and must not straddle the golden/train boundary.
    """
    norm = " ".join(unicodedata.normalize("NFKC", prompt).casefold().split())
    return hashlib.sha256(norm.encode("utf-8", "surrogatepass")).hexdigest()


def assign_split(key: str, *, eval_fraction: float = 0.1, golden_fraction: float = 0.15) -> Split:
    """The split for a split key (a sha256 hex string)."""
    if not (eval_fraction >= 0.0 and golden_fraction >= 0.0 and eval_fraction + golden_fraction < 1.0):
        raise ValueError(f"bad split fractions: eval={eval_fraction} golden={golden_fraction}")
    u = int(key[:16], 16) / 2.0**64
    if u < golden_fraction:
        return Split.GOLDEN
    if u < golden_fraction + eval_fraction:
        return Split.EVAL
    return Split.TRAIN
