"""``learning-pilot rehearse``: one full loop of the Vast.ai path against local protocol peers, before real money.

What runs is the production code path: ingestion, curation, the supervisor graph (decide, plan, approval interrupt
and resume, train, evaluate, gate), ``pilot.runs.remote`` renting through the real ``vastai`` client, the onstart
bootstrap and ``jobs.remote_entry`` on the "host", presigned S3 URLs through boto3. Only the peers are local:

- Vast.ai is a ``VastServer`` on 127.0.0.1 with the recorded offer book shipped as ``tools/gpu/offer_book.json``;
  its instances run the onstart script as local processes (this machine is the "host": the job runs with this
  interpreter and reads the base model from this disk, where a real host would install and download them).
- S3 is moto's ``ThreadedMotoServer`` on 127.0.0.1 (the ``dev`` extra), with a throw-away bucket and dummy keys.

Invariants:
- Nothing is contacted for real: the settings are the user's with every outward-facing section replaced (Vast and
  S3 endpoints, store, data dir, drop dir, deploy target, Slack and the LLM off, the knowledge base off). The user's
  store, drop dir (read only with ``--records 0``) and serving target are never written.
- The user's budget caps, training and evaluation settings apply unchanged, except: the base model (a hub id cannot
  be used offline, so a small local model is built into the rehearsal dir), ``--max-steps``, and the polling and
  heartbeat intervals (shortened so a short job shows its heartbeats). The policy is relaxed so the loop runs now
  (min_new_examples 1, no cooldown) and always asks for the approval, which the rehearsal gives itself through
  ``pilot.supervisor.approvals.answer`` as actor ``rehearsal``.
- It ends with the checks a person paying the bill needs: the adapter's S3 object matches its sha256, the ledger's
  actual cost equals what the server charged, no reservation is left active, and ``live_instances()`` is empty.
  Any failed check makes the exit status 1. Servers, instances and (without ``--keep``) the rehearsal dir are
  cleaned up on every path.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.resources
import logging
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlmodel import col, select

from pilot.settings import DeploySettings, KnowledgeSettings, LlmSettings, Settings, SlackSettings
from tools.errors import PilotError

MOTO_MISSING = "the rehearsal needs moto's S3 server: pip install 'learning-pilot[dev]'"
REHEARSAL_ACTOR = "rehearsal"
BASE_BUILD_STEPS = 60  # copy pre-training steps of the stand-in base: enough for the plumbing, quick on a CPU
LEDGER_TOLERANCE_USD = 1e-6
_BUCKET = "learning-pilot-rehearsal"
_DUMMY_AWS = {"aws_access_key_id": "AKIAREHEARSAL000000", "aws_secret_access_key": "rehearsal-dummy-secret-key-0"}

Say = Callable[[str], None]


class RehearsalError(PilotError):
    """The rehearsal could not be set up (moto missing, no records, a base model path that does not exist)."""


@dataclass
class RehearsalReport:
    """What the rehearsal found; ``ok`` is the exit status's source of truth."""

    problems: list[str] = field(default_factory=list)
    run_id: str | None = None
    offer_id: str | None = None
    adapter_key: str | None = None
    adapter_sha256: str | None = None
    gate: str | None = None
    ledger_actual_usd: float | None = None
    server_charged_usd: float | None = None
    live_instances: list[int] = field(default_factory=list)
    kept_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def require_moto() -> None:
    """Raise RehearsalError with the install hint when moto's server mode cannot be imported."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise RehearsalError(MOTO_MISSING) from exc


def offer_book_path() -> contextlib.AbstractContextManager[Path]:
    return importlib.resources.as_file(importlib.resources.files("tools.gpu") / "offer_book.json")


# -- the rehearsal's settings ------------------------------------------------------------------------------
def rehearsal_settings(
    user: Settings,
    *,
    root: Path,
    vast_url: str,
    vast_key: str,
    s3_endpoint: str,
    base_model: str,
    max_steps: int | None = None,
) -> Settings:
    """The user's settings with every outward-facing section pointed at the rehearsal (see the module invariants)."""
    data_dir = root / "data"
    remote = user.gpu.remote.model_copy(
        update={
            "python": sys.executable,  # this machine is the host: its interpreter has the job's dependencies
            "heartbeat_every_s": min(user.gpu.remote.heartbeat_every_s, 2.0),
            "job_env": {**user.gpu.remote.job_env, "HF_HUB_OFFLINE": "1"},
        }
    )
    vast = user.gpu.vast.model_copy(update={"api_url": vast_url, "api_key": SecretStr(vast_key)})
    training_update: dict[str, Any] = {
        "base_model": base_model,
        "poll_interval_s": min(user.training.poll_interval_s, 0.5),
    }
    if max_steps is not None:
        training_update["max_steps"] = max_steps
    return user.model_copy(
        update={
            "data_dir": data_dir,
            "store": user.store.model_copy(update={"url": None}),
            "policy": user.policy.model_copy(
                update={"min_new_examples": 1, "cooldown_minutes": 0.0, "approval_required_above_usd": 0.0}
            ),
            "training": user.training.model_copy(update=training_update),
            "gpu": user.gpu.model_copy(update={"provider": "vast", "vast": vast, "remote": remote}),
            "artifacts": user.artifacts.model_copy(
                update={
                    "kind": "s3",
                    "path": None,
                    "s3_bucket": _BUCKET,
                    "s3_prefix": "",
                    "s3_endpoint_url": s3_endpoint,
                    "s3_region": "us-east-1",
                }
            ),
            "ingest": user.ingest.model_copy(update={"drop_dir": None}),
            "llm": LlmSettings(),
            "slack": SlackSettings(),
            "knowledge": KnowledgeSettings(),
            "deploy": DeploySettings(target="pointer", pointer_path=data_dir / "serving" / "current.json"),
        }
    )


def resolve_base_model(user: Settings, root: Path, say: Say) -> str:
    """The user's local base model, or a small stand-in built into the rehearsal dir (a hub id needs the network).

    The stand-in changes what trains, not what is planned: offers, VRAM and the estimate still follow
    ``training.base_model_params_b``, so the offer choice and the budget checks are those of the real job."""
    base = user.training.base_model
    if base.startswith("/"):
        if not (Path(base) / "config.json").is_file():
            raise RehearsalError(f"training.base_model {base} is a local path without a config.json")
        say(f"base model: {base} (your local model)")
        return base
    out = root / "models" / "tiny-base"
    say(
        f"base model: {base!r} is a hub model, which cannot be used offline; building a small Llama-style "
        f"stand-in into {out} ({BASE_BUILD_STEPS} pre-training steps, a minute or a few on a CPU). "
        "Offers and estimates still follow your training.base_model_params_b; the gate's verdict on the stand-in "
        "says nothing about your model."
    )
    started = time.monotonic()
    built = subprocess.run(
        [sys.executable, "-m", "jobs.build_base_model", "--out", str(out), "--steps", str(BASE_BUILD_STEPS)],
        check=False,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    if built.returncode != 0:
        tail = (built.stderr or built.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RehearsalError(f"building the stand-in base model failed (exit {built.returncode}): {tail[0][:300]}")
    say(f"base model: built in {time.monotonic() - started:.0f} s")
    return str(out)


# -- the peers ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def s3_peer() -> Iterator[str]:
    """moto's S3 server on a loopback port with the rehearsal bucket; yields its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    access_log = logging.getLogger("werkzeug")  # moto's server logs every request; the rehearsal prints its own
    level = access_log.level
    access_log.setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_DUMMY_AWS).create_bucket(Bucket=_BUCKET)
        yield endpoint
    finally:
        server.stop()
        access_log.setLevel(level)


def s3_store(endpoint: str, settings: Settings) -> Any:
    from tools.artifacts.s3 import S3ArtifactStore

    # Dummy keys given explicitly: boto3's default chain would otherwise pick up the user's real credentials.
    return S3ArtifactStore(
        _BUCKET,
        endpoint_url=endpoint,
        region="us-east-1",
        path_style=True,
        aws_access_key_id=_DUMMY_AWS["aws_access_key_id"],
        aws_secret_access_key=_DUMMY_AWS["aws_secret_access_key"],
        # As pilot.context builds it: upload URLs must outlive the run's deadline.
        max_presign_s=int(min(7 * 24 * 3600, settings.training.max_duration_minutes * 60 + 3600)),
    )


# -- records -----------------------------------------------------------------------------------------------
def load_records(store: Any, user: Settings, records: int, say: Say) -> None:
    """``records`` > 0: that many generated coding-agent records. 0: the JSONL files in the user's drop dir, read
    in place (never moved or changed). Both go through the real ingestion (dead letters included)."""
    from pilot.data.ingest import IngestReport, ingest_lines

    reports: list[IngestReport] = []
    if records > 0:
        from subagents.data.samples import generate_demo_records

        lines = generate_demo_records(records, seed=int(time.time()) % 1000)
        reports.append(ingest_lines(store, lines, source="rehearsal"))
        say(f"records: {len(lines)} generated coding-agent records (successes, failures, some malformed)")
    else:
        files = sorted(user.drop_dir.glob("*.jsonl")) if user.drop_dir.is_dir() else []
        if not files:
            raise RehearsalError(f"--records 0 reads your drop dir, but {user.drop_dir} has no *.jsonl file")
        for path in files:
            with path.open("rb") as fh:
                reports.append(ingest_lines(store, fh, source=str(path)))
        say(f"records: read {len(files)} file(s) from your drop dir {user.drop_dir} (read only)")
    for report in reports:
        say(
            f"ingested: {report.accepted} accepted, {report.duplicates} duplicates, "
            f"{report.dead_lettered} dead-lettered"
        )


# -- the offer choice ------------------------------------------------------------------------------------------
def explain_offer(ctx: Any, plan: dict[str, Any], say: Say) -> None:
    """The chosen offer against the cheapest $/h, both costed by the pilot's plan and by tools.gpu.offers's model
    (throughput from the GPU and host, storage, bandwidth, expected retries)."""
    from pilot.runs.lifecycle import training_params
    from subagents.training import requirements_for
    from tools.gpu.offers import JobShape, expected_cost

    settings = ctx.settings
    params = training_params(ctx)
    requirements = requirements_for(params, max_dph=settings.budget.max_dph)
    offers = ctx.gpu.search_offers(requirements)
    chosen = next((o for o in offers if o.id == str(plan.get("offer"))), None)
    say(
        f"offer: {len(offers)} offers meet the job's requirements (>= {requirements.min_gpu_ram_gb} GB VRAM, "
        f"reliability >= {requirements.min_reliability}, <= ${settings.budget.max_dph}/h)"
    )
    if chosen is None or not offers:
        say(f"offer: the plan chose {plan.get('offer')}, no longer in the search answer")
        return
    hours = float(plan.get("expected_hours", 0.0))
    say(
        f"offer: chosen {chosen.id} ({chosen.gpu_name} x{chosen.num_gpus}, reliability {chosen.reliability:.3f}) at "
        f"${chosen.dph_total:.4f}/h: expected total ${float(plan.get('estimated_cost_usd', 0.0)):.4f} for "
        f"~{hours:.3f} h (startup included)"
    )
    cheapest = min(offers, key=lambda o: (o.dph_total, o.id))
    t = settings.training
    tokens = (
        t.max_steps * t.batch_size * t.grad_accum * t.seq_len / 2
        if t.max_steps is not None
        else int(plan.get("train_tokens", 0)) * t.epochs
    )
    job = JobShape(
        params_b=t.base_model_params_b,
        seq_len=t.seq_len,
        batch_size=t.batch_size,
        dataset_tokens=max(int(tokens), 1),
        lora_rank=t.lora_r,
        disk_gb=settings.gpu.remote.disk_gb,
        interruptible=settings.gpu.remote.interruptible,
    )
    mine, naive = expected_cost(chosen, job), expected_cost(cheapest, job)
    same = " (the same offer)" if cheapest.id == chosen.id else ""
    say(
        f"offer: cheapest $/h is {cheapest.id} ({cheapest.gpu_name}) at ${cheapest.dph_total:.4f}/h{same}; "
        f"expected total with throughput, storage, bandwidth and retries: chosen ${mine.total_usd:.4f} "
        f"({mine.tokens_per_s:,.0f} tok/s) vs cheapest-$/h ${naive.total_usd:.4f} ({naive.tokens_per_s:,.0f} tok/s)"
    )
    best = min(offers, key=lambda o: (expected_cost(o, job).total_usd, o.dph_total, o.id))
    if best.id != chosen.id:
        say(
            f"offer: note: by that model the lowest expected total is {best.id} ({best.gpu_name}, "
            f"${best.dph_total:.4f}/h) at ${expected_cost(best, job).total_usd:.4f}"
        )


# -- live output while the run trains ------------------------------------------------------------------
class RunWatcher:
    """Prints the run's events (launch, status changes, retries) and its heartbeats while the cycle trains.

    It reads through its own store engine and its own S3 client (the cycle's are not shared across threads), into
    its own scratch directory, and only reads."""

    def __init__(self, database_url: str, artifacts: Any, scratch: Path, say: Say, *, every_s: float = 0.5) -> None:
        from pilot.store import Store

        self.store, self.artifacts, self.scratch, self.say, self.every_s = (
            Store(database_url),
            artifacts,
            scratch,
            say,
            every_s,
        )
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rehearsal-watch", daemon=True)
        self._last_event = 0
        self._last_seq: Any = None
        self._last_printed = 0.0
        self._last_phase: Any = None

    def __enter__(self) -> RunWatcher:
        from pilot.store.models import Event

        with self.store.session() as session:
            ids = session.exec(select(Event.id)).all()
        self._last_event = max((i for i in ids if i is not None), default=0)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()  # what happened between the last tick and the end
        self.store.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.poll()
            except Exception as exc:  # loop boundary: the watcher only prints, it never stops the rehearsal
                self.say(f"  (watcher: {exc})")

    def poll(self) -> None:
        from pilot.store.models import Event, TrainingRun

        with self.store.session() as session:
            events = session.exec(
                select(Event)
                .where(col(Event.id) > self._last_event, Event.entity_type == "training_run")
                .order_by(col(Event.id))
            ).all()
            run = session.exec(select(TrainingRun).order_by(col(TrainingRun.created_at).desc())).first()
        for event in events:
            self._last_event = max(self._last_event, int(event.id or 0))
            change = f"{event.old or '-'} -> {event.new}: " if event.new else ""
            self.say(f"  run {event.entity_id}: {change}{event.reason}")
        if run is not None and run.instance_id is not None:
            from pilot.runs.attempts import attempts_of

            with self.store.session() as session:
                attempts = attempts_of(session, run.id)
            if attempts:
                self._heartbeat(run.id, attempts[-1].n, run.instance_id)

    def _heartbeat(self, run_id: str, n: int, instance_id: str) -> None:
        import json

        from tools.errors import ArtifactNotFound

        dest = self.scratch / f"heartbeat-{n}.json"
        try:
            self.artifacts.get(f"runs/{run_id}/attempt-{n}/heartbeat.json", dest)
            beat = json.loads(dest.read_text())
        except (ArtifactNotFound, ValueError, OSError):
            return
        seq, phase, now = (n, beat.get("seq")), beat.get("phase"), time.monotonic()
        if seq == self._last_seq or (phase == self._last_phase and now - self._last_printed < 5.0):
            return
        self._last_seq, self._last_phase, self._last_printed = seq, phase, now
        step = f", step {beat['step']}/{beat.get('max_steps', '?')}" if "step" in beat else ""
        loss = f", loss {float(beat['loss']):.4f}" if isinstance(beat.get("loss"), int | float) else ""
        self.say(f"  heartbeat #{beat.get('seq')} from instance {instance_id} (attempt {n}): {phase}{step}{loss}")


# -- the rehearsal ---------------------------------------------------------------------------------------------
def rehearse(
    user: Settings, *, records: int = 600, keep: bool = False, max_steps: int | None = None, say: Say = print
) -> RehearsalReport:
    """Run one loop on local peers (see the module docstring). Raises RehearsalError when it cannot start."""
    if records < 0:
        raise RehearsalError("--records must be >= 0")
    require_moto()
    root = Path(tempfile.mkdtemp(prefix="learning-pilot-rehearsal-"))
    report = RehearsalReport()
    try:
        say(f"rehearsal dir: {root} ({'kept' if keep else 'deleted at the end; --keep keeps it'})")
        say("nothing here contacts Vast.ai or S3: both are local servers on 127.0.0.1 for this rehearsal")
        base = resolve_base_model(user, root, say)
        with s3_peer() as endpoint, _vast_peer(root) as (server, vast_key):
            say(f"vast: local server {server.url} with {len(server.offers)} recorded offers; s3: moto at {endpoint}")
            settings = rehearsal_settings(
                user,
                root=root,
                vast_url=server.url,
                vast_key=vast_key,
                s3_endpoint=endpoint,
                base_model=base,
                max_steps=max_steps,
            )
            _loop(settings, user, server, endpoint, records, report, say)
    finally:
        if keep:
            report.kept_dir = root
            say(f"kept: {root} (store, snapshots, work files; the S3 objects lived in moto's memory)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    say("rehearsal OK" if report.ok else "rehearsal FAILED: " + "; ".join(report.problems))
    return report


@contextlib.contextmanager
def _vast_peer(root: Path) -> Iterator[tuple[Any, str]]:
    from tools.gpu.vast_server import VastServer, load_offer_book

    key = f"rehearsal-{secrets.token_hex(12)}"
    with offer_book_path() as book:
        offers = load_offer_book(book)
    server = VastServer(offers, api_key=key, loading_s=0.5, workdir=root / "vast").start()
    try:
        yield server, key
    finally:
        server.stop()  # kills whatever instance process is left (a failed check already said so)


def _loop(
    settings: Settings, user: Settings, server: Any, endpoint: str, records: int, report: RehearsalReport, say: Say
) -> None:
    from pilot.context import build_context
    from pilot.store import Store
    from pilot.store.models import Decision
    from pilot.supervisor import approvals
    from pilot.supervisor.cycle import CycleResult, run_cycle

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.database_url)
    store.migrate()
    ctx = build_context(settings, store=store)
    ctx.artifacts = s3_store(endpoint, settings)

    def show(results: list[CycleResult]) -> None:
        for result in results:
            for line in result.log:
                say(f"  {line}")
            say(f"  -> {result.outcome}")

    try:
        load_records(store, user, records, say)
        say("cycle 1: the supervisor observes, decides and plans")
        first = _cycle(run_cycle, ctx, report)
        show(first)
        waiting = [r.waiting_on for r in first if r.waiting_on]
        if not waiting:
            if report.ok:
                report.problems.append("the supervisor did not ask to train (see its reasons above)")
            return
        with store.session() as session:
            decision = session.exec(select(Decision).order_by(col(Decision.created_at).desc())).first()
        plan = dict((decision.figures if decision else {}).get("plan") or {})
        report.offer_id = str(plan.get("offer")) if plan.get("offer") else None
        explain_offer(ctx, plan, say)
        with store.session(write=True) as session:
            approvals.answer(
                session, waiting[-1], approve=True, actor=REHEARSAL_ACTOR, note="approved by learning-pilot rehearse"
            )
        say(f"approval: {waiting[-1]} approved by the rehearsal itself (actor {REHEARSAL_ACTOR!r}), no human asked")
        say("cycle 2: resume, launch on the local Vast server, train, evaluate, gate")
        with RunWatcher(
            settings.database_url, s3_store(endpoint, settings), settings.work_dir / "rehearsal-watch", say
        ):
            second = _cycle(run_cycle, ctx, report)
        show(second)
        _check(ctx, server, report, second, say)
    finally:
        _destroy_leftovers(ctx, server, say)
        ctx.close()


def _cycle(run_cycle: Callable[..., list[Any]], ctx: Any, report: RehearsalReport) -> list[Any]:
    """One supervisor cycle; a failure is a finding (the checks and the clean-up still run), not a crash."""
    try:
        return run_cycle(ctx, ingest=False)
    except PilotError as exc:
        report.problems.append(f"the cycle failed: {exc}")
        return []


def _settle_late_charges(ctx: Any, say: Say) -> None:
    """The settle worker's passes as the daemon runs them (pilot/spend/settlement.py), its clock moved past each
    recheck instead of waiting: spend settled at an estimate is re-read until the provider's figure is authoritative."""
    from pilot.runs.attempts import resettle
    from pilot.store.models import utcnow

    step = datetime.timedelta(seconds=ctx.settings.budget.settle_recheck_s)
    closed: list[str] = []
    for k in range(1, 6):  # the backoff doubles the recheck
        report = resettle(ctx, now=utcnow() + step * (2**k))
        closed += report.closed
        if not report.checked and not report.skipped:
            break
    if closed:
        say(f"settle worker: re-read the provider's charges for {', '.join(sorted(set(closed)))}")


def _check(ctx: Any, server: Any, report: RehearsalReport, results: list[Any], say: Say) -> None:
    """The checks that make the exit status, each printed as one line."""
    from pilot.store.models import ModelVersion, SpendEntry, TrainingRun
    from pilot.store.status import RunStatus

    _settle_late_charges(ctx, say)
    with ctx.store.session() as session:
        run = session.exec(select(TrainingRun).order_by(col(TrainingRun.created_at).desc())).first()
        version = (
            session.exec(select(ModelVersion).where(ModelVersion.run_id == run.id)).first() if run is not None else None
        )
        spend = session.exec(select(SpendEntry).where(SpendEntry.run_id == run.id)).all() if run is not None else []
    if run is None:
        report.problems.append("no training run was created")
        return
    report.run_id = run.id
    if run.status != RunStatus.SUCCEEDED:
        report.problems.append(f"run {run.id} ended {run.status}: {run.status_message or run.termination_reason}")
    from pilot.runs.attempts import attempts_of

    with ctx.store.session() as session:
        attempts = attempts_of(session, run.id)
    instances = [str(a.instance_id) for a in attempts if a.instance_id]
    say(f"run {run.id}: {run.status} after {len(attempts)} attempt(s) on instance(s) {', '.join(instances) or '-'}")

    weights = (version.adapter_files if version is not None else {}).get("adapter_model.safetensors")
    if version is None or not weights:
        report.problems.append("no adapter came back")
    else:
        report.adapter_key, report.adapter_sha256 = str(weights["key"]), version.adapter_sha256
        try:  # downloaded back: the store re-hashes the bytes against the recorded sha256
            ctx.artifacts.get(
                report.adapter_key, ctx.settings.work_dir / "adapter-check.safetensors", sha256=version.adapter_sha256
            )
            verified = "downloaded back, sha256 verified"
        except PilotError as exc:
            verified = f"VERIFY FAILED: {exc}"
            report.problems.append(f"adapter {report.adapter_key}: {exc}")
        say(f"adapter: {weights.get('uri', report.adapter_key)} sha256 {version.adapter_sha256} ({verified})")
        gate = next((line for r in results for line in r.log if line.startswith("gate:")), None)
        if not version.eval_report:
            report.problems.append(f"candidate {version.id} was not evaluated")
        report.gate = gate or f"{version.id} {version.status}"
        say(f"gate: {report.gate.removeprefix('gate: ')} (model version {version.id} is {version.status})")

    actual = sum(e.amount_usd for e in spend if e.kind == "actual")
    reserved = sum(e.amount_usd for e in spend if e.kind == "reservation" and e.active)
    charged = server.initial_credit - server.credit()
    report.ledger_actual_usd, report.server_charged_usd = actual, charged
    per_instance = ", ".join(
        f"{i}: gpu ${c['gpu']:.6f} + disk ${c['disk']:.6f}" for i in instances for c in [server.instance_charges(i)]
    )
    match = abs(actual - charged) <= LEDGER_TOLERANCE_USD
    say(
        f"ledger: actual ${actual:.6f} for run {run.id} vs the server's charges ${charged:.6f} "
        f"({per_instance or 'no instance'}): {'match' if match else 'MISMATCH'}; "
        f"estimate was ${run.estimated_cost_usd:.6f}, active reservations ${reserved:.6f}"
    )
    if not match:
        report.problems.append(f"the ledger (${actual:.6f}) does not match the server's charges (${charged:.6f})")
    if reserved > 0:
        report.problems.append(f"${reserved:.6f} of reservation is still active")

    report.live_instances = server.live_instances()
    if report.live_instances:
        report.problems.append(f"instances still live on the server: {report.live_instances}")
    left = "LEFT BEHIND" if report.live_instances else "none left"
    say(f"instances: live_instances() == {report.live_instances} ({left})")


def _destroy_leftovers(ctx: Any, server: Any, say: Say) -> None:
    for instance_id in server.live_instances():
        say(f"destroying instance {instance_id}, which the rehearsal left behind")
        with contextlib.suppress(PilotError):
            ctx.gpu.terminate(str(instance_id))
