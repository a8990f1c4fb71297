"""``learning-pilot tokens create|list|revoke``: producer tokens for the ingest endpoints (pilot/data/producers.py).

``create`` prints the raw token once (it is stored hashed and cannot be shown again); ``list`` shows names,
scopes, the token's first characters and whether it is revoked; ``revoke`` takes a producer name (every active
token of it) or a token id. The store is opened the same way as every other command.
"""

from __future__ import annotations

import getpass
import json
from typing import Annotated, Any

import typer

tokens_app = typer.Typer(help="Producer tokens: who may POST records (and live-quality records) to the pilot.")


def _store(ctx: typer.Context) -> Any:
    from pathlib import Path

    from pilot.errors import StoreError
    from pilot.store import Store

    settings = ctx.find_root().obj.settings()
    if not Path(settings.data_dir).is_dir():
        raise StoreError(f"data dir {settings.data_dir} does not exist: create it with `learning-pilot init`")
    store = Store(settings.database_url)
    store.check_ready()
    return store


def _actor(by: str | None) -> str:
    return f"human:{by or getpass.getuser()}"


@tokens_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The producer's name (recorded on every record it sends).")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", "-s", help="records:write, live:write or feedback:write; repeat for several."),
    ],
    by: Annotated[str | None, typer.Option("--by", help="Who creates it (default: your user name).")] = None,
) -> None:
    """Create a token; prints it once. Give it to the producer as LEARNING_PILOT_PRODUCER_TOKEN."""
    from pilot.data.producers import create_token
    from tools.errors import PilotError

    store = _store(ctx)
    try:
        row, raw = create_token(store, name, scope, actor=_actor(by))
    except ValueError as exc:
        raise PilotError(str(exc)) from exc
    finally:
        store.close()
    typer.echo(f"created {row.id} for producer {row.name} with scopes {row.scopes}")
    typer.echo("the token (shown once; it is stored hashed):", err=True)
    typer.echo(raw)


@tokens_app.command("list")
def list_(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every token: id, producer, scopes, first characters, created, revoked."""
    from pilot.data.producers import list_tokens

    store = _store(ctx)
    try:
        rows = list_tokens(store)
    finally:
        store.close()
    items: list[dict[str, Any]] = [
        {
            "id": r.id,
            "name": r.name,
            "scopes": r.scopes.split(","),
            "prefix": r.prefix,
            "created_at": r.created_at.isoformat(timespec="seconds"),
            "revoked_at": r.revoked_at.isoformat(timespec="seconds") if r.revoked_at else None,
        }
        for r in rows
    ]
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    if not items:
        typer.echo("no producer tokens; create one with `learning-pilot tokens create NAME --scope records:write`")
    for item in items:
        state = f"revoked {item['revoked_at']}" if item["revoked_at"] else "active"
        typer.echo(
            f"{item['id']}  {item['name']:<20} {','.join(item['scopes']):<30} {item['prefix']}…  "
            f"created {item['created_at']}  {state}"
        )


@tokens_app.command("revoke")
def revoke(
    ctx: typer.Context,
    name_or_id: Annotated[
        str, typer.Argument(metavar="NAME|ID", help="A producer name (all its tokens) or a token id.")
    ],
    by: Annotated[str | None, typer.Option("--by")] = None,
) -> None:
    """Revoke a producer's tokens (or one token by id); requests with them are refused from now on (401)."""
    from pilot.data.producers import revoke_token
    from tools.errors import PilotError

    store = _store(ctx)
    try:
        revoked = revoke_token(store, name_or_id, actor=_actor(by))
    finally:
        store.close()
    if not revoked:
        raise PilotError(f"no active token named or with id {name_or_id!r}")
    typer.echo(f"revoked {name_or_id}")
