from __future__ import annotations

import re
from collections import Counter

from subagents.data.errors import RecordError
from subagents.data.injection import screen
from subagents.data.samples import DOMAINS, STYLES, VOCABULARY, convert, generate_demo_records, split_words
from subagents.data.schema import parse_jsonl_line
from subagents.data.scrub import scrub

PROMPT = re.compile(r"^Rename the identifier `([A-Za-z_-]+)` to (\S+)\.$")


def test_convert_matches_the_spec_table() -> None:
    words = ["user", "id", "map"]
    assert [convert(words, s) for s in STYLES] == [
        "user_id_map",
        "userIdMap",
        "UserIdMap",
        "user-id-map",
        "USER_ID_MAP",
    ]
    for style in STYLES:
        assert split_words(convert(words, style)) == words
    assert len(VOCABULARY) >= 55 and len(set(VOCABULARY)) == len(VOCABULARY)


def test_deterministic_per_seed() -> None:
    assert generate_demo_records(300, seed=4) == generate_demo_records(300, seed=4)
    assert generate_demo_records(300, seed=4) != generate_demo_records(300, seed=5)


def test_records_are_realistic_and_correct() -> None:
    lines = generate_demo_records(3000, seed=2, malformed=0.02)
    assert len(lines) == 3000
    good, bad = [], 0
    for line in lines:
        try:
            good.append(parse_jsonl_line(line))
        except RecordError:
            bad += 1
    assert 20 <= bad <= 120
    assert {r.domain for r in good} == set(DOMAINS)
    failures = [r for r in good if not r.success]
    assert 0.15 < len(failures) / len(good) < 0.35
    secrets = injections = 0
    for r in good:
        assert r.applied_changes.startswith("--- a/") and r.error_context and r.code_context
        assert r.metrics.tests_total and r.metrics.tests_passed is not None
        m = PROMPT.match(r.prompt.split("\n")[0])
        if m is None:  # near-duplicate variants are re-cased
            continue
        source, style = m.groups()
        assert STYLES[style] == r.domain
        expected = convert(split_words(source), style)
        if r.success:
            assert r.output == expected and r.metrics.tests_passed == r.metrics.tests_total
        else:
            assert r.output != expected and r.metrics.tests_passed < r.metrics.tests_total
        secrets += bool(scrub(r.code_context).counts or scrub(r.prompt).counts)
        injections += screen(r.code_context) is not None
    assert 0.015 < secrets / len(good) < 0.05
    assert 0.004 < injections / len(good) < 0.02
    ids = Counter(r.record_id for r in good)
    assert any(c > 1 for c in ids.values())  # re-deliveries
    assert sum(r.feedback is not None for r in good) > 0.1 * len(good)
