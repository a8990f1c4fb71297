"""The dashboard's routes (under ``/dashboard``): four pages, a live stream, sign-in, and the actions.

Who may do what:

- reading: anyone on loopback when the server is bound to loopback; otherwise a signed-in session;
- kill switch: any signed-in person (stopping spend must be easy), with a confirmation step;
- approve / reject / resume: signed-in people on ``dashboard.approvers`` only (they let money be spent);
- every POST needs the session's CSRF token; a refused POST answers 400/401/403/409, writes a ``dashboard`` event
  naming why, and changes nothing (a refused read answers 401 and is logged only).

Actions take the same store paths as the CLI and Slack: ``pilot.supervisor.approvals.answer`` for answers and the
kill switch's ``engage``/``resume``, which the daemon lends as ``DashboardServices`` (the dashboard sits below
``pilot.service``; ``learning-pilot dashboard`` lends none, so it is a read-only view). Page queries and actions
run in the thread pool; the live stream polls ``queries.change_marker`` every ``dashboard.poll_s`` and sends a
``change`` event, on which the page's script re-fetches the page and swaps the parts (``data-live``) that changed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from pilot.dashboard import auth, queries, render
from pilot.errors import ConflictError, NotFound
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.refusals import RefusalLog
from pilot.store.status import EntityType
from pilot.supervisor import approvals

logger = logging.getLogger(__name__)

PREFIX = "/dashboard"
COOKIE = "lp_dashboard"
STREAM_S = 25.0  # one live connection's life; the browser reconnects (a daemon drain never waits on a stream)
MAX_REASON = 500
MAX_FORM = 16 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form, bounded before it is read (the forms here are a few short fields)."""
    raw = await request.body()
    if len(raw) > MAX_FORM:
        return {}
    try:
        parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items() if v}


@dataclass(frozen=True)
class DashboardServices:
    """What the process serving the dashboard lends it. ``kill``/``resume`` take (actor, reason) and return the
    kill switch's report; None makes the dashboard read-only."""

    explain: Callable[[Store, str], dict[str, Any]]
    kill: Callable[[str, str], dict[str, Any]] | None = None
    resume: Callable[[str, str], dict[str, Any]] | None = None
    serving: Callable[[], bool] | None = None  # False once the process drains: open live streams end at once

    @property
    def actions(self) -> bool:
        return self.kill is not None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warm(store: Store, records: queries.RecordRollup) -> None:
    try:
        with store.session() as s:
            records.refresh(s)
    except Exception:  # a cold rollup is only slower; the first page retries
        logger.exception("Dashboard: could not pre-read the records")


class Refused(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code, self.why = code, why


def build_router(
    store: Store, settings: Settings, services: DashboardServices, *, bound_host: str, warm: bool = True
) -> APIRouter:
    router = APIRouter(prefix=PREFIX)
    cfg = settings.dashboard
    records = queries.RecordRollup()
    if warm:  # the first read of every record happens now, not on the first person's page
        threading.Thread(target=_warm, args=(store, records), name="dashboard-warm", daemon=True).start()
    secure_cookie = not is_loopback(bound_host)
    # A refused write or sign-in writes a sampled event (one per reason per window), so a flood of forged POSTs or
    # token guesses cannot fill the store or hold its write lock.
    refusals = RefusalLog(store, None, every_s=settings.api.refusal_event_every_s, entity_type=EntityType.DASHBOARD)

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "?"

    def who(request: Request) -> auth.SignedIn | None:
        with store.session() as s:
            return auth.lookup(s, request.cookies.get(COOKIE))

    def refuse(request: Request, code: int, why: str, actor: str | None = None) -> HTMLResponse:
        if request.method != "GET":  # a refused read changes nothing worth an audit row (and scanners are noisy)
            refusals.record(request.url.path, code, why, client=client_of(request), actor=actor)
        else:
            logger.warning("Dashboard refused GET %s from %s: %s", request.url.path, client_of(request), why)
        body = render.page("message.html", title="Refused", message=why, base=PREFIX, me=None, services=services)
        return HTMLResponse(body, status_code=code)

    def reader(request: Request) -> auth.SignedIn | None:
        """Who reads (None: anonymous on loopback); raises Refused when reading needs a sign-in."""
        me = who(request)
        if me is None and not (is_loopback(bound_host) and is_loopback(client_of(request))):
            raise Refused(401, "sign in to read the dashboard from another machine")
        return me

    def actor_for(request: Request, csrf: str | None, *, approver: bool) -> auth.SignedIn:
        if not services.actions:
            raise Refused(403, "read-only dashboard (learning-pilot dashboard): actions are served by the daemon")
        me = who(request)
        if me is None:
            raise Refused(401, "no session: sign in first")
        if not auth.csrf_ok(me, csrf):
            raise Refused(403, "missing or wrong CSRF token")
        if approver and me.user_id not in cfg.approvers:
            raise Refused(403, f"{me.user_id} is not on dashboard.approvers")
        return me

    def show(request: Request, template: str, build: Callable[[], dict[str, Any]], **extra: Any) -> HTMLResponse:
        try:
            me = reader(request)
            data = build()
        except Refused as exc:
            return refuse(request, exc.code, exc.why)
        except NotFound as exc:
            return HTMLResponse(
                render.page(
                    "message.html", title="Not found", message=str(exc), base=PREFIX, me=None, services=services
                ),
                status_code=404,
            )
        body = render.page(
            template,
            data=data,
            base=PREFIX,
            me=me,
            services=services,
            approvers=cfg.approvers,
            poll_s=cfg.poll_s,
            **extra,
        )
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    @router.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> HTMLResponse:
        def build() -> dict[str, Any]:
            with store.session() as s:
                data = queries.overview(s, settings, records)
                data["runs"] = queries.runs_list(s, limit=10)
            data["charts"] = render.overview_charts(data)
            return data

        return show(request, "overview.html", build, page="overview")

    @router.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        def build() -> dict[str, Any]:
            with store.session() as s:
                data = queries.run_page(s, run_id)
            data["charts"] = render.run_charts(data)
            return data

        return show(request, "run.html", build, page="run")

    @router.get("/versions/{version_id}", response_class=HTMLResponse)
    def version_page(request: Request, version_id: str) -> HTMLResponse:
        return show(request, "version.html", lambda: services.explain(store, version_id), page="version")

    @router.get("/runs", response_class=HTMLResponse)
    def runs(request: Request) -> HTMLResponse:
        def build() -> dict[str, Any]:
            with store.session() as s:
                return {"runs": queries.runs_list(s, limit=200), "versions": queries.versions_list(s, limit=200)}

        return show(request, "lists.html", build, page="runs")

    @router.get("/data", response_class=HTMLResponse)
    def data_page(request: Request, days: int = 30) -> HTMLResponse:
        def build() -> dict[str, Any]:
            with store.session() as s:
                data = queries.data_page(s, records, window_days=max(1, min(days, 366)))
            data["charts"] = render.data_charts(data)
            return data

        return show(request, "data.html", build, page="data")

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in render.STATIC:
            return Response(status_code=404)
        return Response(
            render.static_file(name), media_type=render.STATIC[name], headers={"Cache-Control": "max-age=300"}
        )

    @router.get("/events")
    async def events(request: Request) -> Response:
        try:
            await run_in_threadpool(reader, request)
        except Refused as exc:
            return await run_in_threadpool(refuse, request, exc.code, exc.why)
        from sse_starlette.sse import EventSourceResponse, ServerSentEvent

        def marker() -> str:
            with store.session() as s:
                return queries.change_marker(s)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            last = await run_in_threadpool(marker)
            yield ServerSentEvent(data=last, event="hello", retry=1000)
            loop = asyncio.get_running_loop()
            ends = loop.time() + STREAM_S

            def going() -> bool:
                return services.serving is None or services.serving()

            while loop.time() < ends and going() and not await request.is_disconnected():
                await asyncio.sleep(cfg.poll_s)
                now = await run_in_threadpool(marker)
                if now != last:
                    last = now
                    yield ServerSentEvent(data=now, event="change")

        return EventSourceResponse(stream(), ping=10, headers={"X-Accel-Buffering": "no"})

    @router.get("/signin", response_class=HTMLResponse)
    def signin_form(request: Request) -> HTMLResponse:
        return HTMLResponse(render.page("signin.html", base=PREFIX, me=who(request), services=services, error=None))

    @router.post("/signin")
    async def signin(request: Request) -> Response:
        token = (await read_form(request)).get("token", "")
        return await run_in_threadpool(do_signin, request, token)

    def do_signin(request: Request, token: str) -> Response:
        with store.session(write=True) as s:
            result = auth.sign_in(s, token[:200], hours=cfg.session_hours, client=client_of(request))
        if result is None:
            why = "unknown or revoked token"
            refusals.record(f"{PREFIX}/signin", 401, why, client=client_of(request), entity_id="sign-in")
            body = render.page("signin.html", base=PREFIX, me=None, services=services, error=why)
            return HTMLResponse(body, status_code=401)
        cookie, _who = result
        response = RedirectResponse(f"{PREFIX}/", status_code=303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(cfg.session_hours * 3600),
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=secure_cookie,
        )
        return response

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        csrf = (await read_form(request)).get("csrf", "")
        return await run_in_threadpool(do_signout, request, csrf)

    def do_signout(request: Request, csrf: str) -> Response:
        me = who(request)
        if me is not None and auth.csrf_ok(me, csrf):
            with store.session(write=True) as s:
                auth.sign_out(s, request.cookies.get(COOKIE))
        response = RedirectResponse(f"{PREFIX}/", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    @router.post("/approvals/{approval_id}/{verb}")
    async def answer(request: Request, approval_id: str, verb: str) -> Response:
        form = await read_form(request)
        return await run_in_threadpool(do_answer, request, approval_id, verb, form.get("csrf"), form.get("note", ""))

    def do_answer(request: Request, approval_id: str, verb: str, csrf: str | None, note: str) -> Response:
        if verb not in ("approve", "reject"):
            return refuse(request, 404, f"unknown action {verb!r}")
        try:
            me = actor_for(request, csrf, approver=True)
        except Refused as exc:
            return refuse(request, exc.code, exc.why)
        text = f"via the dashboard{': ' + note.strip()[:MAX_REASON] if note.strip() else ''}"
        try:
            with store.session(write=True) as s:
                approvals.answer(s, approval_id, approve=verb == "approve", actor=me.actor, note=text)
        except NotFound as exc:
            return refuse(request, 404, str(exc), me.actor)
        except ConflictError as exc:
            return refuse(request, 409, str(exc), me.actor)
        logger.info("Approval %s %sd in the dashboard by %s", approval_id, verb, me.user_id)
        return RedirectResponse(f"{PREFIX}/", status_code=303)

    def do_switch(request: Request, verb: str, form: dict[str, str]) -> Response:
        """Kill (any signed-in person) or resume (approvers), each after its confirmation step."""
        try:
            me = actor_for(request, form.get("csrf"), approver=verb == "resume")
        except Refused as exc:
            return refuse(request, exc.code, exc.why)
        if form.get("confirm") != verb:
            return refuse(request, 400, f"{verb} needs its confirmation (confirm={verb})", me.actor)
        reason = (form.get("reason", "").strip() or f"{verb} from the dashboard")[:MAX_REASON]
        if verb == "resume":
            assert services.resume is not None
            services.resume(me.actor, reason)
            return RedirectResponse(f"{PREFIX}/", status_code=303)
        assert services.kill is not None
        report = services.kill(me.actor, reason)
        return HTMLResponse(
            render.page("report.html", title="Kill switch", report=report, base=PREFIX, me=me, services=services),
            status_code=200 if report.get("ok") else 500,
        )

    @router.post("/kill")
    async def kill(request: Request) -> Response:
        return await run_in_threadpool(do_switch, request, "kill", await read_form(request))

    @router.post("/resume")
    async def resume(request: Request) -> Response:
        return await run_in_threadpool(do_switch, request, "resume", await read_form(request))

    return router


def mount(
    app: FastAPI, store: Store, settings: Settings, services: DashboardServices, *, bound_host: str, warm: bool = True
) -> None:
    """Add the dashboard to an app (the daemon's API, or the standalone one)."""
    app.include_router(build_router(store, settings, services, bound_host=bound_host, warm=warm))


def create_standalone_app(
    store: Store, settings: Settings, services: DashboardServices, *, bound_host: str, warm: bool = True
) -> FastAPI:
    app = FastAPI(title="Learning Pilot dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    mount(app, store, settings, services, bound_host=bound_host, warm=warm)

    @app.get("/")
    def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    return app
