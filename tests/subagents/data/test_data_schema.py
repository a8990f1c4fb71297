from __future__ import annotations

import json

import pytest
from data_factories import line, record, record_dict

from subagents.data.errors import DataError, RecordError
from subagents.data.schema import (
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    MAX_TEXT_BYTES,
    ExecutionRecord,
    content_hash,
    parse_jsonl_line,
    parse_record,
)


def test_valid_record_parses_from_str_and_bytes() -> None:
    rec = parse_jsonl_line(line())
    assert isinstance(rec, ExecutionRecord)
    assert rec.record_id == "rec-0001" and rec.success is True and rec.metrics.tests_total == 3
    assert rec.timestamp.utcoffset() is not None
    assert parse_jsonl_line(line().encode()) == rec


def test_record_is_frozen() -> None:
    rec = record()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError for frozen models
        rec.output = "x"  # type: ignore[misc]


def test_record_error_is_a_value_error_and_a_pilot_error() -> None:
    assert issubclass(RecordError, ValueError) and issubclass(RecordError, DataError)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"record_id": ""}, "record_id"),
        ({"record_id": "has space"}, "record_id"),
        ({"record_id": "x" * 201}, "record_id"),
        ({"domain": "Python"}, "domain"),
        ({"domain": "a" * 65}, "domain"),
        ({"timestamp": "2025-01-06T09:00:00"}, "timestamp"),
        ({"success": "yes"}, "success"),
        ({"success": 1}, "success"),
        ({"metrics": {"tests_passed": -1}}, "metrics.tests_passed"),
        ({"metrics": {"tests_passed": "3"}}, "metrics.tests_passed"),
        ({"metrics": {"duration_s": -0.5}}, "metrics.duration_s"),
        ({"feedback": {"rating": 6}}, "feedback.rating"),
        ({"feedback": {"rating": 0}}, "feedback.rating"),
        ({"schema_version": 2}, "schema_version"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"tags": ["ok", 3]}, "tags.1"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"output": "x" * (MAX_TEXT_BYTES + 1)}, "output"),
        ({"output": "é" * (MAX_TEXT_BYTES // 2 + 1)}, "output"),
        ({"output": "bad \ud800 surrogate"}, "output"),
    ],
)
def test_invalid_fields_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(RecordError) as exc:
        parse_record(record_dict(**overrides))
    assert exc.value.reason.startswith(field), exc.value.reason
    assert "\n" not in exc.value.reason


def test_missing_field_is_named() -> None:
    raw = record_dict()
    del raw["prompt"]
    with pytest.raises(RecordError, match=r"^prompt: Field required"):
        parse_record(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe{}", "not valid UTF-8"),
        ("{", "invalid JSON"),
        ("", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"a": NaN}', "invalid JSON"),
        (line()[:-1] + ', "output": "other"}', "duplicate key"),
        ("[" * 5000 + "]" * 5000, "nested deeper"),
        ('{"metrics": ' + "[" * (MAX_JSON_DEPTH + 2) + "]" * (MAX_JSON_DEPTH + 2) + "}", "nested deeper"),
        ('"' + "x" * (MAX_RECORD_BYTES + 1) + '"', "over the"),
        (b'"' + b"x" * (MAX_RECORD_BYTES + 1) + b'"', "over the"),
        (json.dumps(record_dict(output="\\ud800")).replace("\\\\ud800", "\\ud800"), "output: "),
    ],
)
def test_bad_lines_raise_record_error(raw: bytes | str, reason: str) -> None:
    with pytest.raises(RecordError) as exc:
        parse_jsonl_line(raw)
    assert reason in exc.value.reason


def test_duplicate_key_in_nested_object() -> None:
    text = line().replace('"tests_passed": 3', '"tests_passed": 3, "tests_passed": 2')
    with pytest.raises(RecordError, match="tests_passed: duplicate key"):
        parse_jsonl_line(text)


def test_whole_record_size_limit() -> None:
    big = "x" * (MAX_TEXT_BYTES - 10)
    raw = record_dict(task=big, code_context=big, error_context=big, prompt=big, output=big)
    with pytest.raises(RecordError, match="record: text is"):
        parse_record(raw)


def test_content_hash_normalises_whitespace_but_keeps_case() -> None:
    a = record(prompt="Rename the identifier `userIdMap` to snake_case.")
    b = record(prompt="  Rename the identifier\n`userIdMap`   to snake_case.  ", record_id="other")
    c = record(prompt="rename the identifier `useridmap` to snake_case.")
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(c)
    assert content_hash(a) != content_hash(record(domain="js-naming"))
    assert len(content_hash(a)) == 64


def test_content_hash_fields_do_not_run_together() -> None:
    assert content_hash(record(task="ab", prompt="c")) != content_hash(record(task="a", prompt="bc"))
