"""The local GPU provider: runs each job as a subprocess on this machine (its CPU or GPU).

Invariant: every instance has a directory ``<root>/instances/<id>/`` holding ``meta.json`` (label, pid, command),
``output.log`` and, once the job ended, ``exit_code``. Jobs run in their own process session, so they outlive a
daemon restart and are found again by ``list_owned`` (the reconciler adopts them); ``terminate`` kills the whole
process group and marks the instance destroyed. It never rents anything, so its offers cost ``dph`` (default 0).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from tools.gpu.base import GpuProvider, Instance, InstanceState, LaunchSpec, Offer, OfferRequirements

logger = logging.getLogger(__name__)

# OMP_NUM_THREADS: the operator's cap on a local job's CPU threads (torch otherwise takes one per core).
_PASS_THROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "OMP_NUM_THREADS")
# The wrapper writes the job's exit code atomically when it ends, so a poll after a daemon restart still knows.
_WRAPPER = '"$@"; rc=$?; echo $rc > exit_code.tmp && mv exit_code.tmp exit_code; exit $rc'


class LocalGpuProvider(GpuProvider):
    name = "local"

    def __init__(
        self,
        root: Path,
        *,
        gpu_name: str = "local",
        gpu_ram_gb: float = 0.0,
        dph: float = 0.0,
        kill_grace_s: float = 10.0,
    ) -> None:
        self.root = root
        self.instances_dir = root / "instances"
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.gpu_name = gpu_name
        self.gpu_ram_gb = gpu_ram_gb
        self.dph = dph
        self.kill_grace_s = kill_grace_s
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # -- offers -------------------------------------------------------------------------------------------
    def search_offers(self, requirements: OfferRequirements, *, limit: int = 64) -> list[Offer]:
        offer = Offer(
            id="local",
            gpu_name=self.gpu_name,
            num_gpus=1,
            gpu_ram_gb=self.gpu_ram_gb,
            dph_total=self.dph,
            reliability=1.0,
            verified=True,
        )
        if offer.gpu_ram_gb < requirements.min_gpu_ram_gb:
            return []
        if requirements.max_dph is not None and offer.dph_total > requirements.max_dph:
            return []
        return [offer][:limit]

    # -- lifecycle ----------------------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Instance:
        if not spec.command:
            raise ValueError("the local provider needs LaunchSpec.command")
        instance_id = f"local-{uuid.uuid4().hex[:12]}"
        directory = self.instances_dir / instance_id
        directory.mkdir(parents=True)
        env = {k: os.environ[k] for k in _PASS_THROUGH_ENV if k in os.environ}
        env.update(spec.env)
        log = (directory / "output.log").open("ab")
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", _WRAPPER, "sh", *spec.command],
                cwd=directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        started = time.time()
        meta = {
            "id": instance_id,
            "label": spec.label,
            "pid": proc.pid,
            "command": shlex.join(spec.command),
            "started_at": started,
            "dph_total": self.dph,
        }
        _write_json(directory / "meta.json", meta)
        self._children[instance_id] = proc
        logger.info("Started local instance %s (pid %s) for %s", instance_id, proc.pid, spec.label)
        return Instance(instance_id, spec.label, InstanceState.RUNNING, dph_total=self.dph, started_at=started)

    def poll(self, instance_id: str) -> Instance:
        directory = self._dir(instance_id)
        meta = _read_json(directory / "meta.json") if directory else None
        if directory is None or meta is None or (directory / "destroyed").exists():
            return Instance(instance_id, str(meta["label"]) if meta else "", InstanceState.GONE)
        child = self._children.get(instance_id)
        if child is not None:
            child.poll()  # reap, so a finished child is not mistaken for a live zombie
        label, started = str(meta["label"]), float(meta["started_at"])
        exit_file = directory / "exit_code"
        if exit_file.exists():
            code = int(exit_file.read_text().strip() or "-1")
            return Instance(instance_id, label, InstanceState.EXITED, exit_code=code, started_at=started)
        if _alive(int(meta["pid"])):
            return Instance(instance_id, label, InstanceState.RUNNING, dph_total=self.dph, started_at=started)
        return Instance(
            instance_id,
            label,
            InstanceState.EXITED,
            exit_code=None,
            started_at=started,
            detail="the job process vanished without an exit code",
        )

    def terminate(self, instance_id: str) -> None:
        directory = self._dir(instance_id)
        if directory is None or (directory / "destroyed").exists():
            return
        meta = _read_json(directory / "meta.json") or {}
        pid = int(meta.get("pid", 0))
        if pid and _alive(pid):
            _kill_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.kill_grace_s
            while _alive(pid) and time.monotonic() < deadline:
                self._reap(instance_id)
                time.sleep(0.05)
            if _alive(pid):
                _kill_group(pid, signal.SIGKILL)
        self._reap(instance_id)
        (directory / "destroyed").write_text(str(time.time()))
        self._children.pop(instance_id, None)
        logger.info("Destroyed local instance %s", instance_id)

    def list_owned(self, label_prefix: str) -> list[Instance]:
        owned = []
        for meta_file in sorted(self.instances_dir.glob("*/meta.json")):
            meta = _read_json(meta_file)
            if meta is None or not str(meta.get("label", "")).startswith(label_prefix):
                continue
            instance = self.poll(str(meta["id"]))
            if instance.state is not InstanceState.GONE:
                owned.append(instance)
        return owned

    def logs(self, instance_id: str, *, tail: int = 200) -> str:
        directory = self._dir(instance_id)
        if directory is None or not (directory / "output.log").exists():
            return ""
        lines = (directory / "output.log").read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    def instance_dir(self, instance_id: str) -> Path:
        """Where the job runs (its working directory); the local training path reads outputs from here."""
        return self.instances_dir / instance_id

    # -- helpers ------------------------------------------------------------------------------------------
    def _dir(self, instance_id: str) -> Path | None:
        if "/" in instance_id or instance_id in ("", ".", ".."):
            return None
        directory = self.instances_dir / instance_id
        return directory if directory.is_dir() else None

    def _reap(self, instance_id: str) -> None:
        child = self._children.get(instance_id)
        if child is not None:
            child.poll()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); read its state where /proc exists.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
