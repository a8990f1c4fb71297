from __future__ import annotations

import random
from collections import Counter

import pytest

from subagents.data.split import Split, assign_split, split_key


def test_split_key_normalises_case_and_spacing() -> None:
    assert split_key("Rename `userId`  to snake_case.") == split_key("rename `userid` to SNAKE_CASE.")
    assert split_key("a") != split_key("b")


def test_fractions_are_respected_roughly() -> None:
    keys = [split_key(f"prompt {i}") for i in range(20_000)]
    counts = Counter(assign_split(k, eval_fraction=0.1, golden_fraction=0.15) for k in keys)
    assert abs(counts[Split.GOLDEN] / 20_000 - 0.15) < 0.015
    assert abs(counts[Split.EVAL] / 20_000 - 0.10) < 0.015


def test_assignment_does_not_depend_on_the_batch() -> None:
    prompts = [f"task {i}" for i in range(2000)]
    alone = {p: assign_split(split_key(p)) for p in prompts}
    rng = random.Random(5)
    shuffled = prompts[:]
    rng.shuffle(shuffled)
    assert {p: assign_split(split_key(p)) for p in shuffled} == alone


@pytest.mark.parametrize(("eval_fraction", "golden_fraction"), [(-0.1, 0.1), (0.5, 0.5), (0.2, -0.01)])
def test_bad_fractions_are_refused(eval_fraction: float, golden_fraction: float) -> None:
    with pytest.raises(ValueError):
        assign_split("0" * 64, eval_fraction=eval_fraction, golden_fraction=golden_fraction)
