"""The gateway's HTTP surface: an OpenAI-compatible proxy that records every call (Starlette, one aiohttp pool).

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streamed SSE or not), ``GET /v1/models``,
``POST /v1/feedback``, ``GET /healthz``, ``GET /metrics``.

Invariants:
- A request never waits on the store or the disk: the route is read from the cache (pilot/gateway/routing.py)
  and the call is handed to the spool (pilot/gateway/spool.py) after the answer is built; a full spool drops the
  record, never the request.
- Every answer carries ``X-Request-Id``, ``X-Session-Id`` and ``X-Pilot-Model-Version`` (``base`` for the base
  model). Errors of the gateway's own are in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``):
  400 bad JSON or body, 401/403 producer token, 413 body too large, 502 upstream unreachable, broken or not JSON,
  504 upstream too slow; an upstream error status and body are passed through as they are. A stream that breaks
  after its first byte ends with an SSE ``error`` event (the ``openai`` client raises it).
- A client that leaves mid-stream closes the upstream connection (the upstream request is cancelled) and the
  call is recorded as ``client_gone``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pilot.gateway.auth import FEEDBACK_WRITE, LIVE_WRITE, ProducerCheck, Refused, raw_token
from pilot.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from pilot.gateway.routing import RouteCache
from pilot.gateway.spool import Spool
from pilot.settings import GatewaySettings
from pilot.store import Store

logger = logging.getLogger(__name__)

MAX_RECORDED_RESPONSE = 1 << 20  # bytes of an answer kept for the record (a longer stream is still relayed whole)
_HOP = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
     "proxy-authorization", "proxy-connection", "accept-encoding", "x-session-id", "x-producer-token"}
)  # fmt: skip
_PASS_BACK = ("content-type", "openai-processing-ms", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests")


def openai_error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status)


def _sse_error(message: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@dataclass
class Gateway:
    """What the app needs, built once by pilot/gateway/server.py (or a test)."""

    settings: GatewaySettings
    store: Store
    routes: RouteCache
    spool: Spool
    client: aiohttp.ClientSession | None  # made on the serving loop (pilot/gateway/server.py)
    metrics: GatewayMetrics
    on_feedback: Callable[[dict[str, Any], str], dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def max_body(self) -> int:
        return int(self.settings.max_body_mb * 1024 * 1024)


@dataclass
class _Call:
    """One proxied call, as it will be spooled."""

    request_id: str
    session_id: str
    endpoint: str
    model: str
    version: str | None
    producer: str
    request: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)
    ts: float = field(default_factory=time.time)

    def headers(self) -> dict[str, str]:
        return {
            "x-request-id": self.request_id,
            "x-session-id": self.session_id,
            "x-pilot-model-version": self.version or "base",
            "x-pilot-model": self.model,
        }

    def unreachable(self, gw: Gateway, exc: BaseException, *, streamed: bool) -> Response:
        """The upstream could not be reached or did not answer: a 502/504 of our own, recorded as failed."""
        status, code, message = _transport_error(exc)
        self.record(gw, status=status, outcome=code.removeprefix("upstream_"), response="", streamed=streamed)
        response = openai_error(status, message, code, "upstream_error")
        response.headers.update(self.headers())
        return response

    def record(self, gw: Gateway, *, status: int, outcome: str, response: str, streamed: bool,
               ttft_ms: float | None = None) -> None:  # fmt: skip
        latency_ms = (time.perf_counter() - self.started) * 1000
        gw.metrics.observe(self.endpoint, outcome, latency_ms)
        gw.spool.append(
            {
                "request_id": self.request_id,
                "session_id": self.session_id,
                "endpoint": self.endpoint,
                "model": self.model,
                "version": self.version,
                "producer": self.producer,
                "ts": self.ts,
                "latency_ms": round(latency_ms, 3),
                "ttft_ms": None if ttft_ms is None else round(ttft_ms, 3),
                "status": status,
                "outcome": outcome,
                "streamed": streamed,
                "request": self.request,
                "response": response,
            }
        )


async def _read_body(request: Request, limit: int) -> bytes | Response:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return openai_error(413, f"request body over {limit} bytes", "body_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return openai_error(413, f"request body over {limit} bytes", "body_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        return openai_error(400, "the client left before sending its whole body", "client_disconnected")
    return b"".join(chunks)


def _upstream_headers(gw: Gateway, request: Request) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k not in _HOP}
    headers["accept-encoding"] = "identity"  # relayed bytes are what the client reads
    if gw.settings.upstream_api_key is not None:
        headers["authorization"] = f"Bearer {gw.settings.upstream_api_key.get_secret_value()}"
    return headers


UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


def _transport_error(exc: BaseException) -> tuple[int, str, str]:
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's connect and read timeouts are TimeoutErrors too
        return 504, "upstream_timeout", f"the upstream did not answer in time ({type(exc).__name__})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return 502, "upstream_unreachable", f"the upstream is unreachable: {exc}"
    return 502, "upstream_broken", f"the upstream connection failed: {type(exc).__name__}: {exc}"


def create_app(gw: Gateway) -> Starlette:
    upstream = gw.settings.upstream_url.rstrip("/")
    logical = gw.settings.model_name

    check = ProducerCheck(gw.store, required=gw.settings.producer_auth)

    async def producer(request: Request, scope: str) -> str:
        # The bearer token is the producer's on /v1/feedback (nothing goes upstream), and on calls when the gateway
        # replaces the product's key upstream.
        bearer = scope == FEEDBACK_WRITE or gw.settings.upstream_api_key is not None
        token = raw_token(request.headers, bearer_is_producer=bearer)
        return await check.identity(token, scope)

    async def proxy(request: Request, endpoint: str, path: str) -> Response:
        request_id = f"req-{uuid.uuid4().hex}"
        base_headers = {"x-request-id": request_id}
        try:
            who = await producer(request, LIVE_WRITE)
        except Refused as exc:
            gw.metrics.refused.labels(str(exc.status)).inc()
            response = openai_error(exc.status, exc.reason, "invalid_producer_token", "authentication_error")
            response.headers.update(base_headers)
            return response
        raw = await _read_body(request, gw.max_body)
        if isinstance(raw, Response):
            raw.headers.update(base_headers)
            gw.metrics.refused.labels(str(raw.status_code)).inc()
            return raw
        try:
            body = json.loads(raw)
        except ValueError as exc:
            gw.metrics.refused.labels("400").inc()
            response = openai_error(400, f"the body is not valid JSON: {exc}", "invalid_json")
            response.headers.update(base_headers)
            return response
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            gw.metrics.refused.labels("400").inc()
            response = openai_error(400, 'the body must be a JSON object with a string "model"', "invalid_body")
            response.headers.update(base_headers)
            return response
        user = body.get("user")
        session_id = (request.headers.get("x-session-id") or (user if isinstance(user, str) else "") or "")[:200]
        session_id = session_id or f"gw-{uuid.uuid4().hex}"
        if body["model"] == logical:
            route = gw.routes.route(session_id)
            body["model"], version = route.model, route.version
        else:
            version = None
        call = _Call(request_id, session_id, endpoint, body["model"], version, who, body)
        headers = _upstream_headers(gw, request)
        content = json.dumps(body).encode()
        if body.get("stream") is True:
            return await _stream(gw, call, f"{upstream}{path}", headers, content)
        assert gw.client is not None
        try:
            async with gw.client.post(f"{upstream}{path}", data=content, headers=headers) as answer:
                data = await answer.read()
                status, answer_headers = answer.status, answer.headers
        except UPSTREAM_ERRORS as exc:
            return call.unreachable(gw, exc, streamed=False)
        if status == 200:
            try:
                json.loads(data)
            except ValueError:
                call.record(gw, status=200, outcome="broken", response="", streamed=False)
                message = "the upstream answered 200 with a body that is not JSON"
                response = openai_error(502, message, "upstream_broken", "upstream_error")
                response.headers.update(call.headers())
                return response
        outcome = "ok" if status == 200 else "upstream_error"
        text = data[:MAX_RECORDED_RESPONSE].decode("utf-8", "replace")
        call.record(gw, status=status, outcome=outcome, response=text, streamed=False)
        out_headers = {k: v for k in _PASS_BACK if (v := answer_headers.get(k))}
        if answer_headers.get("x-request-id"):
            out_headers["x-upstream-request-id"] = answer_headers["x-request-id"]
        return Response(data, status, headers={**out_headers, **call.headers()})

    async def chat(request: Request) -> Response:
        return await proxy(request, "chat", "/chat/completions")

    async def completions(request: Request) -> Response:
        return await proxy(request, "completions", "/completions")

    async def models(request: Request) -> Response:
        assert gw.client is not None
        try:
            async with gw.client.get(f"{upstream}/models", headers=_upstream_headers(gw, request)) as answer:
                body, status = await answer.read(), answer.status
        except UPSTREAM_ERRORS as exc:
            status, code, message = _transport_error(exc)
            return openai_error(status, message, code, "upstream_error")
        if status != 200:
            return Response(body, status, media_type="application/json")
        try:
            listing = json.loads(body)
            data = list(listing.get("data") or [])
        except (ValueError, AttributeError):
            return openai_error(502, "the upstream's model list is not JSON", "upstream_broken", "upstream_error")
        route = gw.routes.route(request.headers.get("x-session-id") or "models")
        logical_entry = {"id": logical, "object": "model", "owned_by": "learning-pilot", "root": route.model,
                         "parent": None}  # fmt: skip
        return JSONResponse({"object": "list", "data": [logical_entry, *data]})

    async def feedback(request: Request) -> Response:
        try:
            who = await producer(request, FEEDBACK_WRITE)
        except Refused as exc:
            return openai_error(exc.status, exc.reason, "invalid_producer_token", "authentication_error")
        raw = await _read_body(request, 1 << 20)
        if isinstance(raw, Response):
            return raw
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return openai_error(400, f"the body is not valid JSON: {exc}", "invalid_json")
        assert gw.on_feedback is not None
        handler = gw.on_feedback
        result = await run_in_threadpool(handler, body, who)
        status = int(result.pop("_status", 200))
        return JSONResponse(result, status)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "champion": gw.routes.state.champion})

    async def metrics(request: Request) -> Response:
        return Response(gw.metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


async def _stream(gw: Gateway, call: _Call, url: str, headers: dict[str, str], content: bytes) -> Response:
    assert gw.client is not None
    try:
        upstream = await gw.client.post(url, data=content, headers=headers)
    except UPSTREAM_ERRORS as exc:
        return call.unreachable(gw, exc, streamed=True)
    if upstream.status != 200:
        try:
            data = await upstream.read()
        except UPSTREAM_ERRORS:
            data = b""
        finally:
            upstream.release()
        call.record(gw, status=upstream.status, outcome="upstream_error",
                    response=data[:MAX_RECORDED_RESPONSE].decode("utf-8", "replace"), streamed=True)  # fmt: skip
        return Response(data, upstream.status, headers={"content-type": "application/json", **call.headers()})

    async def relay() -> AsyncIterator[bytes]:
        kept: list[bytes] = []
        size, tail, ttft, outcome = 0, b"", None, "cut"
        try:
            async for chunk in upstream.content.iter_any():
                if ttft is None:
                    ttft = (time.perf_counter() - call.started) * 1000
                if size < MAX_RECORDED_RESPONSE:
                    kept.append(chunk)
                    size += len(chunk)
                tail = (tail + chunk)[-32:]
                yield chunk
            if b"[DONE]" in tail:
                outcome = "ok"
            else:
                yield _sse_error("the upstream stream ended before [DONE]", "upstream_cut")
        except TimeoutError:
            outcome = "timeout"
            yield _sse_error("the upstream stream stalled past the read timeout", "upstream_timeout")
        except aiohttp.ClientError as exc:
            outcome = "cut"
            yield _sse_error(f"the upstream stream broke off: {type(exc).__name__}", "upstream_cut")
        except BaseException:  # cancelled: the client left
            outcome = "client_gone"
            raise
        finally:
            if outcome == "ok":
                upstream.release()  # read to the end: the connection goes back to the pool
            else:
                upstream.close()  # closes the upstream connection mid-stream: the upstream request ends
            text = b"".join(kept).decode("utf-8", "replace")
            call.record(gw, status=200, outcome=outcome, response=text, streamed=True, ttft_ms=ttft)

    out_headers = {"content-type": upstream.headers.get("content-type", "text/event-stream"),
                   "cache-control": "no-store", "x-accel-buffering": "no", **call.headers()}  # fmt: skip
    return StreamingResponse(relay(), headers=out_headers)
