"""The LLM judge inside ``evaluate_version``: its scores and agreement are stored beside the deterministic ones, the
gate's verdict does not move, every call lands in the ledger (category ``llm``) and its tokens in ``llm_call``
events, the daily LLM budget stops it, and a broken judge never fails the evaluation. Models are litellm's
``mock_response`` (LITELLM_LOCAL_MODEL_COST_MAP keeps the price map local)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from pilot.evaluation.evaluate import evaluate_version
from pilot.settings import JudgeSettings, Settings
from pilot.spend.ledger import llm_usage_today
from pilot.store import Store
from pilot.store.models import Event, SpendEntry
from subagents.judge import RUBRIC_SHA256
from tests.pilot.test_efficacy_rollback import add_version
from tests.pilot.test_evaluate_code import FAST, RIGHT, SQUARE_TESTS, WRONG, context, golden_line
from tools.llm import LlmClient

CORRECT = '{"verdict": "correct"}'
ITEMS = 6  # 3 code items (candidate right, champion wrong) and 3 plain items (both right)


def setup(store: Store, make_settings: Callable[..., Settings], tmp_path: Path, **llm: Any) -> Any:
    lines, cand, champ = [], {}, {}
    for i in range(ITEMS // 2):
        lines.append(golden_line(f"c{i}", f"Write square(x), case {i}.", RIGHT, tests=SQUARE_TESTS))
        cand[f"c{i}"], champ[f"c{i}"] = RIGHT, WRONG
        lines.append(golden_line(f"p{i}", f"Rename userId{i} to snake_case.", f"user_id{i}", domain="naming"))
        cand[f"p{i}"] = champ[f"p{i}"] = f"user_id{i}"
    golden = tmp_path / "golden.jsonl"
    golden.write_text("\n".join(lines) + "\n")
    settings = make_settings(
        evaluation={
            "golden_path": golden,
            "min_items": 4,
            "bootstrap_samples": 200,
            "judge": {"enabled": True, "k": 3},
        },
        llm=llm,
    )
    ctx = context(settings, store, {"candidate": cand, "champion": champ})
    add_version(ctx, "v1", tmp_path)
    return ctx


def mocked(reply: Any) -> LlmClient:
    return LlmClient("gpt-4o-mini", max_retries=0, extra={"mock_response": reply})


def llm_spend(store: Store) -> list[SpendEntry]:
    with store.session() as session:
        return list(session.exec(select(SpendEntry).where(SpendEntry.category == "llm")).all())


def test_the_judge_is_stored_beside_the_scores_and_every_call_is_accounted(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ctx = setup(store, make_settings, tmp_path)
    evaluation_off = ctx.settings.evaluation.model_copy(update={"judge": JudgeSettings()})
    judge_off = replace(ctx, settings=ctx.settings.model_copy(update={"evaluation": evaluation_off}))
    without_judge, plain = evaluate_version(judge_off, "v1", sandbox_limits=FAST)
    assert plain["judge"] is None and llm_spend(store) == []

    report, stored = evaluate_version(ctx, "v1", sandbox_limits=FAST, judge_client=mocked(CORRECT))

    assert report.verdict == without_judge.verdict and report.diff == without_judge.diff  # advice only
    judge = stored["judge"]
    assert judge["k"] == 3 and judge["rubric_sha256"] == RUBRIC_SHA256 and judge["used_by_gate"] is False
    assert (judge["items_judged"], judge["items_total"], judge["stopped"]) == (ITEMS, ITEMS, None)
    assert judge["candidate_score"] == 1.0 and judge["champion_score"] == 1.0  # this judge says yes to all
    assert judge["mean_agreement"] == 1.0 and judge["unparsed"] == 0 and judge["failed_calls"] == 0
    assert judge["agreement_with_scores"] == pytest.approx(9 / 12)  # wrong champion code: judge 1, sandbox 0
    assert judge["calls"] == 2 * 3 * ITEMS and judge["tokens"] > 0 and judge["cost_usd"] > 0
    row = next(r for r in stored["items"] if r["id"] == "c0")
    assert row["mode"] == "code" and row["champion"] == 0.0
    assert row["judge"] == {"candidate": 1.0, "candidate_agreement": 1.0, "champion": 1.0, "champion_agreement": 1.0}

    spend = llm_spend(store)
    assert len(spend) == judge["calls"] and all(e.kind == "actual" and e.amount_usd > 0 for e in spend)
    assert sum(e.amount_usd for e in spend) == pytest.approx(judge["cost_usd"], abs=1e-5)
    with store.session() as session:
        events = session.exec(select(Event).where(Event.entity_type == "llm_call")).all()
        usd, tokens = llm_usage_today(session)
    assert len(events) == ITEMS and all(e.data["purpose"] == "judge" for e in events)
    assert tokens == judge["tokens"] and usd == pytest.approx(judge["cost_usd"], abs=1e-5)
    json.dumps(stored)


def test_unparsable_verdicts_score_zero_and_the_evaluation_goes_on(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ctx = setup(store, make_settings, tmp_path)
    report, stored = evaluate_version(ctx, "v1", sandbox_limits=FAST, judge_client=mocked("Looks right to me."))
    judge = stored["judge"]
    assert judge["candidate_score"] == 0.0 and judge["champion_score"] == 0.0
    assert judge["unparsed"] == judge["calls"] == 2 * 3 * ITEMS
    assert report.candidate_score == 1.0  # the deterministic scores are untouched
    assert len(llm_spend(store)) == judge["calls"]  # unparsed replies still cost, and are accounted


def test_the_daily_token_budget_stops_the_judge(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ctx = setup(store, make_settings, tmp_path, daily_token_budget=1)
    _, stored = evaluate_version(ctx, "v1", sandbox_limits=FAST, judge_client=mocked(CORRECT))
    judge = stored["judge"]
    assert judge["items_judged"] == 1 and "daily LLM budget exhausted after 1 of 6 items" in judge["stopped"]
    assert len(llm_spend(store)) == 2 * 3
    assert sum("judge" in row for row in stored["items"]) == 1


def test_a_broken_judge_never_fails_the_evaluation(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    class Broken:
        def complete(self, messages: Any) -> Any:
            raise RuntimeError("bug in the judge's client")

    ctx = setup(store, make_settings, tmp_path)
    report, stored = evaluate_version(ctx, "v1", sandbox_limits=FAST, judge_client=Broken())
    assert stored["judge"]["error"].startswith("RuntimeError: bug in the judge's client")
    assert report.n_items == ITEMS and "judge" not in stored["items"][0]


def test_enabled_without_a_model_is_recorded_not_raised(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ctx = setup(store, make_settings, tmp_path)
    _, stored = evaluate_version(ctx, "v1", sandbox_limits=FAST)
    assert "no model is configured" in stored["judge"]["error"]
    assert llm_spend(store) == []
