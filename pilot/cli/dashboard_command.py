"""``learning-pilot dashboard`` (a read-only web view of a store, without the daemon) and
``learning-pilot dashboard-user create|revoke|list`` (who may sign in to the daemon's dashboard).

Registered by pilot/cli/app.py; imports stay inside the commands so that registering them costs ``status``
nothing. See docs/dashboard.md.
"""

from __future__ import annotations

import getpass
from typing import Annotated, Any

import typer

from pilot.cli.kb import _settings  # the same settings lookup as the kb commands
from tools.errors import PilotError

dashboard_user_app = typer.Typer(help="People who may sign in to the web dashboard.", no_args_is_help=True)


def _store(settings: Any) -> Any:
    from pilot.store import Store

    store = Store(settings.database_url)
    store.check_ready()
    return store


def dashboard_command(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option("--port", "-p", help="Port (default: dashboard.port, 8080).")] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Bind address (default: dashboard.host, 127.0.0.1).")
    ] = None,
) -> None:
    """Serve a read-only dashboard of the store (the daemon serves the full one, with actions, at /dashboard/)."""
    import uvicorn

    from pilot.dashboard.app import DashboardServices, create_standalone_app
    from pilot.service.explain import explain

    settings = _settings(ctx)
    store = _store(settings)
    bind = host or settings.dashboard.host
    app = create_standalone_app(store, settings, DashboardServices(explain=explain), bound_host=bind)
    where = f"http://{bind}:{port if port is not None else settings.dashboard.port}/dashboard/"
    typer.echo(f"read-only dashboard of {store.display_url} on {where} (Ctrl-C to stop)")
    try:
        uvicorn.run(
            app,
            host=bind,
            port=port if port is not None else settings.dashboard.port,
            log_level="warning",
            access_log=False,
        )
    finally:
        store.close()


@dashboard_user_app.command("create")
def create(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(metavar="ID", help="Who (recorded as human:<ID> on their actions).")],
    by: Annotated[str | None, typer.Option("--by", help="Who creates it (default: your user name).")] = None,
) -> None:
    """Make a sign-in token for ID (printed once; only its digest is stored). Add ID to dashboard.approvers to
    let them approve, reject and resume."""
    from pilot.dashboard.auth import create_user

    settings = _settings(ctx)
    store = _store(settings)
    try:
        with store.session(write=True) as session:
            token = create_user(session, user_id, created_by=f"human:{by or getpass.getuser()}")
    except ValueError as exc:
        raise PilotError(str(exc)) from exc
    finally:
        store.close()
    typer.echo(token)
    role = "an approver" if user_id in settings.dashboard.approvers else "not on dashboard.approvers (kill only)"
    typer.echo(f"dashboard user {user_id} ({role}): sign in at /dashboard/signin with the token above", err=True)


@dashboard_user_app.command("revoke")
def revoke(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(metavar="ID")],
    by: Annotated[str | None, typer.Option("--by")] = None,
) -> None:
    """Revoke ID's token and end their sessions at once."""
    from pilot.dashboard.auth import revoke_user

    store = _store(_settings(ctx))
    try:
        with store.session(write=True) as session:
            revoke_user(session, user_id, actor=f"human:{by or getpass.getuser()}")
    finally:
        store.close()
    typer.echo(f"revoked {user_id}")


@dashboard_user_app.command("list")
def list_command(ctx: typer.Context) -> None:
    """Dashboard users, whether revoked, and whether they may approve."""
    from pilot.dashboard.auth import list_users

    settings = _settings(ctx)
    store = _store(settings)
    try:
        with store.session() as session:
            users = list_users(session)
    finally:
        store.close()
    for u in users:
        state = f"revoked {u.revoked_at:%Y-%m-%d}" if u.revoked_at else "active"
        role = "approver" if u.id in settings.dashboard.approvers else "kill only"
        typer.echo(f"{u.id}\t{state}\t{role}\tcreated {u.created_at:%Y-%m-%d} by {u.created_by}")
