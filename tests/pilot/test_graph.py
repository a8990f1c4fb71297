"""The supervisor graph on both checkpointers: a cycle stops at the approval, the answer is written by another
store session (as the CLI does), and a new context (a restart) resumes the same thread to its end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlmodel import select

from pilot.context import build_context
from pilot.data.ingest import ingest_lines
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import Decision, TrainingRun
from pilot.store.status import ApprovalStatus
from pilot.supervisor.approvals import answer
from pilot.supervisor.cycle import run_cycle
from subagents.data.samples import generate_demo_records


def _settings(make_settings: Callable[..., Settings], store_url: str) -> Settings:
    return make_settings(
        store={"url": store_url},
        gpu={"provider": "fake"},
        policy={"min_new_examples": 50, "cooldown_minutes": 0},
        training={"base_model_params_b": 1.0, "max_steps": 10, "poll_interval_s": 0.01, "max_duration_minutes": 1},
    )


def test_interrupt_answer_restart_resume(store: Store, make_settings: Callable[..., Settings]) -> None:
    settings = _settings(make_settings, store.url)
    ingest_lines(store, generate_demo_records(300, seed=3, malformed=0.0), source="test")

    ctx = build_context(settings, store=Store(store.url))
    try:
        first = run_cycle(ctx)
    finally:
        ctx.close()
    waiting = [r for r in first if r.waiting_on]
    assert len(waiting) == 1 and "approval" in waiting[0].outcome
    thread = waiting[0].thread_id
    with store.session() as s:
        assert s.exec(select(TrainingRun)).all() == []  # nothing rented before the answer

    with store.session(write=True) as s:  # what `learning-pilot approve` does, from another process
        approval = answer(s, waiting[0].waiting_on or "", approve=False, actor="human:bob", note="not now")
    assert approval.status == ApprovalStatus.REJECTED

    restarted = build_context(settings, store=Store(store.url))  # a fresh context: a restart
    try:
        second = run_cycle(restarted)
    finally:
        restarted.close()
    resumed = [r for r in second if r.resumed]
    assert [r.thread_id for r in resumed] == [thread]
    assert "rejected by human:bob" in resumed[0].outcome
    with store.session() as s:
        decision = s.exec(select(Decision).where(Decision.thread_id == thread)).one()
        assert decision.finished_at is not None and "rejected" in (decision.outcome or "")
        assert s.exec(select(TrainingRun)).all() == []  # a rejected approval rents nothing
    # The next new cycle sees no pending approval and decides afresh.
    assert any(not r.resumed for r in second)


def test_a_thread_is_resumed_only_for_a_job_that_exists(store: Store) -> None:
    """A thread waiting on a run or stage whose row is gone is never resumed for it (its node would fail); a human's
    wait is not a job."""
    from types import SimpleNamespace

    from pilot.supervisor.cycle import _job_done

    ctx: Any = SimpleNamespace(store=store)
    assert _job_done(ctx, {"run_id": "run-nowhere"}) is None
    assert _job_done(ctx, {"stage_id": "eval-nowhere"}) is None
    assert _job_done(ctx, {"approval_id": "a1"}) is None
