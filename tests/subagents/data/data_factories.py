"""Record factories for the data subagent's tests: keyword overrides, no fixture chains."""

from __future__ import annotations

import json
from typing import Any

from subagents.data.samples import STYLES, VOCABULARY, convert
from subagents.data.schema import ExecutionRecord, parse_record

STYLE_NAMES = list(STYLES)


def record_dict(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "record_id": "rec-0001",
        "timestamp": "2025-01-06T09:00:00Z",
        "session_id": "sess-1",
        "domain": "python-naming",
        "tags": ["demo"],
        "task": "Fix the naming lint error in src/app.py",
        "code_context": "userIdMap = {}\n",
        "error_context": "src/app.py:1:1: N816 variable 'userIdMap' in global scope should not be mixedCase",
        "prompt": "Rename the identifier `userIdMap` to snake_case.",
        "output": "user_id_map",
        "applied_changes": "",
        "success": True,
        "metrics": {"tests_passed": 3, "tests_total": 3, "duration_s": 1.5, "tokens": 420},
        "feedback": None,
        "model_version": None,
    }
    base.update(overrides)
    return base


def record(**overrides: Any) -> ExecutionRecord:
    return parse_record(record_dict(**overrides))


def line(**overrides: Any) -> str:
    return json.dumps(record_dict(**overrides))


def attempt_records(n_tasks: int) -> list[ExecutionRecord]:
    """Per task: a failed attempt (the source copied unchanged), then a success; every 5th task also a second,
    slower success that a human rated 2 (a rating pair)."""
    out = []
    for t in range(n_tasks):
        words = [VOCABULARY[t % len(VOCABULARY)], VOCABULARY[(7 * t + 3) % len(VOCABULARY)], f"w{t}"]
        style, source_style = STYLE_NAMES[t % 5], STYLE_NAMES[(t + 2) % 5]
        src = convert(words, source_style)
        prompt = f"Rename the identifier `{src}` to {style}."
        common = {"prompt": prompt, "domain": STYLES[style], "task": f"task {t}"}
        out.append(
            record(
                **common,
                record_id=f"t{t}-fail",
                timestamp=f"2025-01-06T09:{t % 60:02d}:00Z",
                output=src,
                success=False,
                metrics={"tests_passed": 0, "tests_total": 3, "duration_s": 4.0},
            )
        )
        out.append(record(**common, record_id=f"t{t}-ok", timestamp=f"2025-01-06T10:{t % 60:02d}:00Z",
                          output=convert(words, style)))  # fmt: skip
        if t % 5 == 0:
            out.append(
                record(
                    **common,
                    record_id=f"t{t}-ok-slow",
                    timestamp=f"2025-01-06T11:{t % 60:02d}:00Z",
                    output=f"{convert(words, style)} (renamed from {src}; all callers and tests updated too)",
                    code_context="# a slower, rated retry\n",
                    feedback={"rating": 2},
                    metrics={"tests_passed": 3, "tests_total": 3, "duration_s": 20.0},
                )
            )
    return out


def code_attempt_records(n_tasks: int, *, fail_every: int = 2) -> list[ExecutionRecord]:
    """Code tasks whose records carry their tests (GRPO data): per task a success with the right code, and on
    every ``fail_every``-th task first a failed attempt (``tests_failed``: the wrong operator)."""
    out = []
    for t in range(n_tasks):
        words = [VOCABULARY[t % len(VOCABULARY)], VOCABULARY[(7 * t + 3) % len(VOCABULARY)], f"w{t}"]
        name = "_".join(words)
        k = t % 7 + 2
        prompt = f"Write the function `{name}(x)` returning x multiplied by {k} for the {words[1]} module."
        tests = f"from solution import {name}\n\n\ndef test_{name}():\n    assert {name}(3) == {3 * k}\n"
        common = {"prompt": prompt, "domain": "code", "task": f"code task {t}", "tests": tests}
        if t % fail_every == fail_every - 1:
            out.append(
                record(
                    **common,
                    record_id=f"c{t}-fail",
                    timestamp=f"2025-01-07T09:{t % 60:02d}:00Z",
                    output=f"```python\ndef {name}(x):\n    return x + {k}\n```",
                    success=True,
                    metrics={"tests_passed": 0, "tests_total": 1, "duration_s": 2.0},
                )
            )
        out.append(
            record(
                **common,
                record_id=f"c{t}-ok",
                timestamp=f"2025-01-07T10:{t % 60:02d}:00Z",
                output=f"```python\ndef {name}(x):\n    return x * {k}\n```",
                metrics={"tests_passed": 1, "tests_total": 1, "duration_s": 1.0},
            )
        )
    return out
