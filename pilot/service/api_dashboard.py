"""The daemon's side of the web dashboard: what it lends the dashboard (the kill switch, resume, explain) and the
mount on the API app. The dashboard package itself (pilot/dashboard) is a layer below and never imports this."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from pilot.context import PilotContext
from pilot.dashboard.app import DashboardServices, mount
from pilot.service.api import SchedulerHooks
from pilot.service.explain import explain


def daemon_services(ctx: PilotContext, hooks: SchedulerHooks | None = None) -> DashboardServices:
    """Kill and resume through the same code path as the CLI and ``POST /v1/kill``."""
    hooks = hooks or SchedulerHooks()

    def kill(actor: str, reason: str) -> dict[str, Any]:
        from pilot.service.killswitch import engage

        if hooks.on_kill is not None:
            hooks.on_kill()
        return engage(ctx, actor=actor, reason=reason).to_dict()

    def resume(actor: str, reason: str) -> dict[str, Any]:
        from pilot.service.killswitch import resume as lift

        result = lift(ctx, actor=actor, reason=reason)
        if hooks.on_resume is not None:
            hooks.on_resume()
        return result

    return DashboardServices(explain=explain, kill=kill, resume=resume, serving=hooks.is_ready)


def mount_dashboard(app: FastAPI, ctx: PilotContext, hooks: SchedulerHooks | None = None) -> None:
    mount(app, ctx.store, ctx.settings, daemon_services(ctx, hooks), bound_host=ctx.settings.api.host)
