"""Record factories for the data subagent's tests: keyword overrides, no fixture chains."""

from __future__ import annotations

import json
from typing import Any

from subagents.data.schema import ExecutionRecord, parse_record


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
