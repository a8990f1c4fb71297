"""GRPO prompts from what curation kept: one line per distinct prompt of the code records that carry tests.

Built from one split of a ``curate(..., rewards=...)`` result, successes and the failed attempts it kept alike,
so the data has been through the same injection screening, deduplication, scrubbing (``tests`` too) and
golden rule as supervised data: a failure takes its task cluster's split, no cluster of the golden split
reaches these lines. Only the train split is ever written for training.

Line format (the contract with jobs/grpo.py, which cannot import this module):
``{"prompt": [messages before the answer, as the SFT examples'], "tests": "<test file text>", "task_id":
"<cluster id>"}``. The cluster id is the examples' ``split_key`` (the task cluster's key).

Invariants:
- Deterministic: the same examples in the same order give the same lines (first occurrence of a prompt wins,
  successes before failures, so a prompt's tests are those of its first successful attempt when it has one).
- Figures (``figures`` of ``grpo_data``): ``prompts_with_tests``, ``clusters`` (distinct task ids), ``attempts``
  and ``failures`` among every kept attempt (success or failure) at those clusters, and ``failure_share``: a
  task the agent always passes gives GRPO no reward variance, so the supervisor reads that share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from subagents.data.curate import CurationResult, Example

__all__ = ["GrpoPrompt", "grpo_data"]


@dataclass(frozen=True, slots=True)
class GrpoPrompt:
    prompt: tuple[dict[str, str], ...]
    tests: str
    task_id: str
    record_ids: tuple[str, ...]  # every kept attempt with this prompt (the final pass names them)

    def to_json(self) -> str:
        return json.dumps(
            {"prompt": list(self.prompt), "tests": self.tests, "task_id": self.task_id},
            ensure_ascii=False,
            separators=(",", ":"),
        )


def grpo_data(result: CurationResult, *, split: str = "train") -> tuple[list[GrpoPrompt], dict[str, Any]]:
    """The GRPO lines of ``split`` of ``result`` and their figures (see the module docstring)."""
    attempts: list[Example] = [*result.split(split), *result.failures.get(split, [])]
    first: dict[str, Example] = {}
    ids: dict[str, list[str]] = {}
    for e in attempts:
        if not e.tests.strip():
            continue
        key = json.dumps(list(e.messages[:-1]), sort_keys=True)
        first.setdefault(key, e)
        ids.setdefault(key, []).append(e.record_id)
    prompts = [
        GrpoPrompt(prompt=e.messages[:-1], tests=e.tests, task_id=e.split_key, record_ids=tuple(ids[key]))
        for key, e in first.items()
    ]
    clusters = {p.task_id for p in prompts}
    at_tasks = [e for e in attempts if e.split_key in clusters]
    failed = sum(1 for e in at_tasks if not e.success)
    figures = {
        "prompts_with_tests": len(prompts),
        "clusters": len(clusters),
        "attempts": len(at_tasks),
        "failures": failed,
        "failure_share": round(failed / len(at_tasks), 4) if at_tasks else 0.0,
    }
    return prompts, figures
