"""The gateway's HTTP surface: an OpenAI-compatible proxy that records every call (aiohttp server and client).

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
- A client that leaves before its answer ends, streamed or not, closes the upstream connection (the upstream
  request is cancelled) and the call is recorded as ``client_gone``: the server runs with aiohttp's handler
  cancellation on (pilot/gateway/server.py), so a lost connection cancels its handler wherever it waits.
- The request body goes upstream as the product sent it; only when the logical model name is rewritten are the
  bytes re-serialised (orjson). One framework serves and forwards (aiohttp, C HTTP parser on both sides): the
  hot path's CPU per call is what bounds the added latency under load (docs/gateway.md "Figures").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from pilot.gateway.auth import FEEDBACK_WRITE, LIVE_WRITE, ProducerCheck, Refused, raw_token
from pilot.gateway.metrics import CONTENT_TYPE, GatewayMetrics, WorkerTotals
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
_HOP_AND_AUTH = _HOP | {"authorization"}
_PASS_BACK = ("content-type", "openai-processing-ms", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests")


_LONG_DIGITS = re.compile(rb"\d{20}")  # an integer orjson would read as a float (over 64 bits), or a long digit string


def parse(raw: bytes) -> tuple[Any, bool]:
    """The JSON value and whether orjson read it exactly. The standard library reads what orjson refuses (NaN) or
    would change (an integer over 64 bits becomes a float): then ``dumps(value, exact=False)`` writes it back."""
    if not _LONG_DIGITS.search(raw):
        try:
            return orjson.loads(raw), True
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw), False  # raises ValueError when it is not JSON either


def loads(raw: bytes) -> Any:
    return parse(raw)[0]


def dumps(value: Any, *, exact: bool = True) -> bytes:
    if exact:
        try:
            return orjson.dumps(value)
        except TypeError:  # an integer over 64 bits
            pass
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def openai_error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _sse_error(message: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


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
    totals: WorkerTotals | None = None  # several workers on one port: /metrics sums them (pilot/gateway/metrics.py)

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

    def unreachable(self, gw: Gateway, exc: BaseException, *, streamed: bool) -> web.Response:
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


async def _read_body(request: web.Request, limit: int) -> bytes | web.Response:
    declared = request.content_length
    if declared is not None and declared > limit:
        return _closing(openai_error(413, f"request body over {limit} bytes", "body_too_large"))
    chunks, size = [], 0
    try:
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                return _closing(openai_error(413, f"request body over {limit} bytes", "body_too_large"))
            chunks.append(chunk)
    except (ConnectionError, HttpProcessingError, aiohttp.ClientPayloadError):
        return _closing(openai_error(400, "the client left before sending its whole body", "client_disconnected"))
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _closing(response: web.Response) -> web.Response:
    """The rest of the body is not read: the connection closes after the answer (no lingering read of it)."""
    response.force_close()
    return response


def _upstream_headers(gw: Gateway, headers: Mapping[str, str]) -> dict[str, str]:
    drop = _HOP_AND_AUTH if gw.settings.upstream_api_key is not None else _HOP
    out = {k: v for k, v in headers.items() if k.lower() not in drop}
    out["accept-encoding"] = "identity"  # relayed bytes are what the client reads
    if gw.settings.upstream_api_key is not None:
        out["authorization"] = f"Bearer {gw.settings.upstream_api_key.get_secret_value()}"
    return out


UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


def _transport_error(exc: BaseException) -> tuple[int, str, str]:
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's connect and read timeouts are TimeoutErrors too
        return 504, "upstream_timeout", f"the upstream did not answer in time ({type(exc).__name__})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return 502, "upstream_unreachable", f"the upstream is unreachable: {exc}"
    return 502, "upstream_broken", f"the upstream connection failed: {type(exc).__name__}: {exc}"


def _refusal(gw: Gateway, response: web.Response, request_id: str) -> web.Response:
    gw.metrics.refused.labels(str(response.status)).inc()
    response.headers["x-request-id"] = request_id
    return response


def create_app(gw: Gateway) -> web.Application:
    upstream = gw.settings.upstream_url.rstrip("/")
    logical = gw.settings.model_name

    check = ProducerCheck(gw.store, required=gw.settings.producer_auth)

    async def producer(request: web.Request, scope: str) -> str:
        # The bearer token is the producer's on /v1/feedback (nothing goes upstream), and on calls when the gateway
        # replaces the product's key upstream.
        bearer = scope == FEEDBACK_WRITE or gw.settings.upstream_api_key is not None
        token = raw_token(request.headers, bearer_is_producer=bearer)
        return await check.identity(token, scope)

    async def proxy(request: web.Request, endpoint: str, path: str) -> web.StreamResponse:
        request_id = f"req-{uuid.uuid4().hex}"
        try:
            who = await producer(request, LIVE_WRITE)
        except Refused as exc:
            refused = openai_error(exc.status, exc.reason, "invalid_producer_token", "authentication_error")
            return _refusal(gw, refused, request_id)
        raw = await _read_body(request, gw.max_body)
        if isinstance(raw, web.Response):
            return _refusal(gw, raw, request_id)
        try:
            body, exact = parse(raw)
        except ValueError as exc:
            return _refusal(gw, openai_error(400, f"the body is not valid JSON: {exc}", "invalid_json"), request_id)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            message = 'the body must be a JSON object with a string "model"'
            return _refusal(gw, openai_error(400, message, "invalid_body"), request_id)
        headers = request.headers
        user = body.get("user")
        session_id = (headers.get("x-session-id") or (user if isinstance(user, str) else "") or "")[:200]
        session_id = session_id or f"gw-{uuid.uuid4().hex}"
        content = raw  # forwarded as the product sent it, unless the logical name is rewritten
        if body["model"] == logical:
            route = gw.routes.route(session_id)
            body["model"], version = route.model, route.version
            content = dumps(body, exact=exact)  # orjson: a few microseconds for a chat body; key order kept
        else:
            version = None
        call = _Call(request_id, session_id, endpoint, body["model"], version, who, body)
        out_headers = _upstream_headers(gw, headers)
        send = _Send(gw, call, f"{upstream}{path}", out_headers, content, exact)
        if body.get("stream") is True:
            return await _stream(gw, request, call, send)
        status = 0  # none yet: a client that leaves before the upstream's headers is recorded with status 0
        try:
            async with await send() as answer:
                status = answer.status
                data = await answer.read()
                answer_headers = answer.headers
        except UPSTREAM_ERRORS as exc:
            return call.unreachable(gw, exc, streamed=False)
        except asyncio.CancelledError:  # the client left: aiohttp has closed the upstream connection
            call.record(gw, status=status, outcome="client_gone", response="", streamed=False)
            raise
        if status == 200:
            try:
                loads(data)
            except ValueError:
                call.record(gw, status=200, outcome="broken", response="", streamed=False)
                message = "the upstream answered 200 with a body that is not JSON"
                response = openai_error(502, message, "upstream_broken", "upstream_error")
                response.headers.update(call.headers())
                return response
        outcome = "ok" if status == 200 else "upstream_error"
        text = data[:MAX_RECORDED_RESPONSE].decode("utf-8", "replace")
        call.record(gw, status=status, outcome=outcome, response=text, streamed=False)
        back = call.headers()
        for k in _PASS_BACK:
            if v := answer_headers.get(k):
                back[k] = v
        if upstream_id := answer_headers.get("x-request-id"):
            back["x-upstream-request-id"] = upstream_id
        return web.Response(body=data, status=status, headers=back)

    async def chat(request: web.Request) -> web.StreamResponse:
        return await proxy(request, "chat", "/chat/completions")

    async def completions(request: web.Request) -> web.StreamResponse:
        return await proxy(request, "completions", "/completions")

    async def models(request: web.Request) -> web.Response:
        assert gw.client is not None
        try:
            async with gw.client.get(f"{upstream}/models", headers=_upstream_headers(gw, request.headers)) as answer:
                body, status = await answer.read(), answer.status
        except UPSTREAM_ERRORS as exc:
            status, code, message = _transport_error(exc)
            return openai_error(status, message, code, "upstream_error")
        if status != 200:
            return web.Response(body=body, status=status, content_type="application/json")
        try:
            listing = loads(body)
            data = list(listing.get("data") or [])
        except (ValueError, AttributeError):
            return openai_error(502, "the upstream's model list is not JSON", "upstream_broken", "upstream_error")
        route = gw.routes.route(request.headers.get("x-session-id") or "models")
        logical_entry = {"id": logical, "object": "model", "owned_by": "learning-pilot", "root": route.model,
                         "parent": None}  # fmt: skip
        return _json({"object": "list", "data": [logical_entry, *data]})

    async def feedback(request: web.Request) -> web.Response:
        try:
            who = await producer(request, FEEDBACK_WRITE)
        except Refused as exc:
            return openai_error(exc.status, exc.reason, "invalid_producer_token", "authentication_error")
        raw = await _read_body(request, 1 << 20)
        if isinstance(raw, web.Response):
            return raw
        try:
            body = loads(raw)
        except ValueError as exc:
            return openai_error(400, f"the body is not valid JSON: {exc}", "invalid_json")
        assert gw.on_feedback is not None
        result = await asyncio.get_running_loop().run_in_executor(None, gw.on_feedback, body, who)
        status = int(result.pop("_status", 200))
        return _json(result, status)

    async def healthz(request: web.Request) -> web.Response:
        return _json({"ok": True, "champion": gw.routes.state.champion, **gw.extra})

    async def metrics(request: web.Request) -> web.Response:
        totals = gw.totals if request.query.get("scope") != "worker" else None
        body = gw.metrics.render() if totals is None else totals.render()
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE})

    app = web.Application(client_max_size=gw.max_body)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models, allow_head=False)
    app.router.add_post("/v1/feedback", feedback)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    return app


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(value), status=status, content_type="application/json")


@dataclass
class _Send:
    """Sends the call upstream. When the upstream does not know the adapter this gateway routed the session to
    (404: a rollback took it off the model server before this process re-read its routes, which it does every
    ``route_refresh_s``), the routes are re-read at once and, if the session's route changed, the call is sent
    once more with the new model: the upstream did not run it, so nothing is done twice."""

    gw: Gateway
    call: _Call
    url: str
    headers: dict[str, str]
    content: bytes
    exact: bool

    async def __call__(self) -> aiohttp.ClientResponse:
        gw, call = self.gw, self.call
        assert gw.client is not None
        answer = await gw.client.post(self.url, data=self.content, headers=self.headers)
        if answer.status != 404 or call.version is None or call.model == gw.routes.base_model:
            return answer
        await answer.read()  # small, and kept on the response, which is returned when there is no better route
        try:
            await asyncio.get_running_loop().run_in_executor(None, gw.routes.refresh)
        except Exception:  # the store is down: the product gets the upstream's 404
            logger.warning("upstream 404 for %s; the routes could not be re-read", call.model, exc_info=True)
            return answer
        route = gw.routes.route(call.session_id)
        if route.model == call.model:
            return answer
        logger.warning("the upstream has no %s (rolled back?): session %s goes to %s", call.model,
                       call.session_id, route.model)  # fmt: skip
        gw.metrics.rerouted.inc()
        call.model, call.version = route.model, route.version
        call.request["model"] = route.model
        self.content = dumps(call.request, exact=self.exact)
        return await gw.client.post(self.url, data=self.content, headers=self.headers)


async def _stream(gw: Gateway, request: web.Request, call: _Call, send: _Send) -> web.StreamResponse:
    try:
        upstream = await send()
    except UPSTREAM_ERRORS as exc:
        return call.unreachable(gw, exc, streamed=True)
    except asyncio.CancelledError:  # the client left before the upstream's headers (the connection is closed)
        call.record(gw, status=0, outcome="client_gone", response="", streamed=True)
        raise
    if upstream.status != 200:
        try:
            data = await upstream.read()
        except UPSTREAM_ERRORS:
            data = b""
        finally:
            upstream.release()
        call.record(gw, status=upstream.status, outcome="upstream_error",
                    response=data[:MAX_RECORDED_RESPONSE].decode("utf-8", "replace"), streamed=True)  # fmt: skip
        return web.Response(body=data, status=upstream.status,
                            headers={"content-type": "application/json", **call.headers()})  # fmt: skip

    out = web.StreamResponse(
        headers={"content-type": upstream.headers.get("content-type", "text/event-stream"),
                 "cache-control": "no-store", "x-accel-buffering": "no", **call.headers()}
    )  # fmt: skip
    kept: list[bytes] = []
    size, tail, ttft = 0, b"", None
    outcome, last = "cut", b""  # last: the SSE error event that ends a broken stream, written after the record
    try:
        await out.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                if ttft is None:
                    ttft = (time.perf_counter() - call.started) * 1000
                if size < MAX_RECORDED_RESPONSE:
                    kept.append(chunk)
                    size += len(chunk)
                tail = (tail + chunk)[-32:]
                await _relay(out, chunk)
        except TimeoutError:
            outcome = "timeout"
            last = _sse_error("the upstream stream stalled past the read timeout", "upstream_timeout")
        except aiohttp.ClientError as exc:
            outcome = "cut"
            last = _sse_error(f"the upstream stream broke off: {type(exc).__name__}", "upstream_cut")
        else:
            if b"[DONE]" in tail:
                outcome = "ok"
            else:
                last = _sse_error("the upstream stream ended before [DONE]", "upstream_cut")
    except _ClientGone:  # the client left: the upstream request is cancelled below
        outcome = "client_gone"
    except asyncio.CancelledError:  # the client left while the upstream was silent, or the server is closing
        outcome = "client_gone"
        raise
    finally:
        if outcome == "ok":
            upstream.release()  # read to the end: the connection goes back to the pool
        else:
            upstream.close()  # closes the upstream connection mid-stream: the upstream request ends
        text = b"".join(kept).decode("utf-8", "replace")
        call.record(gw, status=200, outcome=outcome, response=text, streamed=True, ttft_ms=ttft)
    if outcome != "client_gone":  # recorded first: a client that has read the end may ask for its record at once
        with contextlib.suppress(_ClientGone, ConnectionError, RuntimeError):
            if last:
                await _relay(out, last)
            await out.write_eof()
    return out


class _ClientGone(Exception):
    """Writing to the product failed: it closed the connection."""


async def _relay(out: web.StreamResponse, chunk: bytes) -> None:
    try:
        await out.write(chunk)
    except (ConnectionError, RuntimeError) as exc:  # RuntimeError: aiohttp's "transport is closing"
        raise _ClientGone from exc
