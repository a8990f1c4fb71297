"""Splits by task cluster: a reworded retry of the same task with the same answer never straddles golden/train."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from data_factories import record

from subagents.data.clusters import TaskItem, contamination, file_contamination, task_clusters
from subagents.data.curate import CurationConfig, curate
from subagents.data.schema import ExecutionRecord
from subagents.data.snapshot import write_snapshot
from subagents.data.split import Split, assign_split, split_key

T0 = datetime(2025, 1, 1, tzinfo=UTC)
_WORDS = ("user", "name", "cache", "size", "order", "total", "retry", "count", "token", "path", "queue", "index")
_PHRASINGS = (
    "Rename the function {src} to snake_case.",
    "Please rename {src} to snake_case, keep the behaviour.",
    "Could you convert `{src}` into snake_case?",
    "{src} should be snake_case; rename it please.",
    "The linter complains about {src}. Rename it to snake_case without changing what it does.",
)
_DOMAINS = ("python-naming", "refactoring", "lint-fixes")


def _identifier(rng: random.Random, i: int) -> tuple[str, str]:
    a, b = rng.sample(_WORDS, 2)
    verb = rng.choice(("get", "set", "load", "build"))
    return f"{verb}{a.title()}{b.title()}{i}", f"{verb}_{a}_{b}{i}"


def planted_records(n_tasks: int = 300, seed: int = 0) -> list[ExecutionRecord]:
    """Each task 2-4 times, reworded, in different domains, with the same answer (the issue's leak)."""
    rng = random.Random(seed)
    out = []
    for i in range(n_tasks):
        src, answer = _identifier(rng, i)
        for v, phrasing in enumerate(rng.sample(_PHRASINGS, rng.randint(2, 4))):
            out.append(
                record(
                    record_id=f"t{i}-v{v}",
                    timestamp=(T0 + timedelta(minutes=len(out))).isoformat(),
                    domain=rng.choice(_DOMAINS),
                    task=f"Fix the naming lint error for {src}",
                    prompt=phrasing.format(src=src),
                    output=answer,
                )
            )
    return out


def test_the_issues_example_is_one_task_and_other_tasks_are_not() -> None:
    items = [
        TaskItem("Rename the function getUserName0 to snake_case.", "get_user_name0"),
        TaskItem("Please rename getUserName0 to snake_case, keep the behaviour.", "get_user_name0"),
        TaskItem("Rename the function getUserName0 to camelCase.", "getUserName0"),  # another task
        TaskItem("Rename the function getCacheSize1 to snake_case.", "get_cache_size1"),  # another task
    ]
    clusters = task_clusters(items)
    assert clusters[0] == clusters[1]
    assert len({clusters[0], clusters[2], clusters[3]}) == 3


def test_no_golden_item_has_a_near_duplicate_in_train() -> None:
    records = planted_records()
    cfg = CurationConfig(golden_fraction=0.2, eval_fraction=0.1)
    result = curate(records, cfg)
    by_id = {r.record_id: r for r in records}

    def item(example_record_id: str) -> TaskItem:
        r = by_id[example_record_id]
        return TaskItem(r.prompt, r.output)

    golden = [(e.record_id, item(e.record_id)) for e in result.golden]
    train = [item(e.record_id) for e in result.train]
    assert len(golden) > 50 and len(train) > 200
    assert contamination(golden, train).contaminated == 0
    # Every reworded variant of a task is in one split.
    task_split: dict[str, set[str]] = {}
    for split in Split:
        for e in result.split(split):
            task_split.setdefault(e.record_id.split("-")[0], set()).add(split.value)
    assert all(len(s) == 1 for s in task_split.values())

    # The test has teeth: splitting by the prompt string alone (the old rule) leaks most golden tasks.
    old = {r.record_id: assign_split(split_key(r.prompt), eval_fraction=0.1, golden_fraction=0.2) for r in records}
    old_golden = [(r.record_id, TaskItem(r.prompt, r.output)) for r in records if old[r.record_id] is Split.GOLDEN]
    old_train = [TaskItem(r.prompt, r.output) for r in records if old[r.record_id] is Split.TRAIN]
    assert contamination(old_golden, old_train).share > 0.4


def test_a_golden_cluster_stays_golden_as_records_arrive() -> None:
    """Append-only growth (the store) only merges clusters; with the previous golden keys passed back, a golden
    task never leaves golden, and the golden share stays near the configured fraction."""
    records = planted_records(200, seed=3)
    cfg = CurationConfig(golden_fraction=0.2, eval_fraction=0.1)
    golden_before: set[str] = set()
    frozen: set[str] = set()
    for n in (150, 300, 450, len(records)):
        result = curate(records[:n], cfg, frozen_golden=frozen)
        golden_now = {e.record_id for e in result.golden}
        assert golden_before <= golden_now
        golden_before = golden_now
        by_id = {r.record_id: r for r in records}
        frozen |= {split_key(by_id[e.record_id].prompt) for e in result.golden}
    fresh = curate(records, cfg)
    share = len(fresh.golden) / (len(fresh.train) + len(fresh.eval) + len(fresh.golden))
    assert 0.1 < share < 0.3, share


def test_contamination_of_snapshot_files(tmp_path: Path) -> None:
    records = planted_records(120, seed=5)
    result = curate(records, CurationConfig(golden_fraction=0.25, eval_fraction=0.0))
    write_snapshot(result, tmp_path / "s", source={})
    clean = file_contamination(tmp_path / "s" / "golden.jsonl", tmp_path / "s" / "train.jsonl")
    assert clean.golden == len(result.golden) and clean.contaminated == 0
    # A trusted golden file that repeats training tasks, reworded, is measured as contaminated.
    trusted = tmp_path / "trusted.jsonl"
    lines = []
    for e in result.train[:10]:
        prompt = "Please, " + e.messages[0]["content"].lower()
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": e.messages[1]["content"]}]
        lines.append(json.dumps({"id": e.id, "messages": messages}))
    trusted.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dirty = file_contamination(trusted, tmp_path / "s" / "train.jsonl")
    assert dirty.golden == 10 and dirty.contaminated == 10 and dirty.share == 1.0


def test_bad_threshold_is_refused() -> None:
    with pytest.raises(ValueError):
        task_clusters([], threshold=0.0)
    with pytest.raises(ValueError):
        CurationConfig(cluster_threshold=1.5)
