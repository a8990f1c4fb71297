"""What a rented host gets and what it hands back: code archive, bootstrap, manifest of presigned URLs, uploads.

The host is an untrusted third-party machine. It gets one presigned GET URL (the manifest, in the env as
``LP_MANIFEST_URL``) and a short bootstrap script; the manifest lists presigned GETs for the code archive (the
``jobs`` package + pinned requirements), the snapshot's train/eval files, the champion's adapter a GRPO run
starts from (``init_adapter/``, by its recorded sha256) and the checkpoint to resume from, each with its sha256, and
presigned PUTs for the heartbeat, checkpoints, adapter and result. See jobs/remote_entry.py.

Invariants:
- Nothing sent to the host (env, onstart, label, manifest) contains a credential: the Vast API key, the S3 secret,
  or any secret setting. ``host_spec`` refuses otherwise (``check_no_credentials``).
- What comes back is read as untrusted. Every upload has a size cap checked from its stored size before it is
  downloaded (``UPLOAD_LIMITS`` for the JSON objects, ``gpu.remote.max_upload_mb`` for files; a presigned PUT
  cannot carry a size limit and the host job uploads with PUT, so the cap is the daemon's HEAD-before-GET) and a
  schema (``Heartbeat``, ``CheckpointMarker``, ``HostResult``: types of every field the daemon reads, strict
  integers, bounded strings and lists). Anything too large, not JSON or off its schema is a ``HostFault``: the
  watcher records it and treats the host as faulty (destroy, retry elsewhere), never an exception out of it.
  Checkpoints are verified file by file against their marker's sha256 (a bad marker is skipped, recorded), and
  adapters (sha256 from the result, safetensors only, no pickle) before being stored under ``runs/<run_id>/adapter/``.

Shared by training attempts (pilot/runs/remote.py) and evaluation stages (pilot/evaluation/remote.py).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shlex
import tarfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictInt, ValidationError

from pilot.context import PilotContext
from pilot.runs import lifecycle as runs
from pilot.store.models import DatasetSnapshot, TrainingRun
from pilot.store.status import EntityType
from pilot.store.writers import record_event
from subagents.training import INIT_DIR, METHOD_FILES, TrainingParams, init_adapter_files, job_config, method_params
from tools.artifacts.base import PICKLE_SUFFIXES, SAFE_ADAPTER_SUFFIXES, refuse_pickled
from tools.errors import ArtifactError, ArtifactNotFound, ArtifactTooLarge, IntegrityError, LaunchFailed, PilotError
from tools.gpu.base import LaunchSpec

logger = logging.getLogger(__name__)

JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"
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


# -- what a host may hand back ------------------------------------------------------------------------------
KIB = 1024
UPLOAD_LIMITS = {"heartbeat": 64 * KIB, "marker": 64 * KIB, "result": 1024 * KIB}
PREDICTIONS_LIMIT = 256 * 1024 * KIB  # an evaluation side's predictions file
_SHA256 = r"^[0-9a-f]{64}$"


class HostFault(PilotError):
    """What a rented host uploaded is refused: over its size cap, not JSON, or not of its schema."""


class _Upload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)  # fields the daemon does not read are dropped


class UploadedFile(_Upload):
    sha256: str = Field(pattern=_SHA256)
    size: StrictInt | None = Field(None, ge=0)


class Heartbeat(_Upload):
    seq: StrictInt | str = Field(union_mode="left_to_right")
    phase: str | None = Field(None, max_length=200)


class CheckpointMarker(_Upload):
    step: StrictInt = Field(ge=0)
    files: dict[str, UploadedFile] = Field(max_length=len(CHECKPOINT_FILES))


class HostResult(_Upload):
    status: str = Field(max_length=40)
    exit_code: StrictInt | None = None
    error: str | None = Field(None, max_length=10_000)
    log_tail: list[str] = Field(default_factory=list, max_length=200)
    adapter: dict[str, UploadedFile] | None = Field(None, max_length=len(ADAPTER_FILES))
    metrics: dict[str, Any] | None = None
    predictions: dict[str, UploadedFile] | None = Field(None, max_length=4)
    summaries: dict[str, UploadedFile] | None = Field(None, max_length=4)


_SCHEMAS: dict[str, type[_Upload]] = {"heartbeat": Heartbeat, "marker": CheckpointMarker, "result": HostResult}


def read_upload(ctx: PilotContext, key: str, scratch: Path, kind: str) -> dict[str, Any] | None:
    """A JSON object a host uploaded, checked against ``UPLOAD_LIMITS[kind]`` before download and against its
    schema after: the validated fields as a dict, or None when it is absent (or the store did not answer: try again
    at the next poll). Raises ``HostFault`` when it is too large, not JSON or off its schema."""
    dest = scratch / key.replace("/", "__")
    limit = UPLOAD_LIMITS[kind]
    try:
        ctx.artifacts.get(key, dest, max_bytes=limit)
    except ArtifactNotFound:
        return None
    except ArtifactTooLarge as exc:
        raise HostFault(f"the host's {kind} is over its {limit // KIB} KiB cap: {exc}") from exc
    except ArtifactError as exc:  # the store, not the host: read it again at the next poll
        logger.warning("Could not read %s from the artifact store: %s", key, exc)
        return None
    try:
        data = json.loads(dest.read_bytes())
        parsed = _SCHEMAS[kind].model_validate(data)
    except ValueError as exc:  # JSONDecodeError and ValidationError are both ValueErrors
        detail = exc.errors()[0] if isinstance(exc, ValidationError) else exc
        raise HostFault(f"the host's {kind} ({key}) is malformed: {str(detail)[:300]}") from exc
    finally:
        dest.unlink(missing_ok=True)
    return parsed.model_dump()


def max_upload_bytes(ctx: PilotContext) -> int:
    return int(ctx.settings.gpu.remote.max_upload_mb * 1024 * KIB)


# -- keys -------------------------------------------------------------------------------------------------
def attempt_prefix(run_id: str, n: int) -> str:
    return f"runs/{run_id}/attempt-{n}"


def scratch_dir(ctx: PilotContext, run_id: str) -> Path:
    path = ctx.settings.work_dir / "runs" / run_id / "remote"
    path.mkdir(parents=True, exist_ok=True)
    return path


def stage_inputs(ctx: PilotContext, run: TrainingRun, snapshot: DatasetSnapshot) -> dict[str, Any]:
    """Put the code archive and the snapshot's files in the artifact store once per run (key, sha256, path)."""
    existing = (run.config or {}).get("inputs")
    if existing:
        return dict(existing)
    scratch = scratch_dir(ctx, run.id)
    archive = scratch / "code.tar.gz"
    archive.write_bytes(code_archive())
    files = {"code": (archive, "code.tar.gz")}
    snap = Path(snapshot.path)
    method = str(((run.config or {}).get("plan") or {}).get("method", "sft"))
    for name, file in (("train", METHOD_FILES[method]), ("eval", "eval.jsonl")):
        if (snap / file).is_file():
            files[name] = (snap / file, f"data/{file}")
    staged = {}
    for name, (path, rel) in files.items():
        ref = ctx.artifacts.put(f"runs/{run.id}/inputs/{path.name}", path)
        staged[name] = {"key": ref.key, "sha256": ref.sha256, "path": rel}
    # GRPO from the champion: its adapter files, already stored, fetched by the host by their recorded sha256.
    for file, stored in sorted(init_adapter_files((run.config or {}).get("plan") or {}).items()):
        staged[f"{INIT_DIR}/{file}"] = {"key": stored["key"], "sha256": stored["sha256"], "path": f"{INIT_DIR}/{file}"}
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
    figures = (run.config or {}).get("plan") or {}
    preference = method_params(figures)
    config = job_config(
        _params(ctx),
        train_file=Path(inputs["train"]["path"]),
        eval_file=Path(inputs["eval"]["path"]) if "eval" in inputs else None,
        output_dir=Path("output"),
        preference=preference,
        init_adapter=Path(INIT_DIR) if any(name.startswith(f"{INIT_DIR}/") for name in inputs) else None,
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
        "job_module": ctx.host_modules.for_method(str(figures.get("method", "sft"))),
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
    """The attempt's last heartbeat (``Heartbeat``), None if none yet; ``HostFault`` if refused."""
    return read_upload(ctx, f"{attempt_prefix(run_id, n)}/heartbeat.json", scratch_dir(ctx, run_id), "heartbeat")


def read_result(ctx: PilotContext, run_id: str, n: int) -> dict[str, Any] | None:
    """The attempt's result (``HostResult``), None if none yet; ``HostFault`` if refused."""
    return read_upload(ctx, f"{attempt_prefix(run_id, n)}/result.json", scratch_dir(ctx, run_id), "result")


def latest_checkpoint(ctx: PilotContext, run_id: str, attempts: Iterable[int]) -> dict[str, Any] | None:
    """The newest checkpoint whose every file matches its marker's sha256 (downloaded to verify). A marker that is
    refused (``HostFault``: too large, malformed such as ``"step": "latest"``) is skipped and recorded as a host
    fault on the run (an event). Never raises for what a host uploaded."""
    scratch = scratch_dir(ctx, run_id)
    found: list[tuple[int, str, dict[str, Any]]] = []
    for n in attempts:
        for slot in SLOTS:
            prefix = f"{attempt_prefix(run_id, n)}/checkpoint-{slot}"
            try:
                marker = read_upload(ctx, f"{prefix}/checkpoint.json", scratch, "marker")
            except HostFault as exc:
                logger.warning("Run %s: checkpoint %s refused: %s", run_id, prefix, exc)
                with ctx.store.session(write=True) as session:
                    record_event(
                        session,
                        entity_type=EntityType.TRAINING_RUN,
                        entity_id=run_id,
                        actor="system",
                        reason=f"host fault: checkpoint {prefix} skipped: {exc}"[:1000],
                        data={"host_fault": "checkpoint_marker", "attempt": n},
                    )
                continue
            if marker and "adapter_model.safetensors" in marker["files"]:
                found.append((int(marker["step"]), prefix, marker))
    for step, prefix, marker in sorted(found, key=lambda f: f[0], reverse=True):
        files = {}
        try:
            for name, meta in marker["files"].items():
                if name not in CHECKPOINT_FILES:
                    raise IntegrityError(f"unexpected checkpoint file {name!r}")
                key = f"{prefix}/{name}"
                dest = scratch / "verify" / name
                ctx.artifacts.get(key, dest, sha256=str(meta["sha256"]), max_bytes=max_upload_bytes(ctx))
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
    local = scratch_dir(ctx, run_id) / f"adapter-{n}"
    verified: dict[str, Path] = {}
    for name, meta in sorted(claimed.items()):
        suffix = Path(name).suffix
        if name not in ADAPTER_FILES or suffix in PICKLE_SUFFIXES or suffix not in SAFE_ADAPTER_SUFFIXES:
            raise IntegrityError(f"refusing adapter file {name!r}")
        key = f"{attempt_prefix(run_id, n)}/adapter/{name}"
        verified[name] = ctx.artifacts.get(
            key, local / name, sha256=str(meta["sha256"]), max_bytes=max_upload_bytes(ctx)
        )
        refuse_pickled(name, verified[name])
    # Only once every file passed is anything stored where a candidate would point.
    stored: dict[str, dict[str, Any]] = {}
    for name, path in verified.items():
        ref = ctx.artifacts.put(f"runs/{run_id}/adapter/{name}", path)
        stored[name] = {"key": ref.key, "uri": ref.uri, "sha256": ref.sha256, "size": ref.size}
    return stored
