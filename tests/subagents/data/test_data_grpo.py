"""GRPO prompts from curated code records with tests: the line contract with jobs/grpo.py, the figures the
supervisor reads, the golden rule, the scrub, and grpo.jsonl in the snapshot."""

from __future__ import annotations

import json
from pathlib import Path

from subagents.data.curate import CurationConfig, curate
from subagents.data.grpo import grpo_data
from subagents.data.preference import preference_data
from subagents.data.rewards import RewardWeights
from subagents.data.snapshot import verify_snapshot, write_snapshot
from tests.subagents.data.data_factories import attempt_records, code_attempt_records


def test_one_line_per_prompt_with_tests_from_train_only() -> None:
    records = code_attempt_records(60) + attempt_records(20)  # naming records carry no tests
    result = curate(records, CurationConfig(golden_fraction=0.25), rewards=RewardWeights())
    prompts, figures = grpo_data(result)
    train_with_tests = {e.messages[0]["content"] for e in result.train if e.tests}
    assert {p.prompt[0]["content"] for p in prompts} == train_with_tests  # every code task, once
    assert len({p.prompt[0]["content"] for p in prompts}) == len(prompts) == figures["prompts_with_tests"]
    golden = {e.split_key for e in (*result.golden, *result.failures["golden"])}
    assert golden and not golden & {p.task_id for p in prompts}  # no golden task cluster reaches GRPO
    for p in prompts:
        line = json.loads(p.to_json())
        assert set(line) == {"prompt", "tests", "task_id"}  # the contract with jobs/grpo.py
        assert line["prompt"] == [{"role": "user", "content": p.prompt[0]["content"]}]
        assert "from solution import" in line["tests"]
    # Every other task in train has a failed attempt (tests_failed) next to its success.
    at = [e for e in (*result.train, *result.failures["train"]) if e.split_key in {p.task_id for p in prompts}]
    assert figures["attempts"] == len(at) and figures["failures"] == sum(1 for e in at if not e.success) > 0
    assert figures["failure_share"] == round(figures["failures"] / figures["attempts"], 4)
    assert 0.2 < figures["failure_share"] < 0.5 and figures["clusters"] == len({p.task_id for p in prompts})
    assert grpo_data(result)[0] == prompts  # deterministic


def test_without_tests_or_without_failures() -> None:
    result = curate(attempt_records(20), rewards=RewardWeights())
    assert grpo_data(result) == ([], {"prompts_with_tests": 0, "clusters": 0, "attempts": 0, "failures": 0,
                                      "failure_share": 0.0})  # fmt: skip
    _, figures = grpo_data(curate(code_attempt_records(20, fail_every=10**6), rewards=RewardWeights()))
    assert figures["prompts_with_tests"] > 0 and figures["failures"] == 0 and figures["failure_share"] == 0.0


def test_tests_are_scrubbed_and_grpo_jsonl_is_in_the_snapshot(tmp_path: Path) -> None:
    records = code_attempt_records(30)
    secret = "API_KEY = 'sk-proj-" + "a1B2c3D4" * 6 + "'\n"
    records = [r.model_copy(update={"tests": r.tests + secret}) for r in records]
    result = curate(records, rewards=RewardWeights())
    data = preference_data(result)
    assert data.figures["grpo"]["prompts_with_tests"] == len(data.grpo) > 0
    manifest = write_snapshot(result, tmp_path / "snap", source={}, preference=data)
    lines = (tmp_path / "snap" / "grpo.jsonl").read_text().splitlines()
    assert len(lines) == len(data.grpo) == manifest.preference_files["grpo"].examples
    assert all("sk-proj-" not in line for line in lines)
    assert manifest.preference["grpo"] == data.figures["grpo"]
    assert verify_snapshot(tmp_path / "snap").content_hash == manifest.content_hash
