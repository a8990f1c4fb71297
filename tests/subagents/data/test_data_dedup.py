from __future__ import annotations

import random

import numpy as np
import pytest

from subagents.data.dedup import (
    exact_duplicates,
    jaccard,
    lsh_bands,
    minhash_signatures,
    near_duplicates,
    shingles,
)

BASE = "Rename the identifier `userIdMap` to snake_case.\nuser_id_map"


def test_exact_duplicates_point_at_the_first_occurrence() -> None:
    assert exact_duplicates(["a", "b", "a", "c", "b", "a"]) == [None, None, 0, None, 1, 0]


def test_jaccard_of_shingle_sets() -> None:
    assert jaccard(shingles(BASE), shingles(BASE)) == 1.0
    assert jaccard(shingles(BASE), shingles(BASE.upper().replace("\n", "  \n "))) == 1.0  # normalised
    other = "Rename the identifier `orderCount` to kebab-case.\norder-count"
    assert jaccard(shingles(BASE), shingles(other)) < 0.5


def test_signatures_are_deterministic_and_estimate_jaccard() -> None:
    rng = random.Random(3)
    words = [f"w{i}" for i in range(400)]
    a = " ".join(rng.choice(words) for _ in range(300))
    b = " ".join(a.split()[:240] + [rng.choice(words) for _ in range(60)])
    sig = minhash_signatures([a, b], num_perm=256)
    assert np.array_equal(sig, minhash_signatures([a, b], num_perm=256))
    estimate = float(np.mean(sig[0] == sig[1]))
    assert abs(estimate - jaccard(shingles(a), shingles(b))) < 0.12


def test_lsh_bands_meet_the_recall_target() -> None:
    for threshold in (0.5, 0.7, 0.85, 0.95):
        bands, rows = lsh_bands(128, threshold)
        assert bands * rows == 128
        assert 1 - (1 - threshold**rows) ** bands >= 0.99


def test_near_duplicates_are_found_and_distinct_texts_kept() -> None:
    texts = [
        BASE,
        "Rename the identifier `orderCount` to kebab-case.\norder-count",
        "RENAME the identifier `useridmap` to snake_case.\nuser_id_map",  # near dup of 0
        "Rename the identifier `userIdMap` to camelCase.\nuserIdMap",
        BASE,  # exact copy: also a near dup
    ]
    assert near_duplicates(texts, 0.85) == [None, None, 0, None, 0]


def test_threshold_is_respected_exactly() -> None:
    rng = random.Random(7)
    vocab = [f"t{i}" for i in range(5000)]
    base = [rng.choice(vocab) for _ in range(200)]
    texts = [" ".join(base)]
    for keep in (196, 170, 120):  # roughly J 0.96, 0.74, 0.43 against the base
        texts.append(" ".join(base[:keep] + [rng.choice(vocab) for _ in range(200 - keep)]))
    result = near_duplicates(texts, 0.9)
    for i, dup in enumerate(result[1:], start=1):
        j = jaccard(shingles(texts[0]), shingles(texts[i]))
        assert (dup == 0) == (j >= 0.9), (i, j)


def test_greedy_keeps_chains_anchored_to_kept_items() -> None:
    # b is similar to a (dropped), c is similar to b only: c is kept because b was dropped.
    rng = random.Random(11)
    vocab = [f"v{i}" for i in range(5000)]
    a = [rng.choice(vocab) for _ in range(300)]
    b = a[:285] + [rng.choice(vocab) for _ in range(15)]
    c = b[15:] + [rng.choice(vocab) for _ in range(15)]
    texts = [" ".join(x) for x in (a, b, c)]
    assert jaccard(shingles(texts[0]), shingles(texts[2])) < 0.85
    assert near_duplicates(texts, 0.85) == [None, 0, None]


def test_short_and_empty_texts() -> None:
    assert near_duplicates(["", "", "a", "a b"], 0.85) == [None, 0, None, None]
    assert near_duplicates([], 0.85) == [] and near_duplicates(["x"], 0.85) == [None]
    with pytest.raises(ValueError):
        near_duplicates(["a", "b"], 0.0)
