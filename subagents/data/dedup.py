"""Exact and near-duplicate detection for curation.

Exact: records are duplicates when their ``content_hash`` (schema.py) is equal.

Near: MinHash over shingles of 3 consecutive tokens (words and punctuation marks of the case-folded text;
word shingles, unlike character ones, keep texts that share only a template such as "Rename the identifier
`x` to y." far apart), banded LSH to find candidate pairs, a signature-agreement pre-check, then the exact
Jaccard similarity of the two shingle sets decides. So LSH only limits the work; a pair is reported only if
its true Jaccard similarity is >= the threshold.

Invariants:
- Greedy in input order: item ``i`` is a near duplicate of the first earlier *kept* item it is similar to; an
  item similar only to dropped items is kept. The same input gives the same answer in every process (the
  hash functions are seeded, never Python's randomised ``hash``).
- Memory is bounded: signatures are computed over chunks of at most ``_BUDGET`` hash values.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["exact_duplicates", "jaccard", "lsh_bands", "minhash_signatures", "near_duplicates", "shingles"]

T = TypeVar("T", bound=Hashable)

_BUDGET = 4_000_000  # uint64 values per signature chunk (32 MB)
_MARGIN = 0.15  # how far below the threshold a signature estimate may fall and still be checked exactly

U64 = npt.NDArray[np.uint64]


def exact_duplicates(keys: Iterable[T]) -> list[int | None]:
    """For each key, the index of the first earlier equal key, or None if it is the first."""
    first: dict[T, int] = {}
    out: list[int | None] = []
    for i, key in enumerate(keys):
        j = first.setdefault(key, i)
        out.append(None if j == i else j)
    return out


def _mix(x: U64) -> U64:
    """splitmix64 finaliser: spreads the bits of shingle codes before the multiply-shift hashes."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_TOKEN = re.compile(r"\w+|[^\w\s]")


class _TokenHasher:
    """Stable 64-bit token hashes (blake2b), memoised for one call: vocabularies of code text are small."""

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def __call__(self, text: str) -> list[int]:
        cache = self._cache
        out = []
        for token in _TOKEN.findall(text.casefold()):
            h = cache.get(token)
            if h is None:
                h = int.from_bytes(hashlib.blake2b(token.encode("utf-8", "replace"), digest_size=8).digest())
                h = h or 1  # 0 pads short documents
                cache[token] = h
            out.append(h)
        return out


def _codes(docs: Sequence[list[int]], k: int) -> tuple[U64, npt.NDArray[np.int64]]:
    """Mixed shingle codes (k consecutive tokens) of all docs, concatenated, and each doc's start offset."""
    docs = [d if len(d) >= k else d + [0] * (k - len(d)) for d in docs]
    lens = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    tokens = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.uint64, count=int(lens.sum()))
    n_sh = lens - k + 1
    doc_start = np.concatenate(([0], np.cumsum(lens)[:-1]))
    sh_start = np.concatenate(([0], np.cumsum(n_sh)[:-1]))
    total = int(n_sh.sum())
    pos = np.arange(total, dtype=np.int64) - np.repeat(sh_start, n_sh) + np.repeat(doc_start, n_sh)
    codes = np.zeros(total, dtype=np.uint64)
    for j in range(k):
        # Position-dependent odd multipliers make (a, b, c) and (c, b, a) different shingles.
        codes += tokens[pos + j] * np.uint64((0x9E3779B97F4A7C15 * (j + 1)) & 0xFFFFFFFFFFFFFFFF | 1)
    return _mix(codes), sh_start.astype(np.int64)


def shingles(text: str, k: int = 3) -> U64:
    """Sorted unique shingle codes of one text (what Jaccard similarity is computed over)."""
    codes, _ = _codes([_TokenHasher()(text)], k)
    return np.unique(codes)


def jaccard(a: U64, b: U64) -> float:
    """Jaccard similarity of two sorted unique code arrays."""
    inter = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - inter
    return inter / union if union else 1.0


def _hash_params(num_perm: int, seed: int) -> tuple[U64, U64]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signatures(texts: Sequence[str], *, num_perm: int = 128, k: int = 3, seed: int = 0) -> U64:
    """MinHash signatures, shape (len(texts), num_perm); hash i is (a_i * x + b_i) mod 2^64, top 32 bits."""
    a, b = _hash_params(num_perm, seed)
    out = np.empty((len(texts), num_perm), dtype=np.uint64)
    hasher = _TokenHasher()
    docs = [hasher(t) for t in texts]
    i = 0
    while i < len(docs):
        # Take docs while the chunk's shingles fit the budget (at least one doc per chunk).
        j, size = i, 0
        while j < len(docs) and (j == i or size + len(docs[j]) <= _BUDGET // 16):
            size += max(len(docs[j]), k)
            j += 1
        codes, starts = _codes(docs[i:j], k)
        step = max(1, min(num_perm, _BUDGET // max(codes.size, 1)))
        for p in range(0, num_perm, step):
            hashed = (codes[:, None] * a[None, p : p + step] + b[None, p : p + step]) >> np.uint64(32)
            out[i:j, p : p + step] = np.minimum.reduceat(hashed, starts, axis=0)
        i = j
    return out


def lsh_bands(num_perm: int, threshold: float, min_recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows) with bands * rows == num_perm: the most selective banding that still makes a pair of
    Jaccard similarity ``threshold`` a candidate with probability >= ``min_recall``."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= min_recall:
            best = (bands, rows)
    return best


def near_duplicates(
    texts: Sequence[str], threshold: float = 0.85, *, num_perm: int = 128, k: int = 3, seed: int = 0
) -> list[int | None]:
    """For each text, the index of the earlier kept text it near-duplicates (Jaccard >= threshold), or None."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    n = len(texts)
    result: list[int | None] = [None] * n
    if n < 2:
        return result
    sig = minhash_signatures(texts, num_perm=num_perm, k=k, seed=seed)
    bands, rows = lsh_bands(num_perm, threshold)
    mult = _mix(np.arange(1, rows + 1, dtype=np.uint64))
    # One 64-bit key per (doc, band); equal keys put two docs in the same bucket.
    keys = np.stack(
        [(sig[:, b * rows : (b + 1) * rows] * mult).sum(axis=1, dtype=np.uint64) for b in range(bands)], axis=1
    )
    shared: list[set[int]] = []
    involved = np.zeros(n, dtype=bool)
    for band in range(bands):
        values, counts = np.unique(keys[:, band], return_counts=True)
        multi = values[counts > 1]
        involved |= np.isin(keys[:, band], multi)
        shared.append(set(multi.tolist()))
    floor_agree = int((threshold - _MARGIN) * num_perm)
    buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    cache: dict[int, U64] = {}

    def shingle_set(idx: int) -> U64:
        if idx not in cache:
            cache[idx] = shingles(texts[idx], k)
        return cache[idx]

    for i in np.flatnonzero(involved).tolist():
        row = keys[i].tolist()
        candidates: list[int] = []
        for band, key in enumerate(row):
            if key in shared[band]:
                candidates.extend(buckets[band].get(key, ()))
        dup_of = None
        if candidates:
            # The signature agreement estimates Jaccard (std <= 0.5/sqrt(num_perm)); only pairs it does not
            # rule out (a margin of several std) pay for the exact computation.
            cand = np.unique(np.fromiter(candidates, dtype=np.int64, count=len(candidates)))
            agree = np.count_nonzero(sig[cand] == sig[i], axis=1)
            cand = cand[agree >= floor_agree]
            dup_of = next((j for j in cand.tolist() if jaccard(shingle_set(i), shingle_set(j)) >= threshold), None)
        if dup_of is not None:
            result[i] = dup_of
            continue
        for band, key in enumerate(row):
            if key in shared[band]:
                buckets[band].setdefault(key, []).append(i)
    return result
