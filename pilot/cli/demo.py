"""``learning-pilot demo``: the whole loop on embedded defaults, on this machine, with no account or network.

It uses the same code paths as production: records go through the drop directory and ingestion, the supervisor
graph decides, the approval is given by running ``learning-pilot approve`` in a separate process (as a human
would), the LoRA job runs through the local GPU provider, and the gate decides from model outputs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from pilot.cli.render import render_status
from pilot.context import build_context
from pilot.data.ingest import ingest_drop_dir
from pilot.errors import ConfigError
from pilot.service.status import build_status
from pilot.settings import Settings
from pilot.store import Store
from pilot.supervisor.cycle import CycleResult, run_cycle
from subagents.data.samples import generate_demo_records

MARKER = ".learning-pilot-demo"


def _prepare_data_dir(settings: Settings, *, reset: bool) -> None:
    data_dir = Path(settings.data_dir)
    if reset and data_dir.exists():
        if not (data_dir / MARKER).exists() and any(data_dir.iterdir()):
            raise ConfigError(f"refusing to reset {data_dir}: it was not created by the demo (no {MARKER} file)")
        keep = data_dir / "models"  # the built base model is reusable; everything else starts over
        for child in data_dir.iterdir():
            if child != keep:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("created by `learning-pilot demo`; `--reset` may delete this directory\n")


def ensure_base_model(settings: Settings, console: Console) -> None:
    base = Path(settings.training.base_model)
    if (base / "config.json").is_file():
        console.print(f"base model: {base} (already built)")
        return
    if not settings.training.base_model.startswith("/"):
        raise ConfigError(f"training.base_model {settings.training.base_model!r} is not a local path to build into")
    console.print(f"base model: building a small Llama-style model with an offline tokenizer into {base} ...")
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "jobs.build_base_model", "--out", str(base)],
        check=True,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    console.print(f"base model: built in {time.monotonic() - started:.0f} s")


def ensure_embedder(settings: Settings, console: Console, config: Path | None) -> None:
    """Build the offline embedder through the same command a user runs, once."""
    path = settings.knowledge.embedding_model_path
    if not settings.knowledge.enabled or path is None or (Path(path) / "model.onnx").is_file():
        return
    command = [sys.executable, "-m", "pilot.cli", *(["--config", str(config)] if config else [])]
    command += ["kb", "export-embedder", str(path)]
    console.print(f"knowledge base: exporting the offline embedder: learning-pilot kb export-embedder {path}")
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        console.print(f"[yellow]knowledge base: no embedder ({out.stderr.strip()[-300:]}); the loop runs without it[/]")


def _print_results(console: Console, results: list[CycleResult]) -> None:
    for result in results:
        for line in result.log:
            console.print(f"  {line}")
        console.print(f"  [bold]→ {result.outcome}[/]")


def run_demo(settings: Settings, *, reset: bool, n_records: int, console: Console, config: Path | None = None) -> None:
    started = time.monotonic()
    _prepare_data_dir(settings, reset=reset)
    store = Store(settings.database_url)
    store.migrate()
    ctx = build_context(settings, store=store)
    console.rule("1. a base model")
    ensure_base_model(settings, console)

    ensure_embedder(settings, console, config)

    console.rule("2. execution records from a coding agent")
    drop = settings.drop_dir
    drop.mkdir(parents=True, exist_ok=True)
    lines = generate_demo_records(n_records, seed=int(time.time()) % 1000)
    (drop / "agent-records.jsonl.tmp").write_text("\n".join(lines) + "\n")
    (drop / "agent-records.jsonl.tmp").rename(drop / "agent-records.jsonl")
    console.print(
        f"wrote {len(lines)} lines to {drop}/agent-records.jsonl (successes, failures, 5 domains, some malformed)"
    )
    for report in ingest_drop_dir(store, drop):
        console.print(
            f"ingested: {report.accepted} accepted, {report.duplicates} duplicates, {report.dead_lettered} "
            f"dead-lettered {dict(report.reasons.most_common(4))}"
        )

    console.rule("3. a supervisor cycle")
    results = run_cycle(ctx, ingest=False)
    _print_results(console, results)
    waiting = [r.waiting_on for r in results if r.waiting_on]
    if not waiting:
        console.print("[yellow]the supervisor did not ask to train; see the reasons above[/]")
    else:
        approval_id = waiting[-1]
        console.rule("4. a human approves")
        command = [sys.executable, "-m", "pilot.cli"]
        if config is not None:
            command += ["--config", str(config)]
        command += ["approve", approval_id, "--by", "demo", "--note", "approved by the demo script"]
        console.print(f"the demo approves as a human would: [bold]learning-pilot approve {approval_id} --by demo[/]")
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        console.print(out.stdout.strip() or out.stderr.strip())
        if out.returncode != 0:
            raise ConfigError(f"approve failed: {out.stderr.strip()}")

        console.rule("5. the next cycle resumes: train, evaluate, promote or reject")
        _print_results(console, run_cycle(ctx, ingest=False))

    if settings.knowledge.enabled:
        console.rule("the knowledge base: solutions for a sample task")
        task = "Rename the identifier `retryTimeoutMs` to snake_case."
        from pilot.data.knowledge import kb_search, knowledge_base
        from tools.knowledge import format_for_prompt

        hits = kb_search(settings, task, top_k=3, kb=knowledge_base(ctx))
        console.print(f"query: {task}")
        console.print(format_for_prompt(hits) or "(no hits)")

    console.rule("learning-pilot status")
    render_status(console, build_status(settings, store))
    console.print(f"demo finished in {time.monotonic() - started:.0f} s")
    flag = f" --config {config}" if config is not None else ""
    console.print(
        f"open the dashboard on the demo's store: [bold]learning-pilot{flag} dashboard --port "
        f"{settings.dashboard.port}[/] then http://{settings.dashboard.host}:{settings.dashboard.port}/dashboard/"
    )
