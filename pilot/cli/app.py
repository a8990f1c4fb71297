"""``learning-pilot``: the operator's commands.

Every failure is one line on stderr and a non-zero exit (2 for configuration errors), never a traceback.
Imports are deferred into the commands so that ``status`` loads the store alone (no graph, LLM or torch).
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from pilot.errors import ConfigError, StoreError
from tools.errors import PilotError

app = typer.Typer(
    name="learning-pilot",
    help="Improve an LLM agent product from its own execution records, safely.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML settings file (default: see README, 'Configuration').", show_default=False
    ),
]


class _Obj:
    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._settings: Any = None

    def settings(self) -> Any:
        if self._settings is None:
            from pilot.settings import load_settings

            self._settings = load_settings(self.config)
        return self._settings


@app.callback()
def _main(
    ctx: typer.Context, config: ConfigOption = None, verbose: bool = typer.Option(False, "--verbose", "-v")
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ctx.obj = _Obj(config)


def _open_store(ctx: typer.Context, *, create: bool = False) -> tuple[Any, Any]:
    """Settings and an initialised store; a missing data dir or schema is one clear error."""
    from pilot.store import Store

    settings = ctx.obj.settings()
    data_dir = Path(settings.data_dir)
    if create:
        data_dir.mkdir(parents=True, exist_ok=True)
    elif not data_dir.is_dir():
        raise StoreError(f"data dir {data_dir} does not exist: create it with `learning-pilot init`")
    store = Store(settings.database_url)
    if create:
        store.migrate()
    else:
        store.check_ready()
    return settings, store


def _context(ctx: typer.Context, *, create: bool = False) -> Any:
    from pilot.context import build_context

    settings, store = _open_store(ctx, create=create)
    return build_context(settings, store=store)


def _console() -> Any:
    from rich.console import Console

    return Console()


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the data dir, the store schema and this installation's id (idempotent)."""
    from pilot.store.installation import ensure_installation_id

    settings, store = _open_store(ctx, create=True)
    installation, created = ensure_installation_id(store)
    typer.echo(f"store ready at {store.display_url}; data dir {settings.data_dir}")
    typer.echo(
        f"installation id {installation} ({'created' if created else 'already set'}): instance labels are "
        f"learning-pilot/{settings.env}/{installation}/<run id>"
    )


@app.command()
def status(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="One JSON object.")) -> None:
    """Champion, runs, pending approvals, spend against caps, records, last decisions, paused or not."""
    from pilot.service.status import build_status

    settings, store = _open_store(ctx)
    report = build_status(settings, store)
    if as_json:
        typer.echo(json.dumps(report, default=str))
        return
    from pilot.cli.render import render_status

    render_status(_console(), report)


@app.command()
def ingest(ctx: typer.Context, path: Path = typer.Argument(..., help="A JSONL file, or a directory of them.")) -> None:
    """Validate and store execution records; invalid ones go to the dead-letter table with the reason."""
    from pilot.data.ingest import ingest_file

    settings, store = _open_store(ctx)
    if not path.exists():
        raise PilotError(f"{path} does not exist")
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    for file in files:
        report = ingest_file(store, file, batch_size=settings.ingest.batch_size, producer=f"cli:{getpass.getuser()}")
        typer.echo(
            f"{file}: {report.accepted} accepted, {report.duplicates} duplicates, "
            f"{report.dead_lettered} dead-lettered"
            + (f" {dict(report.reasons.most_common(3))}" if report.reasons else "")
        )


def _actor(by: str | None) -> str:
    return f"human:{by or getpass.getuser()}"


@app.command()
def approve(
    ctx: typer.Context,
    approval_id: str = typer.Argument(..., metavar="ID"),
    by: str | None = typer.Option(None, "--by", help="Who approves (default: your user name)."),
    note: str | None = typer.Option(None, "--note"),
) -> None:
    """Approve a pending decision; the supervisor carries it out at its next cycle."""
    _answer(ctx, approval_id, approve=True, by=by, note=note)


@app.command()
def reject(
    ctx: typer.Context,
    approval_id: str = typer.Argument(..., metavar="ID"),
    by: str | None = typer.Option(None, "--by"),
    note: str | None = typer.Option(None, "--note"),
) -> None:
    """Reject a pending decision."""
    _answer(ctx, approval_id, approve=False, by=by, note=note)


def _answer(ctx: typer.Context, approval_id: str, *, approve: bool, by: str | None, note: str | None) -> None:
    from pilot.supervisor.approvals import answer

    _, store = _open_store(ctx)
    with store.session(write=True) as session:
        approval = answer(session, approval_id, approve=approve, actor=_actor(by), note=note)
    verb = "approved" if approve else "rejected"
    typer.echo(f"{verb} {approval.id} ({approval.kind}, decision {approval.decision_id}) as {approval.decided_by}")
    typer.echo("the supervisor resumes it at its next cycle (or now: `learning-pilot run --once`)")


@app.command()
def run(ctx: typer.Context, once: bool = typer.Option(False, "--once", help="Run one cycle and exit.")) -> None:
    """Run the daemon (scheduler + HTTP), or one cycle with --once."""
    if once:
        from pilot.supervisor.cycle import run_cycle

        pilot_ctx = _context(ctx)
        for result in run_cycle(pilot_ctx):
            for line in result.log:
                typer.echo(line)
            typer.echo(f"[{result.thread_id}] {result.outcome}")
        return
    from pilot.service.daemon import serve

    settings, store = _open_store(ctx)
    serve(settings, store)


@app.command()
def gateway(
    ctx: typer.Context,
    port: int | None = typer.Option(None, "--port", help="Listen port (default: gateway.port)."),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Serving processes on the port (default: gateway.workers)."
    ),
) -> None:
    """Run the OpenAI-compatible capture gateway in front of gateway.upstream_url (docs/gateway.md)."""
    settings, store = _open_store(ctx)
    count = settings.gateway.workers if workers is None else workers
    if count > 1:
        from pilot.gateway.workers import supervise

        store.close()  # the supervisor serves nothing; each worker opens the store itself
        raise typer.Exit(supervise(ctx.obj.config, settings, count, port))
    from pilot.gateway.server import GatewayRuntime

    GatewayRuntime(settings, store, port=port).serve()


@app.command()
def models(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Model versions with lineage, aliases, and the promotion history."""
    from pilot.cli.render import models_report, render_models

    _, store = _open_store(ctx)
    report = models_report(store)
    if as_json:
        typer.echo(json.dumps(report, default=str))
    else:
        render_models(_console(), report)


@app.command()
def rollback(
    ctx: typer.Context,
    to: str | None = typer.Option(None, "--to", help="Version to restore (default: the previous champion)."),
    by: str | None = typer.Option(None, "--by"),
    reason: str = typer.Option("manual rollback", "--reason"),
) -> None:
    """Take the champion down and restore the previous one (or --to VERSION, or the base model)."""
    from pilot.context import build_context
    from pilot.serving import canary, registry
    from pilot.serving.deploy import revert_to_stable

    settings, store = _open_store(ctx)
    with store.session(write=True) as session:
        move = registry.rollback(session, to_version=to, actor=_actor(by), reason=reason)
        canary.end_rollout(session, actor=_actor(by), reason=reason)
    typer.echo(f"rolled back: champion {move.from_version} -> {move.to_version or 'base model'}")
    outcome = revert_to_stable(settings, store, build_context(settings, store=store).artifacts)
    typer.echo(f"serving: {outcome.after or 'the base model'} on {outcome.target} ({outcome.action})")


@app.command()
def explain(
    ctx: typer.Context,
    version: str = typer.Argument(..., metavar="VERSION"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Walk a version's lineage: records -> snapshot -> decision -> approval -> run -> adapter -> evaluation."""
    from pilot.service.explain import explain as build

    _, store = _open_store(ctx)
    report = build(store, version)
    if as_json:
        typer.echo(json.dumps(report, default=str, indent=2))
        return
    from pilot.cli.render import render_explain

    render_explain(_console(), report)


@app.command()
def demo(
    ctx: typer.Context,
    reset: bool = typer.Option(False, "--reset", help="Start from an empty data dir (deletes the demo's data dir)."),
    records: int = typer.Option(1500, help="How many sample execution records to generate."),
) -> None:
    """Run the whole loop on embedded defaults: records -> curation -> decision -> approval -> LoRA -> gate."""
    from pilot.cli.demo import run_demo

    run_demo(ctx.obj.settings(), reset=reset, n_records=records, console=_console(), config=ctx.obj.config)


@app.command()
def kill(
    ctx: typer.Context,
    reason: str = typer.Option("", "--reason", "-r", help="Why (goes to the incident event and Slack)."),
    by: str | None = typer.Option(None, "--by", help="Who pulls it (default: your user name)."),
) -> None:
    """Pull the kill switch: pause, cancel approvals, destroy and verify every owned instance, revert serving."""
    import json

    from pilot.service.killswitch import engage  # imported here: the kill switch's stack stays off `status`

    try:
        pilot_ctx = _context(ctx)
    except PilotError as exc:  # no provider (credentials missing or invalid...): still pause, first and locally
        _pause_only(ctx, by, reason, exc)
        raise typer.Exit(1) from exc
    try:
        report = engage(pilot_ctx, actor=_actor(by), reason=reason or "kill from the CLI")
    finally:
        pilot_ctx.close()
    typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    if not report.ok:
        raise typer.Exit(1)


def _pause_only(ctx: typer.Context, by: str | None, reason: str, problem: Exception) -> None:
    """The kill switch's first step with nothing but the store: the pause is committed whatever else is broken;
    the provider could not be reached, so nothing was destroyed — the report says so and the command fails."""
    import json

    from pilot.store.status import EntityType
    from pilot.store.writers import record_event, set_paused

    _, store = _open_store(ctx)
    try:
        why = f"kill switch: {reason or 'kill from the CLI'}"
        with store.session(write=True) as session:
            was = set_paused(session, True, actor=_actor(by), reason=why)
            record_event(
                session,
                entity_type=EntityType.INCIDENT,
                entity_id="kill_switch",
                actor=_actor(by),
                reason=f"{why}; paused, but the provider was not reached: {problem}",
                new="paused",
            )
    finally:
        store.close()
    report = {"paused": True, "was_paused": was, "ok": False, "problems": [f"provider not reached: {problem}"]}
    typer.echo(json.dumps(report, indent=2))
    typer.echo(f"error: paused, but nothing was destroyed: {problem}", err=True)


@app.command()
def resume(
    ctx: typer.Context,
    reason: str = typer.Option("", "--reason", "-r", help="Why it is safe to spend again."),
    by: str | None = typer.Option(None, "--by", help="Who resumes (default: your user name)."),
) -> None:
    """Lift the kill switch's pause; the next cycle may spend again (every cap and approval still applies)."""
    from pilot.service.killswitch import resume as lift

    pilot_ctx = _context(ctx)
    try:
        result = lift(pilot_ctx, actor=_actor(by), reason=reason or "resume from the CLI")
    finally:
        pilot_ctx.close()
    typer.echo("resumed" if result["was_paused"] else "was not paused; nothing to do")


def _register_plugins() -> None:
    from pilot.cli.dashboard_command import dashboard_command, dashboard_user_app  # typer only, like kb
    from pilot.cli.kb import kb_app  # light: typer only; its commands import their stack lazily
    from pilot.cli.rehearse_command import rehearse_command  # typer only; the stack loads inside the command
    from pilot.cli.tokens import tokens_app  # typer only; the store loads inside the commands

    app.add_typer(kb_app, name="kb")
    app.add_typer(tokens_app, name="tokens")
    app.command("rehearse")(rehearse_command)
    app.command("dashboard")(dashboard_command)
    app.add_typer(dashboard_user_app, name="dashboard-user")


_register_plugins()


def main() -> None:
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="learning-pilot", standalone_mode=False)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except PilotError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
