"""Routing by adapter (champion, canary share, followed within seconds of a promotion or rollback) and outcomes
through ``POST /v1/feedback`` joined into execution records."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import httpx
import openai
import pytest
from sqlmodel import select

from pilot.client import PilotClient
from pilot.serving import canary, registry
from pilot.settings import load_settings
from pilot.store.models import Event, ExecutionRecordRow, GatewayCall, ModelVersion, utcnow
from pilot.store.status import CallStatus, ModelStatus
from subagents.data.schema import parse_record

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "rename x to count"}]


def add_versions(store, *ids: str) -> None:
    with store.session(write=True) as s:
        for vid in ids:
            s.add(ModelVersion(id=vid, status=ModelStatus.CANDIDATE, base_model="base-model"))


def promote(store, version: str, *, canary_on: bool = False) -> None:
    settings = load_settings(None, deploy={"canary": canary_on, "canary_steps": [0.5, 1.0]})
    with store.session(write=True) as s:
        registry.promote(s, version, actor="human:test", reason="test")
        canary.start_rollout(s, settings, version, actor="human:test")


def served(rig, session_id: str) -> tuple[str, str]:
    c = openai.OpenAI(base_url=rig.url, api_key="k", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="agent", messages=MESSAGES, extra_headers={"X-Session-Id": session_id}
    )
    return raw.headers["x-pilot-model-version"], rig.upstream.requests[-1][1]["model"]


def wait_for(predicate, timeout: float = 5.0) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - start


def test_promotion_canary_and_rollback_are_followed_without_restart(make_rig) -> None:
    rig = make_rig(route_refresh_s=0.2)
    for v in ("v1", "v2"):
        rig.upstream.load_adapter(v)
    add_versions(rig.store, "v1", "v2")
    assert served(rig, "s-a") == ("base", "base-model")
    promote(rig.store, "v1")
    lag = wait_for(lambda: served(rig, "s-a") == ("v1", "v1"))
    assert lag < 2
    promote(rig.store, "v2", canary_on=True)  # half the sessions, by their stable hash
    wait_for(lambda: rig.runtime.routes.state.rollout is not None)
    sessions = [f"s-{i}" for i in range(40)]
    got = {s: served(rig, s)[0] for s in sessions}
    expected = {s: ("v2" if canary.bucket(s) < 0.5 else "v1") for s in sessions}
    assert got == expected and {"v1", "v2"} == set(got.values())
    assert {s: served(rig, s)[0] for s in sessions} == got  # a session keeps its adapter
    with rig.store.session(write=True) as s:
        registry.rollback(s, to_version=None, actor="supervisor", reason="test")
        canary.end_rollout(s, actor="supervisor", reason="rolled back")
    wait_for(lambda: all(served(rig, s)[0] == "v1" for s in sessions[:5]))
    rig.drain()
    with rig.store.session() as s:
        versions = {c.session_id: c.model_version for c in s.exec(select(GatewayCall)).all()}
    assert versions["s-3"] == "v1"


@pytest.mark.parametrize("stream", [False, True])
def test_a_rolled_back_adapter_gone_from_the_upstream_is_rerouted_not_a_404(make_rig, stream: bool) -> None:
    # A rollback takes the adapter off the model server (the vllm target unloads it) before this gateway's next
    # route refresh: the upstream's 404 makes the gateway re-read its routes and send the call to the base.
    rig = make_rig(route_refresh_s=3600)  # no refresh of its own during the test
    rig.upstream.load_adapter("v1")
    add_versions(rig.store, "v1")
    promote(rig.store, "v1")
    rig.runtime.routes.refresh()
    assert served(rig, "s-a") == ("v1", "v1")
    with rig.store.session(write=True) as s:
        registry.rollback(s, to_version=None, actor="supervisor", reason="test")
    rig.upstream.unload_adapter("v1")
    c = openai.OpenAI(base_url=rig.url, api_key="k", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="agent", messages=MESSAGES, stream=stream, extra_headers={"X-Session-Id": "s-a"}
    )
    answer = raw.parse()
    if stream:
        assert "".join(ch.choices[0].delta.content or "" for ch in answer if ch.choices)
    else:
        assert answer.choices[0].message.content
    assert raw.headers["x-pilot-model-version"] == "base"
    assert [body["model"] for _, body, _ in rig.upstream.requests[-2:]] == ["v1", "base-model"]
    rig.drain()
    with rig.store.session() as s:
        (last,) = s.exec(select(GatewayCall).where(GatewayCall.request_id == raw.headers["x-request-id"])).all()
    assert (last.model_version, last.upstream_status) == (None, 200)  # the base model: no version
    assert b"learning_pilot_gateway_rerouted_total 1.0" in httpx.get(f"{rig.root}/metrics").content

    # The route cannot be re-read (the store is down): the product gets the upstream's 404, nothing else.
    promote(rig.store, "v1")
    rig.runtime.routes.refresh()

    def store_down() -> None:
        raise OSError("database is down")

    rig.runtime.routes.refresh = store_down  # type: ignore[method-assign]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.chat.completions.create(
            model="agent", messages=MESSAGES, stream=stream, extra_headers={"X-Session-Id": "s-a"}
        )
    assert rig.upstream.requests[-1][1]["model"] == "v1"


def call(rig, session_id: str = "s-1", content: str = "rename x to count") -> str:
    c = openai.OpenAI(base_url=rig.url, api_key="k", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="agent",
        messages=[{"role": "user", "content": content}],
        extra_headers={"X-Session-Id": session_id, "X-Producer-Token": rig.feedback_token},
    )
    return raw.headers["x-request-id"]


def test_feedback_completes_the_call_into_an_execution_record(make_rig) -> None:
    rig = make_rig()
    # The answer carries a secret: it must reach the record scrubbed.
    rid = call(rig, content="my key is AKIAIOSFODNN7EXAMPLE, rename x")
    with PilotClient(rig.root, token=rig.feedback_token) as pilot:  # right away: the call may still be in the spool
        joined = pilot.feedback(request_id=rid, success=True, tests_passed=3, tests_total=3, rating=5,
                                comment="good", domain="python-naming", tags=["t1"])  # fmt: skip
    assert joined["record_id"] == f"gw-{rid}" and joined["replaced"] is False
    with rig.store.session() as s:
        row = s.exec(select(ExecutionRecordRow)).one()
        gw_call = s.get(GatewayCall, rid)
    record = parse_record(json.loads(row.payload))  # the one schema
    assert record.success and record.domain == "python-naming" and record.session_id == "s-1"
    assert record.metrics.tests_passed == 3 and record.feedback is not None and record.feedback.rating == 5
    assert "AKIAIOSFODNN7EXAMPLE" not in row.payload and "<REDACTED:" in record.task
    assert record.output.startswith("base-model: my key is <REDACTED:")
    assert record.tags == ["gateway", "t1"] and record.metrics.tokens and record.metrics.duration_s is not None
    assert gw_call is not None and gw_call.status == CallStatus.LABELLED


def test_second_feedback_wins_and_both_are_in_the_event_log(make_rig) -> None:
    rig = make_rig()
    rid = call(rig)
    with PilotClient(rig.root, token=rig.feedback_token) as pilot:
        pilot.feedback(request_id=rid, success=True)
        second = pilot.feedback(session_id="s-1", success=False, comment="it broke later")
    assert second["replaced"] is True
    with rig.store.session() as s:
        rows = s.exec(select(ExecutionRecordRow)).all()
        events = s.exec(select(Event).where(Event.entity_type == "gateway_call")).all()
    assert len(rows) == 1 and rows[0].success is False
    assert [e.data.get("success") for e in events] == [True, False]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"request_id": "req-unknown", "success": True}, 404, "unknown_request"),
        ({"success": True}, 400, "invalid_feedback"),
        ({"request_id": "r", "session_id": "s", "success": True}, 400, "invalid_feedback"),
        ({"request_id": "r"}, 400, "invalid_feedback"),
        ({"request_id": "r", "success": "yes"}, 400, "invalid_feedback"),
        ({"request_id": "r", "success": True, "surprise": 1}, 400, "invalid_feedback"),
        ({"request_id": "r", "tests_passed": 4, "tests_total": 3}, 400, "invalid_feedback"),
    ],
)
def test_bad_feedback_is_refused_with_a_reason(make_rig, body, status, code) -> None:
    rig = make_rig()
    answer = httpx.post(f"{rig.root}/v1/feedback", json=body, headers=rig.feedback_headers, timeout=10)
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code and answer.json()["error"]["message"]


def test_feedback_body_not_json_is_400(make_rig) -> None:
    rig = make_rig()
    answer = httpx.post(f"{rig.root}/v1/feedback", content=b"{oops", headers=rig.feedback_headers, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"


def test_expired_calls_stay_unlabelled_and_refuse_feedback(make_rig) -> None:
    rig = make_rig(feedback_window_h=1)
    rid = call(rig)
    rig.drain()
    from pilot.gateway.calls import sweep

    assert sweep(rig.store, window=timedelta(hours=1), now=utcnow() + timedelta(hours=2)) == [rid]
    answer = httpx.post(
        f"{rig.root}/v1/feedback", json={"request_id": rid, "success": True}, headers=rig.feedback_headers, timeout=10
    )
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "expired"
    assert "feedback window" in answer.json()["error"]["message"]
    with rig.store.session() as s:
        assert s.get(GatewayCall, rid).status == CallStatus.UNLABELLED
        assert s.exec(select(ExecutionRecordRow)).all() == []  # never training data


def test_train_on_unlabelled_turns_expired_calls_into_records_graded_by_the_answer(make_rig) -> None:
    from pilot.gateway.calls import sweep
    from pilot.gateway.feedback import records_for_unlabelled

    rig = make_rig(feedback_window_h=1, train_on_unlabelled=True, producer_auth=True)
    ok = call(rig, content="rename y")
    rig.upstream.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        call(rig, content="rename z")
    rig.drain()
    expired = sweep(rig.store, window=timedelta(hours=1), now=utcnow() + timedelta(hours=2))
    assert len(expired) == 2 and records_for_unlabelled(rig.store, expired) == 2
    assert records_for_unlabelled(rig.store, expired) == 0  # already stored: skipped
    with rig.store.session() as s:
        records = {r.record_id: parse_record(json.loads(r.payload)) for r in s.exec(select(ExecutionRecordRow))}
        assert {s.get(GatewayCall, rid).status for rid in expired} == {CallStatus.UNLABELLED}
    assert records[f"gw-{ok}"].success is True and "unlabelled" in records[f"gw-{ok}"].tags
    [failed] = [r for rid, r in records.items() if rid != f"gw-{ok}"]
    assert failed.success is False


def test_producer_tokens_guard_calls_and_feedback(make_rig) -> None:
    from pilot.data.producers import create_token, revoke_token

    rig = make_rig(producer_auth=True)
    _, live = create_token(rig.store, "agent-prod", scopes=["live:write", "feedback:write"])
    _, records_only = create_token(rig.store, "etl", scopes=["records:write"])
    c = openai.OpenAI(base_url=rig.url, api_key="sk-product", max_retries=0)
    with pytest.raises(openai.AuthenticationError):  # no token
        c.chat.completions.create(model="agent", messages=MESSAGES)
    with pytest.raises(openai.PermissionDeniedError):  # a token without live:write
        c.chat.completions.create(model="agent", messages=MESSAGES, extra_headers={"X-Producer-Token": records_only})
    raw = c.chat.completions.with_raw_response.create(
        model="agent", messages=MESSAGES, extra_headers={"X-Producer-Token": live}
    )
    rid = raw.headers["x-request-id"]
    assert rig.upstream.requests[-1][2]["authorization"] == "Bearer sk-product"  # the product's key, untouched
    assert "x-producer-token" not in rig.upstream.requests[-1][2]  # the producer token never goes upstream
    refused = httpx.post(f"{rig.root}/v1/feedback", json={"request_id": rid, "success": True}, timeout=10)
    assert refused.status_code == 401
    with PilotClient(rig.root, token=None) as pilot:
        pilot._http.headers["X-Producer-Token"] = live
        assert pilot.feedback(request_id=rid, success=True)["record_id"] == f"gw-{rid}"
    with rig.store.session() as s:
        assert s.get(GatewayCall, rid).producer == "producer:agent-prod"
    revoke_token(rig.store, "agent-prod")
    time.sleep(5.1)  # the verdict cache (pilot/gateway/auth.py CACHE_S)
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="agent", messages=MESSAGES, extra_headers={"X-Producer-Token": live})


def test_feedback_needs_a_token_even_with_producer_auth_off(make_rig) -> None:
    """An outcome turns a call into training data and live quality: /v1/feedback is never anonymous."""
    rig = make_rig()  # producer_auth off: calls are anonymous traffic
    rid = call(rig)
    body = {"request_id": rid, "success": False}
    assert httpx.post(f"{rig.root}/v1/feedback", json=body, timeout=10).status_code == 401
    wrong = httpx.post(f"{rig.root}/v1/feedback", json=body, headers={"Authorization": "Bearer lpp_nope"}, timeout=10)
    assert wrong.status_code == 401
    rig.drain()
    with rig.store.session() as s:
        assert s.exec(select(ExecutionRecordRow)).all() == []
        assert s.get(GatewayCall, rid).status == CallStatus.OPEN


def test_train_on_unlabelled_without_producer_auth_is_refused_by_the_settings(tmp_path) -> None:
    from pilot.errors import ConfigError
    from pilot.settings import load_settings

    with pytest.raises(ConfigError, match="producer_auth"):
        load_settings(None, data_dir=tmp_path, gateway={"train_on_unlabelled": True})
