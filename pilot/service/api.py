"""The daemon's HTTP API (FastAPI on uvicorn, bound to 127.0.0.1 unless configured).

Routes: ``GET /healthz`` (the process answers), ``GET /readyz`` (store reachable and migrated, scheduler up),
``GET /metrics`` (Prometheus text, the daemon's own registry), ``POST /v1/kill`` and ``POST /v1/resume``
(bearer ``api.kill_token``, compared in constant time), ``POST /slack/actions`` (Slack interactivity, see
pilot/service/slack_actions.py), ``POST /v1/records`` (batch ingest by producers holding a token, see
pilot/service/api_records.py).

Invariants: every state-changing route needs a credential (the kill token, a Slack signature, a producer
token); a refused request answers 401/403, changes nothing, counts in ``learning_pilot_api_refusals_total`` and
writes a sampled ``api`` event (pilot/service/api_guard.py). Every body is bounded before it is read: over its
route's limit (``MAX_*_BODY``) by ``Content-Length`` it is refused unread, otherwise read as a counted stream.
Blocking work (store, provider, Slack) runs in the thread pool, never on the event loop, so ``/healthz`` and
``/metrics`` answer while a kill is destroying instances.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from pilot.context import PilotContext
from pilot.service.api_guard import BodyTooLarge, RefusalLog, read_body
from pilot.service.api_records import bearer as _bearer
from pilot.service.metrics import CONTENT_TYPE, PilotMetrics

logger = logging.getLogger(__name__)

MAX_RECORDS_BODY = 16 * 1024 * 1024
MAX_KILL_BODY = 64 * 1024
MAX_SLACK_BODY = 8 * 1024  # an interactivity click with our approval message is about 3 KB


@dataclass
class SchedulerHooks:
    """What the daemon lends the API: its metrics, whether its scheduler runs, and what to do on kill/resume."""

    metrics: PilotMetrics | None = None
    is_ready: Callable[[], bool] | None = None
    on_kill: Callable[[], None] | None = None
    on_resume: Callable[[], None] | None = None


def create_app(ctx: PilotContext, *, scheduler_hooks: SchedulerHooks | None = None) -> FastAPI:
    hooks = scheduler_hooks or SchedulerHooks()
    metrics = hooks.metrics or PilotMetrics(ctx.store, ctx.settings)
    app = FastAPI(title="Learning Pilot", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.state.metrics = metrics
    from pilot.service import api_route

    app.include_router(api_route.router)
    if ctx.settings.knowledge.enabled:
        from pilot.service import api_kb  # Qdrant is imported only when the knowledge base is on

        app.include_router(api_kb.router)

    refusals = RefusalLog(ctx.store, metrics.api_refusals, every_s=ctx.settings.api.refusal_event_every_s)
    app.state.refusals = refusals

    def refuse(route: str, code: int, why: str, request: Request) -> JSONResponse:
        client = request.client.host if request.client else "?"
        refusals.record(route, code, why, client=client)
        return JSONResponse({"error": why}, status_code=code)

    def authorised(route: str, request: Request) -> JSONResponse | None:
        """None when the bearer token is right; else the refusal (already recorded)."""
        configured = ctx.settings.api.kill_token
        if configured is None or not configured.get_secret_value():
            return refuse(route, 403, "api.kill_token is not configured; use the CLI", request)
        given = _bearer(request)
        if given is None:
            return refuse(route, 401, "missing bearer token", request)
        if not hmac.compare_digest(given.encode(), configured.get_secret_value().encode()):
            return refuse(route, 401, "wrong bearer token", request)
        return None

    async def json_body(request: Request, limit: int) -> dict[str, Any]:
        try:
            raw = await read_body(request, limit)
        except BodyTooLarge:
            return {}  # the token was right; an oversized note only loses the reason and the name
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        problems: list[str] = []
        try:
            ctx.store.check_ready()
            with ctx.store.session() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means not ready; the message is for the operator
            problems.append(f"store: {exc}")
        if hooks.is_ready is not None and not hooks.is_ready():
            problems.append("scheduler not running")
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    def metrics_route() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/kill")
    async def kill(request: Request) -> JSONResponse:
        refusal = await run_in_threadpool(authorised, "/v1/kill", request)
        if refusal is not None:
            return refusal
        body = await json_body(request, MAX_KILL_BODY)
        reason = str(body.get("reason") or "POST /v1/kill")[:500]
        actor = f"human:{str(body.get('by') or 'api')[:100]}"

        def work() -> dict[str, Any]:
            from pilot.service.killswitch import engage

            if hooks.on_kill is not None:
                hooks.on_kill()
            return engage(ctx, actor=actor, reason=reason).to_dict()

        report = await run_in_threadpool(work)
        return JSONResponse(report, status_code=200 if report["ok"] else 500)

    @app.post("/v1/resume")
    async def resume(request: Request) -> JSONResponse:
        refusal = await run_in_threadpool(authorised, "/v1/resume", request)
        if refusal is not None:
            return refusal
        body = await json_body(request, MAX_KILL_BODY)
        reason = str(body.get("reason") or "POST /v1/resume")[:500]
        actor = f"human:{str(body.get('by') or 'api')[:100]}"

        def work() -> dict[str, Any]:
            from pilot.service.killswitch import resume as do_resume

            result = do_resume(ctx, actor=actor, reason=reason)
            if hooks.on_resume is not None:
                hooks.on_resume()
            return result

        return JSONResponse(await run_in_threadpool(work))

    @app.post("/slack/actions")
    async def slack_actions(request: Request) -> Response:
        from pilot.service.slack_actions import handle_action

        try:
            body = await read_body(request, MAX_SLACK_BODY)
        except BodyTooLarge:
            return await run_in_threadpool(refuse, "/slack/actions", 413, f"body over {MAX_SLACK_BODY} bytes", request)
        result = await run_in_threadpool(handle_action, ctx, body, dict(request.headers), refusals=refusals)
        if result.accepted:
            return Response(status_code=200)  # Slack wants an empty 200 within 3 s; the message is updated apart
        return JSONResponse({"error": result.message}, status_code=result.status_code)

    from pilot.service.api_records import add_record_routes

    add_record_routes(app, ctx, max_body=MAX_RECORDS_BODY, refusals=refusals)
    return app
