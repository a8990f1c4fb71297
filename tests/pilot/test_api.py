"""The HTTP API: health, readiness, metrics, kill/resume auth (refusals change nothing), batch ingest."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import select

from pilot.context import PilotContext, build_context
from pilot.data.producers import RECORDS_WRITE, create_token
from pilot.service.api import create_app
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import DeadLetter, Event, ExecutionRecordRow
from pilot.store.writers import is_paused
from tests import factories
from tools.gpu.base import LaunchSpec
from tools.gpu.fake import FakeGpuProvider

TOKEN = "s3cret-kill-token"


@pytest.fixture
def ctx(store: Store, make_settings: Callable[..., Settings]) -> PilotContext:
    return build_context(make_settings(gpu={"provider": "fake"}, api={"kill_token": TOKEN}), store=store)


@pytest.fixture
def client(ctx: PilotContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx)) as c:
        yield c


def _events(store: Store, entity_type: str) -> list[Event]:
    with store.session() as session:
        return list(session.exec(select(Event).where(Event.entity_type == entity_type)).all())


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "learning_pilot_paused 0.0" in metrics.text


def test_readyz_is_503_on_a_store_never_migrated(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    raw = Store(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with TestClient(create_app(build_context(make_settings(), store=raw))) as c:
            answer = c.get("/readyz")
        assert answer.status_code == 503 and "not initialised" in answer.json()["problems"][0]
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("headers", "code", "why"),
    [
        ({}, 401, "missing bearer token"),
        ({"Authorization": "Bearer wrong"}, 401, "wrong bearer token"),
        ({"Authorization": f"Basic {TOKEN}"}, 401, "missing bearer token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, 401, "wrong bearer token"),
    ],
)
def test_kill_refusals_are_recorded_and_change_nothing(
    client: TestClient, ctx: PilotContext, headers: dict[str, str], code: int, why: str
) -> None:
    assert isinstance(ctx.gpu, FakeGpuProvider)
    ctx.gpu.launch(LaunchSpec(label=f"{ctx.label_prefix}run-x", offer_id=None, image="x", command=["true"]))
    for route in ("/v1/kill", "/v1/resume"):
        answer = client.post(route, headers=headers, json={"reason": "x"})
        assert answer.status_code == code and answer.json()["error"] == why
    with ctx.store.session() as session:
        assert not is_paused(session)
    assert len(ctx.gpu.list_owned(ctx.label_prefix)) == 1
    refused = _events(ctx.store, "api")
    assert [e.entity_id for e in refused] == ["/v1/kill", "/v1/resume"]
    assert all(e.reason == f"refused: {why}" and e.data["status_code"] == code for e in refused)
    assert not _events(ctx.store, "incident")


def test_kill_without_a_configured_token_is_refused(store: Store, make_settings: Callable[..., Settings]) -> None:
    ctx = build_context(make_settings(gpu={"provider": "fake"}), store=store)
    with TestClient(create_app(ctx)) as c:
        answer = c.post("/v1/kill", headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 403
    with store.session() as session:
        assert not is_paused(session)


def test_kill_then_resume_with_the_token(client: TestClient, ctx: PilotContext) -> None:
    assert isinstance(ctx.gpu, FakeGpuProvider)
    for n in range(3):
        ctx.gpu.launch(LaunchSpec(label=f"{ctx.label_prefix}run-{n}", offer_id=None, image="x", command=["true"]))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answer = client.post("/v1/kill", headers=auth, json={"reason": "bill spike", "by": "alice"})
    assert answer.status_code == 200
    report = answer.json()
    assert report["ok"] and len(report["instances_destroyed"]) == 3 and report["actor"] == "human:alice"
    assert ctx.gpu.list_owned(ctx.label_prefix) == []
    assert "learning_pilot_paused 1.0" in client.get("/metrics").text
    assert client.post("/v1/resume", headers=auth).json() == {"was_paused": True, "paused": False}
    with ctx.store.session() as session:
        assert not is_paused(session)


def _count(store: Store, table: type) -> int:
    with store.session() as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def _producer(ctx: PilotContext) -> dict[str, str]:
    return {"authorization": f"Bearer {create_token(ctx.store, 'test-producer', [RECORDS_WRITE])[1]}"}


def test_records_batch_is_idempotent_and_reports_each_bad_line(client: TestClient, ctx: PilotContext) -> None:
    auth = _producer(ctx)
    good = [factories.record_line(record_id=f"rec-{n}") for n in range(3)]
    body = "\n".join([good[0], "{broken", good[1], json.dumps(factories.record(success="yes")), good[2]])
    first = client.post("/v1/records", content=body, headers={"content-type": "application/x-ndjson", **auth}).json()
    assert (first["received"], first["accepted"], first["duplicates"], first["dead_lettered"]) == (5, 3, 0, 2)
    assert [r["line"] for r in first["rejected"]] == [2, 4]
    assert "success" in first["rejected"][1]["reason"]
    assert _count(ctx.store, ExecutionRecordRow) == 3  # committed before the answer
    again = client.post("/v1/records", json={"records": [json.loads(g) for g in good]}, headers=auth).json()
    assert (again["accepted"], again["duplicates"]) == (0, 3)
    assert _count(ctx.store, ExecutionRecordRow) == 3 and _count(ctx.store, DeadLetter) == 2


def test_records_refuses_a_malformed_json_body(client: TestClient, ctx: PilotContext) -> None:
    headers = {"content-type": "application/json", **_producer(ctx)}
    assert client.post("/v1/records", content=b"[1,2]", headers=headers).status_code == 400
