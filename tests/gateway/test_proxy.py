"""The gateway as an OpenAI-compatible proxy, driven by the real ``openai`` client (sync and async, streamed or
not), with the upstream's faults: down, slow, 5xx, a stream cut mid-way, malformed JSON; and bad requests."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from pilot.store.models import GatewayCall
from tools.serving.openai_fake import FakeOpenAIServer

MESSAGES = [{"role": "system", "content": "You fix code."}, {"role": "user", "content": "add two numbers"}]


def client(rig, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=rig.url, api_key="sk-product", max_retries=0, timeout=10, **kw)


def calls(rig) -> list[GatewayCall]:
    rig.drain()
    with rig.store.session() as s:
        from sqlmodel import select

        return list(s.exec(select(GatewayCall)).all())


def test_chat_non_streamed_is_routed_recorded_and_tagged(make_rig) -> None:
    rig = make_rig()
    raw = client(rig).chat.completions.with_raw_response.create(
        model="agent", messages=MESSAGES, extra_headers={"X-Session-Id": "s-1"}
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == "base-model: add two numbers"
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req-") and reply._request_id == request_id
    assert raw.headers["x-session-id"] == "s-1"
    assert raw.headers["x-pilot-model-version"] == "base"
    path, body, headers = rig.upstream.requests[-1]
    assert path == "/v1/chat/completions" and body["model"] == "base-model"  # the logical name was rewritten
    assert headers["authorization"] == "Bearer sk-product"  # passed through
    (call,) = calls(rig)
    assert (call.request_id, call.session_id, call.model, call.model_version) == (request_id, "s-1", "base-model", None)
    assert call.outcome == "ok" and call.upstream_status == 200 and not call.streamed
    assert call.output == "base-model: add two numbers"
    assert json.loads(call.prompt)["messages"][1] == {"role": "user", "content": "add two numbers"}
    assert call.prompt_tokens == 3 and call.completion_tokens == 4 and call.latency_ms > 0


def test_chat_streamed_sync_reassembled_with_usage(make_rig) -> None:
    rig = make_rig()
    stream = client(rig).chat.completions.create(
        model="agent", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, user="u-7"
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text == "base-model: add two numbers"
    (call,) = calls(rig)
    assert call.streamed and call.outcome == "ok" and call.session_id == "u-7"
    assert call.output == text and call.completion_tokens == 4 and call.ttft_ms is not None


async def test_async_client_streamed_and_not(make_rig) -> None:
    rig = make_rig()
    aclient = openai.AsyncOpenAI(base_url=rig.url, api_key="k", max_retries=0, timeout=10)
    reply = await aclient.chat.completions.create(model="agent", messages=MESSAGES)
    stream = await aclient.chat.completions.create(model="agent", messages=MESSAGES, stream=True)
    pieces = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
    many = await asyncio.gather(*(aclient.completions.create(model="agent", prompt=f"p{i}") for i in range(20)))
    await aclient.close()
    assert reply.choices[0].message.content == "".join(pieces)
    assert sorted(r.choices[0].text for r in many) == sorted(f"base-model: p{i}" for i in range(20))
    recorded = calls(rig)
    assert len(recorded) == 22 and len({c.request_id for c in recorded}) == 22
    assert all(c.session_id.startswith("gw-") for c in recorded)  # none given: generated and returned


def test_completions_streamed_and_models_listing(make_rig) -> None:
    rig = make_rig()
    rig.upstream.load_adapter("v-1")
    c = client(rig)
    text = "".join(ch.choices[0].text for ch in c.completions.create(model="agent", prompt="hi", stream=True))
    assert text == "base-model: hi"
    ids = [m.id for m in c.models.list()]
    assert ids == ["agent", "base-model", "v-1"]  # the logical name first, then vLLM's base and LoRA names


def test_upstream_error_passed_through_and_recorded_as_failed(make_rig) -> None:
    rig = make_rig()
    rig.upstream.fail_next(503)
    with pytest.raises(openai.InternalServerError) as info:
        client(rig).chat.completions.create(model="agent", messages=MESSAGES)
    assert info.value.status_code == 503 and info.value.body["message"] == "injected failure"
    with pytest.raises(openai.NotFoundError):  # a model the upstream does not serve: vLLM's 404, as it is
        client(rig).chat.completions.create(model="nope", messages=MESSAGES)
    outcomes = sorted((c.upstream_status, c.outcome) for c in calls(rig))
    assert outcomes == [(404, "upstream_error"), (503, "upstream_error")]


def test_upstream_down_is_502_and_slow_is_504(make_rig) -> None:
    rig = make_rig(read_timeout_s=0.3)
    rig.upstream.delay_s = 1.0
    with pytest.raises(openai.APIStatusError) as slow:
        client(rig).chat.completions.create(model="agent", messages=MESSAGES)
    assert slow.value.status_code == 504 and slow.value.body["code"] == "upstream_timeout"
    with pytest.raises(openai.APIStatusError) as slow_stream:
        client(rig).chat.completions.create(model="agent", messages=MESSAGES, stream=True)
    assert slow_stream.value.status_code == 504
    rig.upstream.stop()
    with pytest.raises(openai.APIStatusError) as down:
        client(rig).chat.completions.create(model="agent", messages=MESSAGES)
    assert down.value.status_code == 502 and down.value.body["code"] == "upstream_unreachable"
    assert down.value.response.headers["x-request-id"].startswith("req-")
    assert sorted(c.outcome for c in calls(rig)) == ["timeout", "timeout", "unreachable"]


def test_stream_cut_mid_way_raises_in_the_client_and_is_recorded(make_rig) -> None:
    rig = make_rig()
    rig.upstream.cut_next(2)
    got: list[str] = []
    with pytest.raises(openai.APIError, match=r"broke off|ended before"):
        for ch in client(rig).chat.completions.create(model="agent", messages=MESSAGES, stream=True):
            got.append(ch.choices[0].delta.content or "")
    assert "".join(got) == "base-model: add"
    (call,) = calls(rig)
    assert call.outcome == "cut" and call.output == "base-model: add"


def test_upstream_malformed_json_is_502(make_rig) -> None:
    rig = make_rig()
    rig.upstream.malformed_next()
    with pytest.raises(openai.APIStatusError) as info:
        client(rig).chat.completions.create(model="agent", messages=MESSAGES)
    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_broken"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_body"),
        (b'{"messages": []}', 400, "invalid_body"),
        (b'{"model": "agent", "pad": "' + b"x" * (2 << 20) + b'"}', 413, "body_too_large"),
    ],
)
def test_bad_requests_get_openai_shaped_errors(make_rig, body: bytes, status: int, code: str) -> None:
    rig = make_rig(max_body_mb=1)
    answer = httpx.post(f"{rig.url}/chat/completions", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status
    error = answer.json()["error"]
    assert error["code"] == code and error["message"] and answer.headers["x-request-id"]
    assert rig.upstream.requests == []  # nothing reached the upstream


def test_huge_body_without_content_length_is_cut_off(make_rig) -> None:
    rig = make_rig(max_body_mb=1)

    def chunks():
        yield b'{"model": "agent", "pad": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    answer = httpx.post(f"{rig.url}/chat/completions", content=chunks())
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"


def test_client_disconnect_mid_stream_cancels_the_upstream(make_rig) -> None:
    rig = make_rig()
    rig.upstream.chunk_delay_s = 0.2
    body = {"model": "agent", "messages": [{"role": "user", "content": " ".join(["w"] * 30)}], "stream": True}
    with httpx.Client(timeout=10) as http, http.stream("POST", f"{rig.url}/chat/completions", json=body) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data:"):
                break
    deadline = time.monotonic() + 5
    while rig.upstream.aborted == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rig.upstream.aborted == 1 and rig.upstream.completed_streams == 0
    deadline = time.monotonic() + 5
    while not (recorded := calls(rig)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [c.outcome for c in recorded] == ["client_gone"]


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_before_the_answer_cancels_the_upstream(make_rig, stream: bool) -> None:
    # The real client gives up (its timeout) while the upstream is still thinking: the gateway must close its
    # upstream connection then, not wait for the answer, and record the call as client_gone.
    rig = make_rig()
    rig.upstream.delay_s = 3.0
    impatient = openai.OpenAI(base_url=rig.url, api_key="k", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="agent", messages=MESSAGES, stream=stream)
    impatient.close()
    deadline = time.monotonic() + 2
    while rig.upstream.abandoned == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rig.upstream.abandoned == 1  # the fake saw its connection close while it was still delaying
    (call,) = calls(rig)
    assert (call.outcome, call.upstream_status, call.streamed) == ("client_gone", 0, stream)
    assert 250 < call.latency_ms < 2900  # recorded when the client left, not when the upstream would have answered
    reply = client(rig).chat.completions.create(model="agent", messages=MESSAGES, timeout=10)  # still serving
    assert reply.choices[0].message.content == "base-model: add two numbers"


def test_upstream_key_replaces_the_products_key(make_rig) -> None:
    rig = make_rig(upstream_api_key="sk-upstream")
    client(rig).chat.completions.create(model="agent", messages=MESSAGES)
    assert rig.upstream.requests[-1][2]["authorization"] == "Bearer sk-upstream"


def test_metrics_count_calls(make_rig) -> None:
    rig = make_rig()
    client(rig).chat.completions.create(model="agent", messages=MESSAGES)
    rig.drain()
    text = httpx.get(f"{rig.root}/metrics").text
    assert 'learning_pilot_gateway_calls_total{endpoint="chat",outcome="ok"} 1.0' in text
    assert "learning_pilot_gateway_records_ingested 1.0" in text
    assert "learning_pilot_gateway_records_dropped 0.0" in text


def test_fake_upstream_refuses_unknown_models() -> None:
    with FakeOpenAIServer("b") as fake:
        answer = httpx.post(f"{fake.url}/chat/completions", json={"model": "x", "messages": []})
    assert answer.status_code == 404 and "does not exist" in answer.json()["error"]["message"]


def test_body_json_that_orjson_refuses_is_forwarded_and_recorded(make_rig) -> None:
    # An integer over 64 bits is valid JSON that orjson would read as a float: the standard library parses it, the
    # rewritten body keeps it exact, and the spool writes it (orjson refuses it there) with the standard library.
    rig = make_rig()
    raw = b'{"model": "agent", "seed": 123456789012345678901234567890, "messages": [{"role": "user", "content": "hi"}]}'
    answer = httpx.post(f"{rig.url}/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 200 and answer.headers["x-pilot-model"] == "base-model"
    assert rig.upstream.requests[-1][1]["seed"] == 123456789012345678901234567890
    (call,) = calls(rig)
    assert call.outcome == "ok" and json.loads(call.prompt)["messages"] == [{"role": "user", "content": "hi"}]


def test_fake_upstream_delay_header_and_bad_values() -> None:
    with FakeOpenAIServer("b") as fake:
        body = {"model": "b", "messages": [{"role": "user", "content": "x"}]}
        start = time.monotonic()
        assert httpx.post(f"{fake.url}/chat/completions", json=body, headers={"X-Fake-Delay-Ms": "300"}).is_success
        assert time.monotonic() - start >= 0.3
        start = time.monotonic()
        bad = httpx.post(f"{fake.url}/chat/completions", json=body, headers={"X-Fake-Delay-Ms": "soon"})
        assert bad.is_success and time.monotonic() - start < 0.3  # not a number: no delay
