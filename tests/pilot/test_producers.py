"""Producer tokens: created hashed, scoped, revoked; every ingest request needs one (401/403, nothing stored)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import col, select

from pilot.context import PilotContext, build_context
from pilot.data.producers import (
    FEEDBACK_WRITE,
    LIVE_WRITE,
    RECORDS_WRITE,
    ProducerAuthError,
    authenticate,
    create_token,
    list_tokens,
    revoke_token,
)
from pilot.service.api import create_app
from pilot.settings import Settings, load_settings
from pilot.store import Store
from pilot.store.models import DeadLetter, Event, ExecutionRecordRow, ProducerToken
from tests import factories
from tests.pilot.test_cli import cli


@pytest.fixture
def ctx(store: Store, make_settings: Callable[..., Settings]) -> PilotContext:
    return build_context(make_settings(gpu={"provider": "fake"}), store=store)


@pytest.fixture
def client(ctx: PilotContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx)) as c:
        yield c


def _count(store: Store, table: type) -> int:
    with store.session() as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def test_tokens_are_stored_hashed_scoped_and_revocable(store: Store) -> None:
    row, raw = create_token(store, "agent-a", [RECORDS_WRITE])
    assert raw.startswith("lpp_") and len(raw) >= 40 and row.prefix == raw[: len(row.prefix)]
    with store.session() as session:
        stored = session.exec(select(ProducerToken)).one()
    assert stored.token_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in json.dumps(stored.model_dump(mode="json"))  # only the hash and a short prefix are kept
    producer = authenticate(store, raw, RECORDS_WRITE)
    assert (producer.name, producer.scopes) == ("agent-a", frozenset({RECORDS_WRITE}))
    with pytest.raises(ProducerAuthError, match="lacks the scope live:write") as wrong:
        authenticate(store, raw, LIVE_WRITE)
    assert wrong.value.status == 403
    for bad in (None, "", "lpp_guess", raw + "x", raw[:-1], "Bearer " + raw):
        with pytest.raises(ProducerAuthError) as unknown:
            authenticate(store, bad, RECORDS_WRITE)
        assert unknown.value.status == 401
    second, raw2 = create_token(store, "agent-b", [LIVE_WRITE, FEEDBACK_WRITE])
    assert [r.name for r in list_tokens(store)] == ["agent-a", "agent-b"]
    assert revoke_token(store, "agent-a") and not revoke_token(store, "agent-a")
    with pytest.raises(ProducerAuthError, match="unknown or revoked") as revoked:
        authenticate(store, raw, RECORDS_WRITE)
    assert revoked.value.status == 401
    assert authenticate(store, raw2, FEEDBACK_WRITE).id == second.id
    assert revoke_token(store, second.id)
    assert [r.revoked_at is not None for r in list_tokens(store)] == [True, True]
    with store.session() as session:
        events = session.exec(select(Event).where(Event.entity_type == "producer").order_by(col(Event.id))).all()
    assert [e.new for e in events] == ["active", "active", "revoked", "revoked"]
    assert all(raw not in e.reason and raw not in json.dumps(e.data) for e in events)


@pytest.mark.parametrize(
    ("name", "scopes"), [("", [RECORDS_WRITE]), ("a b", [RECORDS_WRITE]), ("ok", []), ("ok", ["admin"])]
)
def test_bad_token_requests_are_refused(store: Store, name: str, scopes: list[str]) -> None:
    with pytest.raises(ValueError):
        create_token(store, name, scopes)
    assert list_tokens(store) == []


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        (None, 401),
        ("Bearer lpp_not-a-token", 401),
        ("Basic abc", 401),
        ("feedback-only", 403),
        ("revoked", 401),
    ],
)
def test_ingest_without_the_right_token_stores_nothing(
    client: TestClient, ctx: PilotContext, auth: str | None, code: int
) -> None:
    if auth == "feedback-only":
        auth = f"Bearer {create_token(ctx.store, 'fb', [FEEDBACK_WRITE])[1]}"
    elif auth == "revoked":
        raw = create_token(ctx.store, "gone", [RECORDS_WRITE])[1]
        revoke_token(ctx.store, "gone")
        auth = f"Bearer {raw}"
    headers = {"content-type": "application/x-ndjson", **({"authorization": auth} if auth else {})}
    body = "\n".join([factories.record_line(record_id="r1"), "{junk"])
    answer = client.post("/v1/records", content=body, headers=headers)
    assert answer.status_code == code, answer.text
    assert "error" in answer.json()
    assert _count(ctx.store, ExecutionRecordRow) == 0 and _count(ctx.store, DeadLetter) == 0
    assert (
        f'learning_pilot_api_refusals_total{{route="/v1/records",status="{code}"}} 1.0' in client.get("/metrics").text
    )


def test_a_live_record_needs_live_write_and_nothing_of_the_batch_is_stored(
    client: TestClient, ctx: PilotContext
) -> None:
    raw = create_token(ctx.store, "trainer-feed", [RECORDS_WRITE])[1]
    live = factories.record_line(record_id="live-1", model_version="v1")
    body = "\n".join([factories.record_line(record_id="r1"), live])
    headers = {"content-type": "application/x-ndjson", "authorization": f"Bearer {raw}"}
    answer = client.post("/v1/records", content=body, headers=headers)
    assert answer.status_code == 403 and "line 2" in answer.json()["error"] and "live:write" in answer.json()["error"]
    assert _count(ctx.store, ExecutionRecordRow) == 0
    live_only = create_token(ctx.store, "canary-feed", [LIVE_WRITE])[1]
    refused = client.post(
        "/v1/records", json={"records": [factories.record()]}, headers={"authorization": f"Bearer {live_only}"}
    )
    assert refused.status_code == 403 and "records:write" in refused.json()["error"]
    both = create_token(ctx.store, "product", [RECORDS_WRITE, LIVE_WRITE])[1]
    ok = client.post("/v1/records", content=body, headers={**headers, "authorization": f"Bearer {both}"})
    assert ok.status_code == 200 and ok.json()["accepted"] == 2
    with ctx.store.session() as session:
        rows = session.exec(select(ExecutionRecordRow).order_by(ExecutionRecordRow.record_id)).all()
    assert [(r.record_id, r.producer, r.source) for r in rows] == [
        ("live-1", "product", "http:product"),
        ("r1", "product", "http:product"),
    ]


def test_refusals_are_counted_but_sampled_as_events(client: TestClient, ctx: PilotContext) -> None:
    for _ in range(50):
        assert client.post("/v1/records", content=b"{}", headers={"authorization": "Bearer nope"}).status_code == 401
    with ctx.store.session() as session:
        events = session.exec(select(Event).where(Event.entity_type == "api")).all()
    assert len(events) == 1 and events[0].reason == "refused: unknown or revoked producer token"
    assert 'learning_pilot_api_refusals_total{route="/v1/records",status="401"} 50.0' in client.get("/metrics").text


def test_tokens_cli_create_list_revoke(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "pilot.toml"
    config.write_text(f'env = "test"\ndata_dir = "{tmp_path / "data"}"\n')
    assert cli(capsys, "--config", str(config), "init")[0] == 0
    code, out, err = cli(capsys, "--config", str(config), "tokens", "create", "agent", "--scope", "records:write")
    assert code == 0 and "shown once" in err
    raw = out.strip().splitlines()[-1]
    assert raw.startswith("lpp_")
    store = Store(load_settings(config).database_url)
    try:
        assert authenticate(store, raw, RECORDS_WRITE).name == "agent"
        code, out, _ = cli(capsys, "--config", str(config), "tokens", "list", "--json")
        [listed] = json.loads(out)
        assert listed["name"] == "agent" and listed["scopes"] == ["records:write"] and raw not in out
        code, _, err = cli(capsys, "--config", str(config), "tokens", "create", "x", "--scope", "admin")
        assert code == 1 and err.startswith("error: unknown scope") and "Traceback" not in err
        assert cli(capsys, "--config", str(config), "tokens", "revoke", "agent")[0] == 0
        code, _, err = cli(capsys, "--config", str(config), "tokens", "revoke", "agent")
        assert code == 1 and "no active token" in err
        with pytest.raises(ProducerAuthError):
            authenticate(store, raw, RECORDS_WRITE)
    finally:
        store.close()
