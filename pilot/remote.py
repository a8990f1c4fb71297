"""Training runs on rented hosts (every provider but ``local``): staging, launch, watch, retry, collect.

The host is an untrusted third-party machine. It gets one presigned GET URL (the manifest, in the env as
``LP_MANIFEST_URL``) and a short bootstrap script; the manifest lists presigned GETs for the code archive (the
``jobs`` package + pinned requirements), the snapshot's train/eval files and the checkpoint to resume from, each
with its sha256, and presigned PUTs for the heartbeat, checkpoints, adapter and result. See jobs/remote_entry.py.

Invariants:
- Nothing sent to the host (env, onstart, label, manifest) contains a credential: the Vast API key, the S3 secret,
  or any secret setting. ``launch`` refuses otherwise (``check_no_credentials``).
- Intent before side effect: an attempt is recorded in ``run.config["remote"]["attempts"]`` (committed) before the
  provider is asked for an instance; an instance with the run's label that the run does not record (a crash between
  "rented" and "recorded") is adopted if the attempt was recorded, and destroyed otherwise.
- A breach (stuck loading, silent heartbeat, host offline, outbid, OCI failure, vanished) destroys the instance; only
  when the provider confirms it gone is another host tried (at most ``gpu.remote.max_attempts`` hosts, never a host
  already tried), resuming from the last complete uploaded checkpoint. Max duration and max cost end the run.
- At the end the instance is always destroyed and verified gone; the run's cost is what the provider charged for
  every instance that carried its label (``charges``), else elapsed time x $/h; it replaces the reservation.
- Adapters come back through a staging key; they are verified (sha256 from the result, safetensors only, no pickle)
  before being stored under ``runs/<run_id>/adapter/`` with their sha256.

The host-facing pieces (``code_archive``, ``onstart_script``, ``upload_manifest``, ``host_spec`` with its credential
check, ``url_lifetimes``, ``read_json``, ``Liveness``, ``label_cost``) are shared with evaluation stages
(pilot/remote_eval.py), which run jobs/remote_entry.py's ``evaluate`` stage on their own short instance.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import shlex
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, SecretStr
from sqlalchemy import update
from sqlmodel import select

from pilot import runs
from pilot.context import PilotContext
from pilot.store.models import DatasetSnapshot, TrainingRun
from pilot.store.status import RunStatus, RunTerminationReason
from pilot.store.writers import record_event, switch_run_status
from subagents.training import TrainingParams, job_config, plan_training, requirements_for
from tools.artifacts.base import PICKLE_SUFFIXES, SAFE_ADAPTER_SUFFIXES, refuse_pickled
from tools.errors import ArtifactError, ArtifactNotFound, IntegrityError, LaunchFailed, OfferUnavailable, PilotError
from tools.gpu.base import Instance, InstanceState, LaunchSpec, Offer

logger = logging.getLogger(__name__)

JOBS_DIR = Path(__file__).resolve().parent.parent / "jobs"
MANIFEST_ENV = "LP_MANIFEST_URL"
JOB_REQUIREMENTS = ("torch", "transformers", "peft", "safetensors", "tokenizers", "accelerate")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
CHECKPOINT_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "optimizer.safetensors",
    "rng_state.safetensors",
    "trainer_state.json",
)
SLOTS = ("a", "b")
_OFFER_TRIES = 5  # offers tried per attempt when they are taken between search and rent


@runtime_checkable
class ChargesProvider(Protocol):
    """A provider that can say what it billed (``VastGpuProvider``)."""

    def charges(self, start: float, end: float) -> Iterable[Any]: ...


# -- what goes to the host ---------------------------------------------------------------------------------
def pinned_requirements() -> str:
    """The job's dependencies pinned to the versions installed here (the ones the job is tested with)."""
    lines = []
    for name in JOB_REQUIREMENTS:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(name)
    return "\n".join(lines) + "\n"


def code_archive() -> bytes:
    """A reproducible tar.gz of the ``jobs`` package (sources only) and ``requirements.txt``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))

        for path in sorted(JOBS_DIR.glob("*.py")):
            add(f"jobs/{path.name}", path.read_bytes())
        add("requirements.txt", pinned_requirements().encode())
    return buffer.getvalue()


def onstart_script(python: str) -> str:
    """The bootstrap: fetch the manifest and code (sha256-checked), install deps only if missing, run the entry."""
    boot = (
        "import hashlib,io,json,os,tarfile,time,urllib.request as u\n"
        "def get(url):\n"
        " for i in range(5):\n"
        "  try:\n"
        "   with u.urlopen(url,timeout=120) as r: return r.read()\n"
        "  except OSError:\n"
        "   if i==4: raise\n"
        "   time.sleep(2**i)\n"
        f"m=get(os.environ['{MANIFEST_ENV}']);open('manifest.json','wb').write(m);c=json.loads(m)['code']\n"
        "b=get(c['url'])\n"
        "if hashlib.sha256(b).hexdigest()!=c['sha256']: raise SystemExit('code archive sha256 mismatch')\n"
        "t=tarfile.open(fileobj=io.BytesIO(b))\n"
        "for n in t.getnames():\n"
        " if n.startswith('/') or '..' in n.split('/'): raise SystemExit('unsafe path in code archive')\n"
        "t.extractall('code')\n"
    )
    check = (
        "import importlib.util as u,sys;"
        f"sys.exit(any(u.find_spec(m) is None for m in {tuple(m for m in JOB_REQUIREMENTS if m != 'accelerate')!r}))"
    )
    py = shlex.quote(python)
    return "\n".join(
        [
            "set -eu",
            'W="$PWD/lp-job"; mkdir -p "$W"; cd "$W"',
            f"{py} - <<'LP_BOOT'\n{boot}LP_BOOT",
            f"{py} -c {shlex.quote(check)} || {py} -m pip install --no-cache-dir -q -r code/requirements.txt",
            f"cd code && exec {py} -m jobs.remote_entry --manifest ../manifest.json",
        ]
    )


def secrets_to_withhold(ctx: PilotContext) -> list[str]:
    """Every credential this process holds that a rented host must never see."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))

    walk(ctx.settings)
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if os.environ.get(name):
            found.append(os.environ[name])
    try:
        import boto3

        credentials = boto3.session.Session().get_credentials()
        if credentials is not None:
            found.append(credentials.get_frozen_credentials().secret_key)
    except Exception:  # no boto3 chain configured: nothing to withhold from it
        logger.debug("no boto3 credentials found", exc_info=True)
    return sorted({s for s in found if s and len(s) >= 8})


def check_no_credentials(texts: Iterable[str], secrets: Iterable[str], *, label: str) -> None:
    blob = "\n".join(texts)
    if any(secret in blob for secret in secrets):
        raise LaunchFailed(f"refusing to send a credential to a rented host (launch {label})")


def upload_manifest(ctx: PilotContext, key: str, manifest: dict[str, Any], scratch_file: Path) -> str:
    """Store the manifest under ``key``; returns the presigned GET the host's bootstrap reads (``MANIFEST_ENV``)."""
    scratch_file.parent.mkdir(parents=True, exist_ok=True)
    scratch_file.write_text(json.dumps(manifest))
    ref = ctx.artifacts.put(key, scratch_file)
    get_s, _ = url_lifetimes(ctx)
    return ctx.artifacts.presign_get(ref.key, expires_s=get_s)


def host_spec(
    ctx: PilotContext,
    *,
    label: str,
    offer_id: str,
    bid: float | None,
    manifest: dict[str, Any],
    manifest_url: str,
    secrets: Iterable[str],
) -> LaunchSpec:
    """The launch of a host that bootstraps from ``manifest_url``; refused (``LaunchFailed``) when anything sent
    to the host, the manifest included, holds a credential."""
    remote = ctx.settings.gpu.remote
    env = {
        **remote.job_env,
        MANIFEST_ENV: manifest_url,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    spec = LaunchSpec(
        label=label,
        offer_id=offer_id,
        image=ctx.settings.gpu.vast.image,
        command=["/bin/bash", "-c", onstart_script(remote.python)],
        env=env,
        disk_gb=remote.disk_gb,
        bid_price=bid,
        onstart=onstart_script(remote.python),
    )
    check_no_credentials(
        [spec.label, spec.image, spec.onstart or "", *spec.command, *env, *env.values(), json.dumps(manifest)],
        secrets,
        label=label,
    )
    return spec


# -- keys -------------------------------------------------------------------------------------------------
def attempt_prefix(run_id: str, n: int) -> str:
    return f"runs/{run_id}/attempt-{n}"


def read_json(ctx: PilotContext, key: str, scratch: Path) -> dict[str, Any] | None:
    """A small JSON object the host uploaded; None when absent or unreadable (hosts are not trusted)."""
    dest = scratch / key.replace("/", "__")
    try:
        ctx.artifacts.get(key, dest)
        data = json.loads(dest.read_text())
    except (ArtifactNotFound, ValueError, OSError):
        return None
    return data if isinstance(data, dict) else None


def _scratch(ctx: PilotContext, run_id: str) -> Path:
    path = ctx.settings.work_dir / "runs" / run_id / "remote"
    path.mkdir(parents=True, exist_ok=True)
    return path


def stage_inputs(ctx: PilotContext, run: TrainingRun, snapshot: DatasetSnapshot) -> dict[str, Any]:
    """Put the code archive and the snapshot's files in the artifact store once per run (key, sha256, path)."""
    existing = (run.config.get("remote") or {}).get("inputs")
    if existing:
        return dict(existing)
    scratch = _scratch(ctx, run.id)
    archive = scratch / "code.tar.gz"
    archive.write_bytes(code_archive())
    files = {"code": (archive, "code.tar.gz")}
    snap = Path(snapshot.path)
    for name in ("train", "eval"):
        if (snap / f"{name}.jsonl").is_file():
            files[name] = (snap / f"{name}.jsonl", f"data/{name}.jsonl")
    staged = {}
    for name, (path, rel) in files.items():
        ref = ctx.artifacts.put(f"runs/{run.id}/inputs/{path.name}", path)
        staged[name] = {"key": ref.key, "sha256": ref.sha256, "path": rel}
    return staged


def url_lifetimes(ctx: PilotContext, *, run_s: float | None = None) -> tuple[int, int]:
    """(GET, PUT) URL lifetimes: inputs are read once the host boots; outputs are written until the deadline
    (``run_s`` after loading; by default the training run's ``max_duration_minutes``)."""
    remote, training = ctx.settings.gpu.remote, ctx.settings.training
    run_s = run_s if run_s is not None else training.max_duration_minutes * 60
    get_s = int(remote.loading_timeout_s + ctx.settings.artifacts.presign_expiry_s)
    put_s = int(remote.loading_timeout_s + run_s + 600)
    ceiling = getattr(ctx.artifacts, "max_presign_s", None)
    if isinstance(ceiling, int):
        if put_s > ceiling:
            logger.warning(
                "Upload URLs capped at the store's %d s, shorter than the run's %d s deadline", ceiling, put_s
            )
        get_s, put_s = min(get_s, ceiling), min(put_s, ceiling)
    return get_s, put_s


def build_manifest(
    ctx: PilotContext, run: TrainingRun, *, n: int, inputs: dict[str, Any], checkpoint: dict[str, Any] | None
) -> dict[str, Any]:
    get_s, put_s = url_lifetimes(ctx)
    prefix = attempt_prefix(run.id, n)
    remote = ctx.settings.gpu.remote
    config = job_config(
        _params(ctx),
        train_file=Path(inputs["train"]["path"]),
        eval_file=Path(inputs["eval"]["path"]) if "eval" in inputs else None,
        output_dir=Path("output"),
    )
    config.update(save_steps=remote.save_steps, heartbeat_every_s=min(remote.heartbeat_every_s, 10.0))

    def get(ref: dict[str, Any]) -> dict[str, Any]:
        return {"url": ctx.artifacts.presign_get(ref["key"], expires_s=get_s), "sha256": ref["sha256"]}

    def put(key: str) -> str:
        return ctx.artifacts.presign_put(key, expires_s=put_s)

    return {
        "run_id": run.id,
        "attempt": n,
        "heartbeat_every_s": remote.heartbeat_every_s,
        "job_module": remote.job_module,
        "code": get(inputs["code"]),
        "inputs": {name: {**get(ref), "path": ref["path"]} for name, ref in inputs.items() if name != "code"},
        "config": config,
        "checkpoint": None
        if checkpoint is None
        else {"step": checkpoint["step"], "files": {name: get(ref) for name, ref in checkpoint["files"].items()}},
        "outputs": {
            "heartbeat": put(f"{prefix}/heartbeat.json"),
            "result": put(f"{prefix}/result.json"),
            "adapter": {name: put(f"{prefix}/adapter/{name}") for name in ADAPTER_FILES},
            "checkpoint_slots": [
                {
                    "files": {name: put(f"{prefix}/checkpoint-{slot}/{name}") for name in CHECKPOINT_FILES},
                    "marker": put(f"{prefix}/checkpoint-{slot}/checkpoint.json"),
                }
                for slot in SLOTS
            ],
        },
    }


def _params(ctx: PilotContext) -> TrainingParams:
    return runs.training_params(ctx)


# -- what comes back --------------------------------------------------------------------------------------
def read_heartbeat(ctx: PilotContext, run_id: str, n: int) -> dict[str, Any] | None:
    return read_json(ctx, f"{attempt_prefix(run_id, n)}/heartbeat.json", _scratch(ctx, run_id))


def read_result(ctx: PilotContext, run_id: str, n: int) -> dict[str, Any] | None:
    return read_json(ctx, f"{attempt_prefix(run_id, n)}/result.json", _scratch(ctx, run_id))


def latest_checkpoint(ctx: PilotContext, run_id: str, attempts: Iterable[int]) -> dict[str, Any] | None:
    """The newest checkpoint whose every file matches its marker's sha256 (downloaded to verify)."""
    scratch = _scratch(ctx, run_id)
    found: list[tuple[int, str, dict[str, Any]]] = []
    for n in attempts:
        for slot in SLOTS:
            prefix = f"{attempt_prefix(run_id, n)}/checkpoint-{slot}"
            marker = read_json(ctx, f"{prefix}/checkpoint.json", scratch)
            if marker and isinstance(marker.get("files"), dict) and "adapter_model.safetensors" in marker["files"]:
                found.append((int(marker["step"]), prefix, marker))
    for step, prefix, marker in sorted(found, key=lambda f: f[0], reverse=True):
        files = {}
        try:
            for name, meta in marker["files"].items():
                if name not in CHECKPOINT_FILES:
                    raise IntegrityError(f"unexpected checkpoint file {name!r}")
                key = f"{prefix}/{name}"
                ctx.artifacts.get(key, scratch / "verify" / name, sha256=str(meta["sha256"]))
                files[name] = {"key": key, "sha256": str(meta["sha256"])}
        except (ArtifactError, KeyError) as exc:
            logger.warning("Checkpoint %s (step %d) of run %s is incomplete: %s", prefix, step, run_id, exc)
            continue
        return {"step": step, "prefix": prefix, "files": files}
    return None


def collect_adapter(ctx: PilotContext, run_id: str, n: int, result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Verify the uploaded adapter (sha256, safetensors only) and store it under ``runs/<id>/adapter/``."""
    claimed = result.get("adapter") or {}
    if not isinstance(claimed, dict) or "adapter_model.safetensors" not in claimed:
        raise IntegrityError("the result names no adapter_model.safetensors")
    local = _scratch(ctx, run_id) / f"adapter-{n}"
    verified: dict[str, Path] = {}
    for name, meta in sorted(claimed.items()):
        suffix = Path(name).suffix
        if name not in ADAPTER_FILES or suffix in PICKLE_SUFFIXES or suffix not in SAFE_ADAPTER_SUFFIXES:
            raise IntegrityError(f"refusing adapter file {name!r}")
        key = f"{attempt_prefix(run_id, n)}/adapter/{name}"
        verified[name] = ctx.artifacts.get(key, local / name, sha256=str(meta["sha256"]))
        refuse_pickled(name, verified[name])
    # Only once every file passed is anything stored where a candidate would point.
    stored: dict[str, dict[str, Any]] = {}
    for name, path in verified.items():
        ref = ctx.artifacts.put(f"runs/{run_id}/adapter/{name}", path)
        stored[name] = {"key": ref.key, "uri": ref.uri, "sha256": ref.sha256, "size": ref.size}
    return stored


def provider_cost(ctx: PilotContext, run: TrainingRun, attempts: list[dict[str, Any]]) -> float:
    """What the provider charged for every instance with the run's label; else elapsed time x $/h per attempt."""
    return label_cost(ctx, run.label, since=run.created_at.timestamp(), attempts=attempts)


def label_cost(ctx: PilotContext, label: str, *, since: float, attempts: list[dict[str, Any]]) -> float:
    """What the provider charged for every instance carrying ``label`` (the charges of a day either side of
    ``since`` and now); else elapsed time x $/h of ``attempts`` (``launched_at``, ``ended_at``, ``dph``)."""
    if isinstance(ctx.gpu, ChargesProvider):
        try:
            rows = [
                c for c in ctx.gpu.charges(since - 86400, time.time() + 86400) if getattr(c, "label", None) == label
            ]
            return float(sum(float(c.amount_usd) for c in rows))
        except PilotError as exc:
            logger.warning("Charges of %s unavailable (%s): using elapsed time x $/h", label, exc)
    return estimated_cost(attempts, time.time())


def estimated_cost(attempts: list[dict[str, Any]], now: float) -> float:
    total = 0.0
    for a in attempts:
        if a.get("launched_at") is None or a.get("instance_id") is None:
            continue
        end = a.get("ended_at") or now
        total += float(a.get("dph") or 0.0) * max(end - float(a["launched_at"]), 0.0) / 3600
    return total


# -- choosing a host ----------------------------------------------------------------------------------------
def _host_key(offer: Offer) -> str:
    machine = offer.raw.get("machine_id") if offer.raw else None
    return f"machine-{machine}" if machine is not None else f"offer-{offer.id}"


def next_offer(ctx: PilotContext, run: TrainingRun, *, excluded: set[str]) -> tuple[Offer, float | None] | None:
    """The cheapest expected-total-cost offer on a host not tried yet, with the bid when interruptible."""
    remote = ctx.settings.gpu.remote
    params = _params(ctx)
    requirements = dataclasses.replace(
        requirements_for(params, max_dph=ctx.settings.budget.max_dph), interruptible=remote.interruptible
    )
    offers = [o for o in ctx.gpu.search_offers(requirements) if _host_key(o) not in excluded and o.id not in excluded]
    figures = (run.config.get("plan") or {}) if run.config else {}
    plan = plan_training(
        params,
        offers,
        train_examples=int(figures.get("train_examples", 0)),
        train_tokens=int(figures.get("train_tokens", 0)),
        remote=True,
    )
    if plan is None:
        return None
    offer = plan.offer
    bid = None
    if remote.interruptible:
        bid = round((offer.min_bid if offer.min_bid is not None else offer.dph_total) * remote.bid_markup, 4)
    return offer, bid


def offer_dph(offer: Offer, bid: float | None, disk_gb: float) -> float:
    if bid is None:
        return offer.dph_total
    return bid + offer.storage_cost_per_gb_month * disk_gb / 720.0


# -- run bookkeeping (fields, not status: statuses go through pilot.store.writers) -------------------------
def remote_state(run: TrainingRun) -> dict[str, Any]:
    state = dict((run.config or {}).get("remote") or {})
    state.setdefault("attempts", [])
    return state


def save_remote_state(
    ctx: PilotContext, run_id: str, state: dict[str, Any], *, reason: str | None = None, **fields: Any
) -> TrainingRun:
    """Write ``config["remote"]`` (and plain fields such as ``instance_id``) with an event when ``reason``."""
    with ctx.store.session(write=True) as session:
        row = session.get(TrainingRun, run_id)
        assert row is not None, run_id
        config = {**(row.config or {}), "remote": state}
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_id, TrainingRun.status == row.status)  # type: ignore[arg-type]
            .values(config=config, **fields)
            .execution_options(synchronize_session=False)
        )
        if reason is not None:
            record_event(
                session,
                entity_type="training_run",
                entity_id=run_id,
                actor="system",
                reason=reason,
                data={k: v for k, v in fields.items() if isinstance(v, str | int | float | None)},
            )
        session.flush()
        session.refresh(row)
        return row


def owned_for_run(ctx: PilotContext, run: TrainingRun) -> list[Instance]:
    return [i for i in ctx.gpu.list_owned(run.label) if i.label == run.label]


def find_run(ctx: PilotContext, run_id: str) -> TrainingRun:
    with ctx.store.session() as session:
        run = session.exec(select(TrainingRun).where(TrainingRun.id == run_id)).one()
    return run


# -- launching ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchOutcome:
    run: TrainingRun
    launched: bool
    reason: str = ""


def launch_attempt(ctx: PilotContext, run: TrainingRun, snapshot: DatasetSnapshot) -> LaunchOutcome:
    """Stage and launch the next attempt on a host not tried yet. The attempt is recorded before renting."""
    remote = ctx.settings.gpu.remote
    state = remote_state(run)
    state["inputs"] = stage_inputs(ctx, run, snapshot)
    attempts: list[dict[str, Any]] = state["attempts"]
    excluded = {a["host"] for a in attempts if a.get("host")} | {a["offer_id"] for a in attempts if a.get("offer_id")}
    secrets = secrets_to_withhold(ctx)
    last_error = "no offer"
    for _ in range(_OFFER_TRIES):
        if len(attempts) >= remote.max_attempts:
            return LaunchOutcome(run, False, f"{len(attempts)} host(s) tried ({last_error}); giving up")
        try:
            chosen = next_offer(ctx, run, excluded=excluded)
        except PilotError as exc:
            return LaunchOutcome(run, False, f"offer search failed: {exc}")
        if chosen is None:
            return LaunchOutcome(run, False, f"no other offer meets the job's requirements ({last_error})")
        offer, bid = chosen
        n = len(attempts) + 1
        checkpoint = latest_checkpoint(ctx, run.id, [a["n"] for a in attempts]) if attempts else None
        manifest = build_manifest(ctx, run, n=n, inputs=state["inputs"], checkpoint=checkpoint)
        manifest_url = upload_manifest(
            ctx, f"{attempt_prefix(run.id, n)}/manifest.json", manifest, _scratch(ctx, run.id) / f"manifest-{n}.json"
        )
        spec = host_spec(
            ctx,
            label=run.label,
            offer_id=offer.id,
            bid=bid,
            manifest=manifest,
            manifest_url=manifest_url,
            secrets=secrets,
        )
        dph = offer_dph(offer, bid, remote.disk_gb)
        record = {
            "n": n,
            "offer_id": offer.id,
            "host": _host_key(offer),
            "gpu": offer.gpu_name,
            "dph": dph,
            "bid": bid,
            "resume_step": checkpoint["step"] if checkpoint else None,
            "state": "launching",
            "instance_id": None,
            "launched_at": time.time(),
        }
        attempts.append(record)
        run = save_remote_state(ctx, run.id, state)  # intent before side effect
        try:
            instance = ctx.gpu.launch(spec)
        except OfferUnavailable as exc:
            last_error = f"offer {offer.id} taken: {exc}"
            excluded |= {offer.id, record["host"]}
            attempts.pop()  # nothing was rented: a taken offer does not use up an attempt
            run = save_remote_state(ctx, run.id, state, reason=f"offer {offer.id} was taken; choosing another")
            continue
        except PilotError as exc:
            last_error = f"launch on offer {offer.id} failed: {exc}"
            excluded |= {offer.id, record["host"]}
            record.update(state="launch_failed", ended_at=time.time(), end_reason=str(exc)[:300])
            run = save_remote_state(ctx, run.id, state, reason=last_error[:500])
            continue
        record.update(state="launched", instance_id=instance.id, launched_at=time.time())
        why = (
            f"attempt {n}: instance {instance.id} accepted by {ctx.gpu.name} on offer {offer.id} ({offer.gpu_name}, "
            f"${dph:.4f}/h{', bid' if bid else ''})"
            + (f", resuming from step {checkpoint['step']}" if checkpoint else "")
        )
        if run.status == RunStatus.PENDING:
            with ctx.store.session(write=True) as session:
                run = switch_run_status(
                    session,
                    run.id,
                    RunStatus.PROVISIONING,
                    actor="system",
                    reason=why,
                    instance_id=instance.id,
                    offer_id=offer.id,
                    dph=dph,
                    config={**run.config, "remote": state},
                )
        else:
            run = save_remote_state(ctx, run.id, state, reason=why, instance_id=instance.id, offer_id=offer.id, dph=dph)
        logger.info("Run %s %s", run.id, why)
        return LaunchOutcome(run, True)
    return LaunchOutcome(run, False, last_error)


# -- watching ---------------------------------------------------------------------------------------------
@dataclass
class Liveness:
    """What this process saw of an attempt, by its own clock (host clocks are not trusted)."""

    running_since: float | None = None
    seq: Any = None
    seen_at: float | None = None


def watch_remote(
    ctx: PilotContext, run_id: str, *, sleep: Callable[[float], None] = time.sleep, poll_s: float | None = None
) -> TrainingRun:
    """Poll until the run ends: deadlines, retries on another host, destroy-and-verify, collect. Resumable."""
    training, remote = ctx.settings.training, ctx.settings.gpu.remote
    poll_s = poll_s if poll_s is not None else training.poll_interval_s
    seen: dict[int, Liveness] = {}
    for _ in range(1_000_000):  # bounded: every branch sleeps or ends, and the deadlines end the run
        run = find_run(ctx, run_id)
        if RunStatus(run.status).is_terminal:
            return run  # the kill switch or the reconciler ended it meanwhile
        state = remote_state(run)
        attempts: list[dict[str, Any]] = state["attempts"]
        now = time.time()
        if run.instance_id is None:
            run = adopt_or_clean(ctx, run)
            if run.instance_id is None:
                with ctx.store.session() as session:
                    snapshot = session.get(DatasetSnapshot, run.snapshot_id)
                assert snapshot is not None
                outcome = launch_attempt(ctx, run, snapshot)
                if not outcome.launched:
                    return finish_failed(ctx, outcome.run, RunTerminationReason.LAUNCH_FAILED, outcome.reason)
            continue
        current = next((a for a in reversed(attempts) if a.get("instance_id") == run.instance_id), None)
        if current is None:  # an instance no attempt recorded: not ours to judge; end the run cleanly
            current = {"n": len(attempts), "instance_id": run.instance_id}
            return _stop(ctx, run, current, RunTerminationReason.DAEMON_LOST_TRACK, "no attempt recorded")
        live = seen.setdefault(int(current["n"]), Liveness())
        reserved = float(run.config.get("reserved_usd", run.estimated_cost_usd))
        if estimated_cost(attempts, now + poll_s) > reserved + 1e-9:
            message = f"spend would pass the ${reserved:.4f} reservation"
            return _stop(ctx, run, current, RunTerminationReason.BUDGET_EXCEEDED, message)
        first = min(float(a["launched_at"]) for a in attempts if a.get("launched_at"))
        if now > first + training.max_duration_minutes * 60:
            message = f"still running after {training.max_duration_minutes:g} min"
            return _stop(ctx, run, current, RunTerminationReason.DEADLINE_EXCEEDED, message)
        try:
            instance = ctx.gpu.poll(run.instance_id)
        except PilotError as exc:
            logger.warning("Run %s: polling instance %s failed: %s", run.id, run.instance_id, exc)
            sleep(poll_s)
            continue
        match instance.state:
            case InstanceState.LOADING:
                waited = now - float(current["launched_at"])
                if waited > remote.loading_timeout_s:
                    ended = _breach(
                        ctx,
                        run,
                        current,
                        RunTerminationReason.LAUNCH_FAILED,
                        f"instance {instance.id} still loading after {waited:.0f} s ({instance.detail or 'no detail'})",
                        retry=True,
                    )
                    if ended is not None:
                        return ended
                    continue
            case InstanceState.RUNNING:
                if run.status == RunStatus.PROVISIONING:
                    with ctx.store.session(write=True) as session:
                        switch_run_status(
                            session,
                            run.id,
                            RunStatus.RUNNING,
                            actor="system",
                            reason=f"the job started on {instance.id}",
                        )
                live.running_since = live.running_since or now
                beat = read_heartbeat(ctx, run.id, int(current["n"]))
                if beat is not None and beat.get("seq") != live.seq:
                    live.seq, live.seen_at = beat.get("seq"), now
                silent = now - max(live.seen_at or 0.0, live.running_since)
                if silent > training.heartbeat_timeout_s:
                    ended = _breach(
                        ctx,
                        run,
                        current,
                        RunTerminationReason.DEADLINE_EXCEEDED,
                        f"no heartbeat from instance {instance.id} for {silent:.0f} s",
                        retry=True,
                    )
                    if ended is not None:
                        return ended
                    continue
            case InstanceState.EXITED:
                return_value = _exited(ctx, run, current, instance)
                if return_value is not None:
                    return return_value
                continue
            case InstanceState.STOPPED | InstanceState.GONE:
                what = "vanished" if instance.state is InstanceState.GONE else f"stopped ({instance.detail})"
                ended = _breach(
                    ctx,
                    run,
                    current,
                    RunTerminationReason.INSTANCE_VANISHED,
                    f"instance {instance.id} {what}",
                    retry=True,
                )
                if ended is not None:
                    return ended
                continue
        sleep(poll_s)
    raise AssertionError("unreachable: the deadlines end every run")


def _exited(ctx: PilotContext, run: TrainingRun, current: dict[str, Any], instance: Instance) -> TrainingRun | None:
    result = read_result(ctx, run.id, int(current["n"]))
    if instance.exit_code is None:  # the container never ran the job (OCI runtime failure): a host fault
        return _breach(
            ctx,
            run,
            current,
            RunTerminationReason.LAUNCH_FAILED,
            f"instance {instance.id} could not start the job: {instance.detail[:300]}",
            retry=True,
        )
    if instance.exit_code != 0 or result is None or result.get("status") != "ok":
        tail = (result or {}).get("log_tail") or []
        last = f": {tail[-1][:300]}" if tail else ""
        if instance.exit_code == 0:
            message, termination = "the job exited 0 but uploaded no result", RunTerminationReason.INVALID_OUTPUT
        else:
            message, termination = (
                f"the job exited with code {instance.exit_code}{last}",
                RunTerminationReason.JOB_FAILED,
            )
        return _stop(ctx, run, current, termination, message)
    gone = _destroy(ctx, run, current, "the job exited 0")
    state = remote_state(run)
    cost = provider_cost(ctx, run, state["attempts"])
    if not gone:
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type="training_run",
                entity_id=run.id,
                actor="system",
                reason=f"instance {instance.id} could not be verified destroyed; the reconciler will retry",
            )
    with ctx.store.session(write=True) as session:
        run = switch_run_status(session, run.id, RunStatus.COLLECTING, actor="system", reason="the job exited 0")
    try:
        stored = collect_adapter(ctx, run.id, int(current["n"]), result)
    except (PilotError, KeyError, TypeError) as exc:
        return runs.fail_run(ctx, run.id, RunTerminationReason.INVALID_OUTPUT, f"adapter refused: {exc}", cost=cost)
    reported = result.get("metrics")
    metrics: dict[str, Any] = dict(reported) if isinstance(reported, dict) else {}
    metrics["attempts"] = len(state["attempts"])
    return runs.register_candidate(ctx, run, stored, metrics, cost=cost)


def _destroy(ctx: PilotContext, run: TrainingRun, current: dict[str, Any], why: str) -> bool:
    """Destroy the attempt's instance, verify it is gone, and record the attempt's end (instance_id cleared)."""
    instance_id = str(current["instance_id"])
    gone = runs.destroy_and_verify(ctx, instance_id)
    run = find_run(ctx, run.id)
    state = remote_state(run)
    for a in state["attempts"]:
        if a.get("instance_id") == instance_id:
            a.update(state="ended" if gone else "not_verified_gone", ended_at=a.get("ended_at") or time.time())
            a["end_reason"] = why[:300]
    verdict = "destroyed and verified gone" if gone else "NOT verified gone"
    fields: dict[str, Any] = {"instance_id": None} if gone else {}
    save_remote_state(
        ctx, run.id, state, reason=f"attempt {current['n']} ended ({why}); {instance_id} {verdict}", **fields
    )
    return gone


def _stop(
    ctx: PilotContext, run: TrainingRun, current: dict[str, Any], termination: RunTerminationReason, message: str
) -> TrainingRun:
    ended = _breach(ctx, run, current, termination, message, retry=False)
    assert ended is not None  # without a retry the run always ends
    return ended


def _breach(
    ctx: PilotContext,
    run: TrainingRun,
    current: dict[str, Any],
    termination: RunTerminationReason,
    message: str,
    *,
    retry: bool,
) -> TrainingRun | None:
    """Destroy and verify; then retry on another host (returns None) or end the run (returns it)."""
    logger.warning("Run %s attempt %s: %s", run.id, current["n"], message)
    gone = _destroy(ctx, run, current, message)
    run = find_run(ctx, run.id)
    attempts = remote_state(run)["attempts"]
    if not gone:
        message += f"; instance {current['instance_id']} NOT verified destroyed (the reconciler will retry)"
        return finish_failed(ctx, run, termination, message)
    if retry and len(attempts) < ctx.settings.gpu.remote.max_attempts:
        return None
    if retry:
        message += f" (after {len(attempts)} host(s))"
    return finish_failed(ctx, run, termination, message)


def finish_failed(ctx: PilotContext, run: TrainingRun, termination: RunTerminationReason, message: str) -> TrainingRun:
    attempts = remote_state(run)["attempts"]
    return runs.fail_run(ctx, run.id, termination, message, cost=provider_cost(ctx, run, attempts))


def adopt_or_clean(ctx: PilotContext, run: TrainingRun) -> TrainingRun:
    """An instance with the run's label that the run does not record: a crash between "rented" and "recorded".

    If the last attempt was recorded as launching, its newest instance is adopted (it runs that attempt's
    manifest); every other such instance is destroyed and verified gone before anything new is rented.
    """
    try:
        found = sorted(owned_for_run(ctx, run), key=lambda i: (i.started_at or 0.0, i.id))
    except PilotError as exc:
        raise LaunchFailed(f"cannot list instances of {run.label}: {exc}") from exc
    state = remote_state(run)
    attempts = state["attempts"]
    pending = attempts[-1] if attempts and attempts[-1].get("state") == "launching" else None
    adopt = found[-1] if found and pending is not None else None
    for instance in found:
        if instance is adopt:
            continue
        if not runs.destroy_and_verify(ctx, instance.id):
            raise LaunchFailed(f"unrecorded instance {instance.id} of {run.label} could not be destroyed")
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type="instance",
                entity_id=instance.id,
                actor="system",
                reason=f"unrecorded instance of run {run.id} destroyed and verified gone before relaunch",
            )
    if adopt is None:
        if pending is not None:
            pending.update(state="launch_lost", ended_at=time.time(), end_reason="no instance after a restart")
            run = save_remote_state(ctx, run.id, state, reason=f"attempt {pending['n']} left no instance")
        return run
    assert pending is not None
    pending.update(state="launched", instance_id=adopt.id)
    why = f"adopted instance {adopt.id} of attempt {pending['n']} after a restart"
    if run.status == RunStatus.PENDING:
        with ctx.store.session(write=True) as session:
            return switch_run_status(
                session,
                run.id,
                RunStatus.PROVISIONING,
                actor="system",
                reason=why,
                instance_id=adopt.id,
                offer_id=pending["offer_id"],
                dph=pending["dph"],
                config={**run.config, "remote": state},
            )
    return save_remote_state(
        ctx, run.id, state, reason=why, instance_id=adopt.id, offer_id=pending["offer_id"], dph=pending["dph"]
    )
