"""Fuzz: parse_jsonl_line raises RecordError (with a reason) and nothing else; valid records always parse."""

from __future__ import annotations

import json
from typing import Any

from data_factories import record_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subagents.data.errors import RecordError
from subagents.data.schema import ExecutionRecord, parse_jsonl_line

FIELDS = list(record_dict())
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "2025-01-06T09:00:00Z", "2025-01-06", "Z", "\ud800", "x" * 300_000]),
)
JSONISH = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes | str:
    raw: dict[str, Any] = record_dict()
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "retype", "extra", "nest"]))
        name = draw(st.sampled_from(FIELDS))
        if op == "drop":
            raw.pop(name, None)
        elif op == "retype":
            raw[name] = draw(JSONISH)
        elif op == "extra":
            raw[draw(st.text(min_size=1, max_size=8))] = draw(SCALARS)
        else:
            depth = draw(st.integers(1, 3000))
            raw[name] = json.loads("[" * min(depth, 900) + "]" * min(depth, 900)) if depth < 900 else None
            if depth >= 900:
                text = json.dumps(raw)
                return text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    text = json.dumps(raw, allow_nan=True)
    post = draw(st.sampled_from(["none", "truncate", "dupkey", "bytes", "badbytes", "garbage"]))
    if post == "truncate":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if post == "dupkey":
        return text[:-1] + ', "record_id": "again"}'
    if post == "bytes":
        return text.encode("utf-8", "surrogatepass")
    if post == "badbytes":
        data = bytearray(text.encode("utf-8", "surrogatepass"))
        data.insert(draw(st.integers(0, len(data))), draw(st.sampled_from([0xFF, 0xC3, 0x80, 0xED])))
        return bytes(data)
    if post == "garbage":
        return draw(st.binary(max_size=64)) if draw(st.booleans()) else draw(st.text(max_size=64))
    return text


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(mutated_lines())
def test_malformed_lines_only_raise_record_error(data: bytes | str) -> None:
    try:
        rec = parse_jsonl_line(data)
    except RecordError as exc:
        assert exc.reason and "\n" not in exc.reason
    else:
        assert isinstance(rec, ExecutionRecord)


TEXT = st.text(max_size=40)


@st.composite
def valid_records(draw: st.DrawFn) -> dict[str, Any]:
    total = draw(st.integers(0, 50))
    return record_dict(
        record_id=draw(st.from_regex(r"[A-Za-z0-9._:@/-]{1,40}", fullmatch=True)),
        domain=draw(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)),
        task=draw(st.text(min_size=1, max_size=40).filter(lambda s: not any(0xD800 <= ord(c) < 0xE000 for c in s))),
        prompt="p" + draw(TEXT.filter(lambda s: not any(0xD800 <= ord(c) < 0xE000 for c in s))),
        output=draw(TEXT.filter(lambda s: not any(0xD800 <= ord(c) < 0xE000 for c in s))),
        success=draw(st.booleans()),
        tags=draw(st.lists(st.text(min_size=1, max_size=10, alphabet="abc-:"), max_size=4)),
        metrics={"tests_passed": draw(st.integers(0, total)), "tests_total": total, "duration_s": 0.5},
        feedback=draw(st.none() | st.builds(dict, rating=st.integers(1, 5))),
    )


@settings(max_examples=500, deadline=None, database=None)
@given(valid_records(), st.booleans())
def test_valid_records_always_parse(raw: dict[str, Any], as_bytes: bool) -> None:
    text = json.dumps(raw, ensure_ascii=bool(as_bytes))
    rec = parse_jsonl_line(text.encode() if as_bytes else text)
    assert rec.record_id == raw["record_id"] and rec.output == raw["output"]
