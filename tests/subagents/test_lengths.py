"""No silent truncation: the plan and the evaluation say how many examples their limits cut."""

from __future__ import annotations

import json
from pathlib import Path

from subagents.lengths import generation_report, truncation_report
from subagents.training import plan_training
from tests.subagents.test_training_plan import offers, params


def write_split(path: Path, pairs: list[tuple[int, int]]) -> Path:
    """Examples whose prompt and answer are ``p`` and ``a`` characters long."""
    with path.open("w", encoding="utf-8") as fh:
        for i, (p, a) in enumerate(pairs):
            messages = [{"role": "user", "content": "p" * p}, {"role": "assistant", "content": "a" * a}]
            fh.write(json.dumps({"id": f"ex-{i}", "domain": "d", "weight": 1.0, "messages": messages}) + "\n")
    return path


def test_reports_what_seq_len_cuts_and_proposes_the_length_that_fits(tmp_path: Path) -> None:
    # 90 short examples (~60 tokens), 8 long prompts (~1,000 tokens), 2 answers longer than seq_len itself.
    pairs = [(200, 40)] * 90 + [(4000, 40)] * 8 + [(100, 2400)] * 2
    report = truncation_report(write_split(tmp_path / "train.jsonl", pairs), 512, max_share=0.02)
    assert (report.examples, report.over, report.prompt_cut, report.answer_cut) == (100, 10, 8, 2)
    assert report.too_many and report.share == 0.10
    assert report.proposed_seq_len >= 1018 and report.proposed_seq_len % 64 == 0
    assert "cuts 10 of 100 training examples (10.0%)" in report.message()
    assert f"training.seq_len = {report.proposed_seq_len}" in report.message()


def test_a_fitting_seq_len_is_said_to_fit(tmp_path: Path) -> None:
    report = truncation_report(write_split(tmp_path / "train.jsonl", [(200, 40)] * 20), 1024)
    assert report.over == 0 and not report.too_many and report.proposed_seq_len == 1024
    assert "fits every training example" in report.message()


def test_the_plan_carries_the_truncation_figures(tmp_path: Path) -> None:
    report = truncation_report(write_split(tmp_path / "train.jsonl", [(4000, 40)] * 5 + [(10, 10)] * 5), 512)
    plan = plan_training(params(), offers(), train_examples=10, train_tokens=5000, remote=True, truncation=report)
    assert plan is not None
    assert plan.figures["truncation"]["over"] == 5 and plan.figures["truncation"]["too_many"] is True
    assert "seq_len 512 cuts 5 of 10" in plan.figures["truncation"]["message"]


def test_generation_report_counts_answers_longer_than_max_new_tokens_and_hits() -> None:
    refs = ["get_user_name"] * 95 + ["x" * 400] * 5  # 5 answers need ~101 tokens
    report = generation_report(refs, 32, max_share=0.02)
    assert report.over == 5 and report.hits is None and report.too_many
    assert report.proposed_max_new_tokens >= 101 and "evaluation.max_new_tokens" in report.message()
    hit = generation_report(["ok"] * 10, 32, hits=[True] * 3 + [False] * 7)
    assert hit.over == 0 and hit.hits == 3 and hit.share == 0.3 and hit.too_many
