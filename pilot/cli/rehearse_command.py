"""``learning-pilot rehearse``: the command function (registered by pilot/cli/app.py); the work is in
pilot/cli/rehearse.py.

Exit status: 0 when every check passed, 1 when one failed or the rehearsal could not start (moto missing: one line
with the install hint). Imports stay inside the function so that registering it costs ``status`` nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer


def _settings(ctx: typer.Context) -> Any:
    obj = ctx.find_root().obj
    if obj is not None and hasattr(obj, "settings"):
        return obj.settings()
    from pilot.settings import load_settings

    return load_settings(None)


def rehearse_command(
    ctx: typer.Context,
    records: Annotated[
        int,
        typer.Option(
            min=0,
            help="Generated coding-agent records to train on; 0: the JSONL files in your drop dir (read only).",
        ),
    ] = 600,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the rehearsal's temporary data dir.")] = False,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="Training steps for this rehearsal (default: yours).")
    ] = None,
) -> None:
    """Rehearse the Vast.ai path on local peers (a Vast server and moto S3): one loop, nothing rented for real."""
    from pilot.cli.rehearse import RehearsalError, rehearse

    settings = _settings(ctx)
    try:
        report = rehearse(settings, records=records, keep=keep, max_steps=max_steps, say=typer.echo)
    except RehearsalError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if not report.ok:
        raise typer.Exit(1)
