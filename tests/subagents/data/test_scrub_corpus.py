"""The scrubber against the run-time generated corpus (tests/helpers/secret_corpus.py): the issue's targets.

A different seed from bench/bench_scrub.py's default, so the test does not only re-check the values the rules
were looked at against.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from subagents.data.curate import CurationConfig, curate
from subagents.data.detect import find
from subagents.data.schema import parse_record
from subagents.data.scrub import scrub
from subagents.data.snapshot import SPLIT_FILES, write_snapshot
from tests.helpers.secret_corpus import FIELDS, KINDS, Sample, generate, leaked, record_dicts

SEED = 4242


@pytest.fixture(scope="module")
def corpus() -> list[Sample]:
    return generate(SEED, per_kind=30, lookalikes=1000)


def test_corpus_is_big_and_puts_every_kind_in_every_field(corpus: list[Sample]) -> None:
    planted = [(s.field, p.kind) for s in corpus for p in s.secrets]
    assert len(KINDS) >= 60 and len(planted) >= 2000
    assert sum(len(s.lookalikes) for s in corpus) >= 1000
    assert {kind for _, kind in planted} == set(KINDS)
    per_kind_fields: dict[str, set[str]] = {}
    for field, kind in planted:
        per_kind_fields.setdefault(kind, set()).add(field)
    assert all(fields == set(FIELDS) for fields in per_kind_fields.values())


def test_recall_precision_and_look_alikes_meet_the_targets(corpus: list[Sample]) -> None:
    total, caught = Counter[str](), Counter[str]()
    lookalikes = damaged = 0
    for sample in corpus:
        out = scrub(sample.text).text
        for planted in sample.secrets:
            total[planted.kind] += 1
            caught[planted.kind] += not leaked(sample.text, out, planted.value)
        for keep in sample.lookalikes:
            lookalikes += 1
            damaged += keep not in out
    assert sum(caught.values()) / sum(total.values()) >= 0.995
    assert all(caught[k] / total[k] >= 0.97 for k in total), {
        k: caught[k] / total[k] for k in total if caught[k] < total[k]
    }
    assert damaged / lookalikes <= 0.01


def test_scrubbed_text_has_no_findings_left(corpus: list[Sample]) -> None:
    """Idempotent, and what the snapshot's final pass runs finds nothing in scrubbed text."""
    for sample in corpus[:800]:
        once = scrub(sample.text)
        assert find(once.text) == [], once.text
        assert scrub(once.text).text == once.text


def test_no_planted_value_reaches_a_snapshot(corpus: list[Sample], tmp_path: Path) -> None:
    records = [parse_record(r) for r in record_dicts(corpus[:1200])]
    result = curate(records, CurationConfig(golden_fraction=0.2, eval_fraction=0.1))
    assert len(result.train) + len(result.eval) + len(result.golden) == len(records)
    write_snapshot(result, tmp_path / "snap", source={})
    shipped = "\n".join((tmp_path / "snap" / name).read_text(encoding="utf-8") for name in SPLIT_FILES.values())
    text = json.dumps(shipped)  # the files hold JSON-escaped text; compare like with like
    for sample in corpus[:1200]:
        if sample.field in ("prompt", "output", "tests"):
            for planted in sample.secrets:
                assert json.dumps(planted.value)[1:-1] not in text, planted
