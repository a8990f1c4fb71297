"""Canary by adapter: pick_model (Python and GET /v1/route) routes a stable share of sessions to the new champion;
the monitor steps the share 10 -> 50 -> 100% on healthy live windows and rolls back to 0 on a regression."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from pilot.context import PilotContext, build_context
from pilot.data.ingest import ingest_lines
from pilot.service.api_route import router
from pilot.serving import canary, registry
from pilot.serving.deploy import pointer_path
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import Event
from pilot.supervisor.cycle import run_cycle
from tests.pilot.test_efficacy_rollback import add_version, live_records, promote

SESSIONS = [f"sess-{i}" for i in range(2000)]


def canary_ctx(store: Store, make_settings: Callable[..., Settings], **overrides: object) -> PilotContext:
    sections: dict[str, object] = {
        "policy": {"min_new_examples": 100_000},
        "deploy": {"canary": True, "canary_steps": [0.1, 0.5, 1.0]},
        "monitoring": {"min_records": 30, "window_hours": 6},
        "knowledge": {"enabled": False},
    }
    settings = make_settings(**{**sections, **overrides})
    return build_context(settings, store=store)


def start(ctx: PilotContext, version: str) -> None:
    promote(ctx, version)
    with ctx.store.session(write=True) as session:
        canary.start_rollout(session, ctx.settings, version, actor="supervisor")


def routes(ctx: PilotContext) -> dict[str, str]:
    with ctx.store.session() as session:
        return {s: canary.pick_model(session, ctx.settings, s).model for s in SESSIONS}


def share(ctx: PilotContext) -> float | None:
    with ctx.store.session() as session:
        rollout = canary.get_rollout(session)
    return None if rollout is None else rollout.share


def test_without_a_rollout_every_session_gets_the_champion(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ctx = canary_ctx(store, make_settings, deploy={"canary": False})
    assert set(routes(ctx).values()) == {ctx.settings.training.base_model}  # no champion: the base model
    add_version(ctx, "v1", tmp_path)
    promote(ctx, "v1")
    with store.session(write=True) as session:
        assert canary.start_rollout(session, ctx.settings, "v1", actor="supervisor") is None  # canary off
    assert set(routes(ctx).values()) == {"v1"}


def test_share_is_stable_per_session_and_only_grows_towards_the_candidate(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ctx = canary_ctx(store, make_settings)
    add_version(ctx, "v1", tmp_path)
    add_version(ctx, "v2", tmp_path)
    promote(ctx, "v1")
    start(ctx, "v2")
    first = routes(ctx)
    assert routes(ctx) == first  # stable per session
    on_new = {s for s, m in first.items() if m == "v2"}
    assert set(first.values()) == {"v1", "v2"} and 0.07 < len(on_new) / len(SESSIONS) < 0.13

    # Healthy live windows step the share: v2 as good as v1, enough records on both sides.
    ingest_lines(store, live_records(60, seed=1, failure_rate=0.2, version="v1", minutes_ago=120), source="t")
    ingest_lines(store, live_records(40, seed=2, failure_rate=0.2, version="v2", minutes_ago=-1), source="t")
    [cycle] = run_cycle(ctx, ingest=False)
    assert "canary 10% -> 50%" in " ".join(cycle.log) and share(ctx) == 0.5
    second = routes(ctx)
    assert on_new <= {s for s, m in second.items() if m == "v2"}  # nobody moved back to the old model
    assert 0.45 < sum(m == "v2" for m in second.values()) / len(SESSIONS) < 0.55

    [again] = run_cycle(ctx, ingest=False)  # no new evidence since the step: the share holds
    assert share(ctx) == 0.5 and "canary at 50%" in " ".join(again.log)

    ingest_lines(store, live_records(40, seed=3, failure_rate=0.2, version="v2", minutes_ago=-2), source="t")
    [done] = run_cycle(ctx, ingest=False)
    assert "canary complete" in " ".join(done.log) and share(ctx) is None
    assert set(routes(ctx).values()) == {"v2"}
    with store.session() as session:
        steps = session.exec(select(Event).where(Event.entity_type == "canary")).all()
    assert [(e.old, e.new) for e in steps] == [(None, "10%"), ("10%", "50%"), ("50%", None)]


def test_a_regression_during_the_canary_rolls_back_to_zero(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ctx = canary_ctx(store, make_settings)
    add_version(ctx, "v1", tmp_path)
    add_version(ctx, "v2", tmp_path)
    promote(ctx, "v1")
    start(ctx, "v2")
    ingest_lines(store, live_records(60, seed=1, failure_rate=0.1, version="v1", minutes_ago=120), source="t")
    ingest_lines(store, live_records(40, seed=2, failure_rate=0.85, version="v2", minutes_ago=-1), source="t")
    [cycle] = run_cycle(ctx, ingest=False)
    assert cycle.outcome.startswith("monitor: rolled back v2 -> v1")
    assert share(ctx) is None and set(routes(ctx).values()) == {"v1"}  # share 0: all sessions on v1
    assert json.loads(pointer_path(ctx.settings).read_text())["adapter"] == "v1"
    with store.session() as session:
        assert registry.alias_target(session, registry.CHAMPION) == "v1"


def test_http_route_answers_what_pick_model_answers(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ctx = canary_ctx(store, make_settings)
    add_version(ctx, "v1", tmp_path)
    add_version(ctx, "v2", tmp_path)
    promote(ctx, "v1")
    start(ctx, "v2")
    app = FastAPI()
    app.state.ctx = ctx
    app.include_router(router)
    expected = routes(ctx)
    with TestClient(app) as client:
        for session_id in SESSIONS[:40]:
            body = client.get("/v1/route", params={"session_id": session_id}).json()
            assert body["model"] == expected[session_id] and body["share"] == 0.1
            assert body["canary"] == (body["model"] == "v2")
        assert client.get("/v1/route").status_code == 422  # a session id is required
        assert client.get("/v1/route", params={"session_id": "x" * 201}).status_code == 422
