"""The job's entry point on a rented host: fetch inputs, run jobs.finetune_lora, report through presigned URLs.

    python -m jobs.remote_entry --manifest manifest.json

The manifest (written by the control plane, fetched by the onstart bootstrap) holds every URL the job may use:
presigned GETs for its inputs (each with the sha256 it must have) and presigned PUTs for what it sends back. The
host never sees a credential: a URL is the only capability it holds, and each expires.

Invariants:
- Standard library only: this runs before (and independently of) the job's heavy dependencies, on whatever
  python the image has. Nothing from pilot/, subagents/ or tools/ is imported.
- Every input is verified against its sha256 before use; a mismatch ends the job (exit 96) before training.
- Heartbeats: a background thread PUTs ``{"seq", "phase", "step", "max_steps", "loss", "time"}`` every
  ``heartbeat_every_s``; ``seq`` only grows, so the control plane judges liveness by its own clock, not the host's.
- Checkpoints: each new COMPLETE checkpoint of the job is uploaded to one of two slots, alternating, files first and
  the slot's ``checkpoint.json`` marker (step + sha256 of every file) last. A slot whose files do not match its
  marker is incomplete; the other slot still holds the previous complete checkpoint.
- On SIGTERM (outbid, stop) the signal is passed to the job, which saves a checkpoint; it is uploaded if time allows.
- The result (``result.json``: status, exit code, adapter files with sha256, metrics, log tail) is uploaded last,
  after the adapter files, so a result that says ``ok`` names files that are already in place.
- ``file://`` URLs (the local artifact store, for rehearsals) are read and written directly.

Stages (``manifest["stage"]``): ``train`` (the default: the job above) or ``evaluate``: after the same fetch, the
generation module (``job_module``, jobs.generate) runs once per side listed in ``manifest["sides"]`` (candidate,
then champion), each with its own config (paths relative to the work directory; the adapter, if any, fetched and
verified like every input). Each side's predictions file and summary are uploaded through their presigned PUTs
(``outputs["predictions"][side]``, ``outputs["summaries"][side]``), and the result names the sha256 and size of
every uploaded file. A side whose job fails ends the stage (status ``failed``); nothing is scored here: the
control plane downloads the predictions, checks their sha256 and scores them itself.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

EXIT_BAD_INPUT = 96
EXIT_SIGTERM = 143
CHECKPOINT_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "optimizer.safetensors",
    "rng_state.safetensors",
    "trainer_state.json",
)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
_ATTEMPTS = 4


class EntryError(Exception):
    """An input could not be fetched or verified; the job does not start."""


def _log(msg: str) -> None:
    print(f"[remote_entry] {msg}", flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _retrying(what: str, fn: Any) -> Any:
    delay = 0.5
    for attempt in range(_ATTEMPTS):
        try:
            return fn()
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            if attempt + 1 == _ATTEMPTS:
                raise EntryError(f"{what} failed after {_ATTEMPTS} attempts: {exc}") from exc
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def download(url: str, dest: Path, sha256: str | None) -> Path:
    """Fetch ``url`` to ``dest`` (through a temporary name) and verify its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")

    def fetch() -> None:
        with urllib.request.urlopen(url, timeout=120) as response, tmp.open("wb") as out:
            while block := response.read(1 << 20):
                out.write(block)

    _retrying(f"download of {dest.name}", fetch)
    if sha256 is not None and (actual := sha256_file(tmp)) != sha256:
        tmp.unlink(missing_ok=True)
        raise EntryError(f"{dest.name}: sha256 {actual}, expected {sha256}")
    tmp.replace(dest)
    return dest


def upload_bytes(url: str, data: bytes) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        path = Path(urllib.request.url2pathname(parts.path))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_bytes(data)
        tmp.replace(path)
        return

    def put() -> None:
        request = urllib.request.Request(
            url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream"}
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()

    _retrying("upload", put)


def upload_file(url: str, path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    upload_bytes(url, data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def upload_json(url: str, payload: dict[str, Any]) -> None:
    upload_bytes(url, json.dumps(payload, sort_keys=True).encode())


class HeartbeatSender:
    """Uploads a heartbeat every ``every_s`` from a daemon thread; failures are logged and retried next beat."""

    def __init__(self, url: str, every_s: float, job_heartbeat: Path, attempt: int) -> None:
        self.url, self.every_s, self.job_heartbeat, self.attempt = url, every_s, job_heartbeat, attempt
        self.phase = "starting"
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def beat(self, phase: str | None = None) -> None:
        with self._lock:
            if phase is not None:
                self.phase = phase
            self._seq += 1
            payload: dict[str, Any] = {"seq": self._seq, "phase": self.phase, "attempt": self.attempt}
        with contextlib.suppress(OSError, ValueError):  # the job has not written one yet
            payload.update(json.loads(self.job_heartbeat.read_text()))
        payload["time"] = time.time()
        try:
            upload_json(self.url, payload)
        except EntryError as exc:
            _log(f"heartbeat upload failed: {exc}")

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()

    def __enter__(self) -> HeartbeatSender:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def latest_complete_checkpoint(output_dir: Path) -> tuple[int, Path] | None:
    found = [
        (int(d.name[5:]), d)
        for d in (output_dir / "checkpoints").glob("step-*")
        if d.name[5:].isdigit() and (d / "COMPLETE").is_file()
    ]
    return max(found) if found else None


class CheckpointUploader:
    """Uploads each new complete checkpoint to the two slots in turn (files first, the marker last)."""

    def __init__(self, slots: list[dict[str, Any]], output_dir: Path) -> None:
        self.slots, self.output_dir = slots, output_dir
        self.uploaded_step = -1
        self.count = 0

    def sync(self) -> None:
        if not self.slots:
            return
        latest = latest_complete_checkpoint(self.output_dir)
        if latest is None or latest[0] <= self.uploaded_step:
            return
        step, directory = latest
        slot = self.slots[self.count % len(self.slots)]
        files = {}
        for name in CHECKPOINT_FILES:
            if (directory / name).is_file():
                files[name] = upload_file(slot["files"][name], directory / name)
        upload_json(slot["marker"], {"step": step, "files": files, "time": time.time()})
        self.uploaded_step, self.count = step, self.count + 1
        _log(f"checkpoint step {step} uploaded")


def restore_checkpoint(spec: dict[str, Any] | None, output_dir: Path) -> int | None:
    """Put the checkpoint the control plane handed over where the job's ``resume_from: auto`` finds it."""
    if not spec:
        return None
    step = int(spec["step"])
    directory = output_dir / "checkpoints" / f"step-{step}"
    for name, ref in spec["files"].items():
        if name not in CHECKPOINT_FILES:
            raise EntryError(f"unexpected checkpoint file {name!r}")
        download(ref["url"], directory / name, ref["sha256"])
    (directory / "COMPLETE").write_text(f"{step}\n")  # last: only now is it a complete checkpoint
    return step


class _Stop:
    def __init__(self) -> None:
        self.requested = False
        self.child: subprocess.Popen[str] | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)


def run(manifest_path: Path) -> int:
    manifest = json.loads(manifest_path.read_text())
    work = manifest_path.resolve().parent
    outputs = manifest["outputs"]
    output_dir = work / "output"
    output_dir.mkdir(parents=True, exist_ok=True)
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop.handle)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    stage = manifest.get("stage", "train")
    with HeartbeatSender(
        outputs["heartbeat"], float(manifest["heartbeat_every_s"]), output_dir / "heartbeat.json", manifest["attempt"]
    ) as heartbeat:
        heartbeat.beat("fetching")
        try:
            for name, ref in manifest["inputs"].items():
                download(ref["url"], work / ref["path"], ref["sha256"])
                _log(f"fetched {name}")
            resumed = restore_checkpoint(manifest.get("checkpoint"), output_dir) if stage == "train" else None
        except EntryError as exc:
            _log(str(exc))
            upload_json(outputs["result"], {"status": "failed", "exit_code": EXIT_BAD_INPUT, "error": str(exc)})
            return EXIT_BAD_INPUT
        if stage == "evaluate":
            code = _evaluate(manifest, work, heartbeat, stop, tail)
        else:
            code = _train(manifest, work, output_dir, resumed, heartbeat, stop, tail)
        heartbeat.beat("done")
    _log(f"job ended with code {code}")
    return EXIT_SIGTERM if stop.requested and code != 0 else int(code)


def _child(
    manifest: dict[str, Any], config_path: Path, stop: _Stop, tail: collections.deque[str]
) -> tuple[subprocess.Popen[str], threading.Thread]:
    child = subprocess.Popen(
        [sys.executable, "-m", manifest.get("job_module", "jobs.finetune_lora"), "--config", str(config_path)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stop.child = child
    pump = threading.Thread(target=_pump, args=(child, tail), daemon=True)
    pump.start()
    return child, pump


def train_config(config: dict[str, Any], work: Path, output_dir: Path) -> dict[str, Any]:
    """The job's config on this host: the manifest's relative input paths (the train and eval files, and
    ``init_adapter``: the directory the champion's adapter files were fetched into, e.g. ``init_adapter/``) under
    ``work``, the output under ``output_dir``."""
    config = dict(config)
    for key in ("train_file", "eval_file", "init_adapter"):
        if config.get(key):
            config[key] = str(work / config[key])
    config["output_dir"] = str(output_dir)
    return config


def _train(
    manifest: dict[str, Any],
    work: Path,
    output_dir: Path,
    resumed: int | None,
    heartbeat: HeartbeatSender,
    stop: _Stop,
    tail: collections.deque[str],
) -> int:
    outputs = manifest["outputs"]
    config = train_config(manifest["config"], work, output_dir)
    config_path = work / "job.json"
    config_path.write_text(json.dumps(config, indent=2))
    heartbeat.beat("training")
    _log(f"starting the job (resuming from step {resumed})" if resumed is not None else "starting the job")
    uploader = CheckpointUploader(outputs.get("checkpoint_slots") or [], output_dir)
    if resumed is not None:
        uploader.uploaded_step = resumed  # already stored: not uploaded again
    child, pump = _child(manifest, config_path, stop, tail)
    while child.poll() is None:
        time.sleep(min(1.0, heartbeat.every_s))
        try:
            uploader.sync()
        except EntryError as exc:
            _log(f"checkpoint upload failed (will retry): {exc}")
    pump.join(timeout=10)
    code = child.returncode
    try:
        uploader.sync()  # the checkpoint a SIGTERM made
    except EntryError as exc:
        _log(f"final checkpoint upload failed: {exc}")
    heartbeat.beat("uploading")
    result: dict[str, Any] = {"status": "ok" if code == 0 else "failed", "exit_code": code, "resumed": resumed}
    if code == 0:
        adapter_dir = output_dir / "adapter"
        result["adapter"] = {
            name: upload_file(url, adapter_dir / name)
            for name, url in outputs["adapter"].items()
            if (adapter_dir / name).is_file()
        }
        metrics_file = output_dir / "metrics.json"
        result["metrics"] = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    result["log_tail"] = list(tail)[-20:]
    result["stopped_by_signal"] = stop.requested
    upload_json(outputs["result"], result)
    return int(code)


def _evaluate(
    manifest: dict[str, Any], work: Path, heartbeat: HeartbeatSender, stop: _Stop, tail: collections.deque[str]
) -> int:
    """Generate for each side in turn, upload what each produced; the result goes last."""
    outputs = manifest["outputs"]
    result: dict[str, Any] = {"status": "ok", "exit_code": 0, "predictions": {}, "summaries": {}}
    for side, spec in manifest["sides"].items():
        if stop.requested:
            result.update(status="failed", exit_code=EXIT_SIGTERM, error=f"stopped before {side}")
            break
        config = dict(spec["config"])
        for key in ("adapter", "input_file", "output_file"):
            if config.get(key):
                config[key] = str(work / config[key])
        Path(config["output_file"]).parent.mkdir(parents=True, exist_ok=True)
        config_path = work / f"generate-{side}.json"
        config_path.write_text(json.dumps(config, indent=2))
        heartbeat.beat(f"generating:{side}")
        _log(f"generating for {side}")
        child, pump = _child(manifest, config_path, stop, tail)
        while child.poll() is None:
            time.sleep(min(1.0, heartbeat.every_s))
        pump.join(timeout=10)
        if child.returncode != 0:
            result.update(status="failed", exit_code=child.returncode, error=f"generation for {side} failed")
            break
        heartbeat.beat(f"uploading:{side}")
        predictions, summary = Path(config["output_file"]), Path(f"{config['output_file']}.summary.json")
        try:
            if predictions.is_file():
                result["predictions"][side] = upload_file(outputs["predictions"][side], predictions)
            if summary.is_file():
                result["summaries"][side] = upload_file(outputs["summaries"][side], summary)
        except EntryError as exc:
            result.update(status="failed", exit_code=EXIT_BAD_INPUT, error=f"upload for {side} failed: {exc}")
            break
    result["log_tail"] = list(tail)[-20:]
    result["stopped_by_signal"] = stop.requested
    upload_json(outputs["result"], result)
    return int(result["exit_code"])


def _pump(child: subprocess.Popen[str], tail: collections.deque[str]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        tail.append(line.rstrip()[:500])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Learning Pilot remote job entry point")
    parser.add_argument("--manifest", required=True, type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        return run(args.manifest)
    except EntryError as exc:
        _log(f"failed: {exc}")
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
