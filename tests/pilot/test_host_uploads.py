"""What a rented host uploads is capped and typed: too large, malformed or off-schema is a recorded host fault
(destroy, retry on another host), never an exception out of the watcher.

Unit cases: ``read_upload`` on a real local artifact store, table-driven. Then through the local Vast server, real
S3 (moto) and the stub job (tests/pilot/test_remote_rig.py): the first host "uploads" a 200 MiB heartbeat, a
checkpoint marker with ``"step": "latest"``, or a result off its schema — written into the bucket at its keys just
before the daemon reads them, as a host holding the presigned PUTs could — and the run still ends well on another
host, with the fault recorded and the ledger settled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select
from test_remote import (
    _launch,
    _wait_running,
    _watch,
    assert_settled,
    attempts_for,
    endpoint,
    rig_factory,
    sqlite_store,
)
from test_remote_rig import Rig

from pilot.context import PilotContext, build_context
from pilot.runs.host import UPLOAD_LIMITS, HostFault, read_upload
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import Event
from pilot.store.status import RunStatus
from tools.artifacts.base import ArtifactStore

__all__ = ["endpoint", "rig_factory", "sqlite_store"]  # fixtures shared with test_remote.py

MIB = 1024 * 1024
SHA = "a" * 64


@pytest.fixture
def ctx(store: Store, make_settings: Callable[..., Settings]) -> PilotContext:
    return build_context(make_settings(), store=store)


def _put(ctx: PilotContext, tmp_path: Path, key: str, content: bytes | None = None, *, size: int = 0) -> None:
    src = tmp_path / "upload.bin"
    if content is not None:
        src.write_bytes(content)
    else:
        with src.open("wb") as fh:  # sparse: a big file without writing its bytes
            fh.truncate(size)
    ctx.artifacts.put(key, src)
    src.unlink()


GOOD = {
    "heartbeat": {"seq": 7, "phase": "train", "step": 3, "loss": 0.5},
    "marker": {"step": 4, "files": {"adapter_model.safetensors": {"sha256": SHA, "size": 10}}, "time": 1.0},
    "result": {"status": "ok", "exit_code": 0, "adapter": {"adapter_model.safetensors": {"sha256": SHA}}},
}


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_a_well_formed_upload_reads_with_only_the_fields_the_daemon_uses(
    ctx: PilotContext, tmp_path: Path, kind: str
) -> None:
    _put(ctx, tmp_path, f"runs/r/{kind}.json", json.dumps(GOOD[kind]).encode())
    data = read_upload(ctx, f"runs/r/{kind}.json", tmp_path, kind)
    assert data is not None
    assert "time" not in data and "loss" not in data  # unknown fields are dropped
    assert read_upload(ctx, f"runs/r/absent-{kind}.json", tmp_path, kind) is None


@pytest.mark.parametrize(
    ("kind", "content", "why"),
    [
        ("heartbeat", None, "cap"),  # 200 MiB
        ("heartbeat", b"not json", "malformed"),
        ("heartbeat", b"[1, 2]", "malformed"),
        ("heartbeat", b'{"phase": "train"}', "malformed"),  # no seq
        ("marker", b'{"step": "latest", "files": {}}', "malformed"),
        ("marker", b'{"step": "5", "files": {}}', "malformed"),
        ("marker", b'{"step": -1, "files": {}}', "malformed"),
        ("marker", b'{"step": true, "files": {}}', "malformed"),
        ("marker", b'{"step": 3, "files": {"x": {"sha256": "../../etc"}}}', "malformed"),
        ("marker", b'{"step": 3, "files": []}', "malformed"),
        ("result", b'{"status": "ok", "adapter": "everything"}', "malformed"),
        ("result", b'{"status": ["ok"]}', "malformed"),
        ("result", json.dumps({"status": "failed", "log_tail": ["x"] * 10_000}).encode(), "malformed"),
        ("result", None, "cap"),
    ],
)
def test_a_bad_upload_is_a_host_fault(
    ctx: PilotContext, tmp_path: Path, kind: str, content: bytes | None, why: str
) -> None:
    key = f"runs/r/{kind}.json"
    _put(ctx, tmp_path, key, content, size=200 * MIB if kind == "heartbeat" else UPLOAD_LIMITS[kind] + 1)
    with pytest.raises(HostFault, match=why):
        read_upload(ctx, key, tmp_path, kind)
    assert not any(p.name.endswith("json") for p in tmp_path.iterdir())  # nothing of it kept


class HostileBucket:
    """The first attempt's host overwrites one of its uploads (by key suffix) just before each read by the daemon
    (each time: the host's own heartbeat thread would otherwise replace a planted heartbeat before it is read)."""

    def __init__(self, inner: ArtifactStore, tmp: Path, suffix: str, content: bytes | None, size: int = 0) -> None:
        self.inner, self.tmp, self.suffix, self.content, self.size = inner, tmp, suffix, content, size
        self.planted: list[str] = []

    def get(self, key: str, dest: Path, *, sha256: str | None = None, max_bytes: int | None = None) -> Path:
        if "/attempt-1/" in key and key.endswith(self.suffix):
            src = self.tmp / "hostile-upload"
            if self.content is not None:
                src.write_bytes(self.content)
            else:
                with src.open("wb") as fh:
                    fh.truncate(self.size)
            self.inner.put(key, src)
            src.unlink()
            self.planted.append(key)
        return self.inner.get(key, dest, sha256=sha256, max_bytes=max_bytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _faults(rig: Rig, run_id: str) -> list[Event]:
    with rig.store.session() as session:
        events = session.exec(select(Event).where(Event.entity_id == run_id).order_by(col(Event.id))).all()
    return [e for e in events if "host fault" in e.reason]


def _hostile(rig: Rig, suffix: str, content: bytes | None, size: int = 0) -> HostileBucket:
    bucket = HostileBucket(rig.ctx.artifacts, rig.tmp, suffix, content, size)
    rig.ctx.artifacts = bucket  # type: ignore[assignment]
    return bucket


def test_a_200_mib_heartbeat_is_a_host_fault_and_the_run_ends_well_elsewhere(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub_env={"STUB_STEP_S": "0.6"})
    bucket = _hostile(rig, "/heartbeat.json", None, size=200 * MIB)
    run = rig.launch_and_watch()
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    attempts = attempts_for(rig, run)
    assert len(attempts) == 2 and "host fault" in (attempts[0].end_reason or "")
    assert "heartbeat" in (attempts[0].end_reason or "") and bucket.planted
    assert _faults(rig, run.id)
    assert_settled(rig, run)


def test_a_bad_result_is_a_host_fault_and_the_run_ends_well_elsewhere(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    _hostile(rig, "/result.json", json.dumps({"status": "ok", "adapter": "everything"}).encode())
    run = rig.launch_and_watch()
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    attempts = attempts_for(rig, run)
    assert len(attempts) == 2 and "result" in (attempts[0].end_reason or "")
    assert _faults(rig, run.id)
    assert_settled(rig, run)


def test_a_latest_step_marker_is_skipped_and_recorded_when_resuming(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub_env={"STUB_STEP_S": "0.6"})
    marker = {"step": "latest", "files": {"adapter_model.safetensors": {"sha256": SHA}}}
    bucket = _hostile(rig, "/checkpoint.json", json.dumps(marker).encode())
    run = _launch(rig, rig.new_run())
    first = str(run.instance_id)
    _wait_running(rig, first)
    rig.server.host_offline(first)
    run = _watch(rig, run)  # before: int("latest") raised out of the relaunch
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    assert len(attempts_for(rig, run)) == 2 and bucket.planted
    faults = _faults(rig, run.id)
    assert faults and all("checkpoint" in e.reason for e in faults)
    assert_settled(rig, run)
