"""Dataset snapshots: train.jsonl, eval.jsonl, golden.jsonl and manifest.json in one immutable directory.

Invariants:
- Atomic: everything is written (and fsynced) in a hidden temporary sibling directory, which is then renamed
  into place. A reader never sees a half-written snapshot; a crash leaves only a ``.<name>.tmp-*`` directory.
- Immutable: ``write_snapshot`` into a directory that already holds anything raises ``SnapshotExistsError``;
  the data files are made read-only.
- ``Manifest.content_hash`` is sha256 over the three files' sha256 digests, so it names the data exactly
  (same examples in the same order give the same hash) and does not depend on ``created_at`` or ``source``.
  ``verify_snapshot`` recomputes it from the files.
- Nothing ships that the scrubber's detectors still find: every file is scanned as written before the rename
  (final_pass.py); a finding raises ``ResidualSecretError`` with the record ids and nothing is published.
- A line is ``Example.to_json()``: id, domain, weight, messages, and ``tests`` (scrubbed test code) only for
  examples that have some; ``Manifest.with_tests`` counts those per split (absent in manifests written before
  the field existed, read back as empty).
- Preference data (the reinforcement layer, subagents/data/preference.py), when given: ``kto.jsonl``,
  ``dpo.jsonl`` and ``grpo.jsonl`` (prompts with tests, subagents/data/grpo.py; train split only) in
  ``preference_files``, their figures in ``preference`` (GRPO's under ``preference["grpo"]``), the reward
  distribution per domain in ``rewards`` and the failed attempts kept per split in ``failures``. The content
  hash covers those files too when present, so a snapshot without them hashes as before they existed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from subagents.data.curate import CurationResult
from subagents.data.errors import SnapshotError, SnapshotExistsError
from subagents.data.final_pass import refuse, scan_snapshot_dir
from subagents.data.preference import PreferenceData

__all__ = ["SPLIT_FILES", "FileEntry", "Manifest", "read_manifest", "verify_snapshot", "write_snapshot"]

SPLIT_FILES: dict[str, str] = {"train": "train.jsonl", "eval": "eval.jsonl", "golden": "golden.jsonl"}
PREFERENCE_FILES: dict[str, str] = {"kto": "kto.jsonl", "dpo": "dpo.jsonl", "grpo": "grpo.jsonl"}
MANIFEST = "manifest.json"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sha256: str
    bytes: int
    examples: int


class QuarantineEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    record_id: str
    reason: str


class Manifest(BaseModel):
    """What a snapshot holds and how it was made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = 1
    content_hash: str
    created_at: AwareDatetime
    counts: dict[str, int]  # split -> examples
    records_in: int
    files: dict[str, FileEntry]  # split -> file
    domain_counts: dict[str, dict[str, int]]  # split -> domain -> examples
    weight_totals: dict[str, float]  # split -> sum of example weights
    filters: dict[str, Any]  # the CurationConfig
    dropped: dict[str, int]
    dropped_samples: dict[str, list[str]]
    quarantined: list[QuarantineEntry]
    scrubbed: dict[str, int]
    source: dict[str, Any]
    with_tests: dict[str, int] = Field(default_factory=dict)  # split -> examples carrying test code
    task_clusters: dict[str, int] = Field(default_factory=dict)  # clusters, clustered_records, largest (curate.py)
    rewards: dict[str, dict[str, float]] = Field(default_factory=dict)  # domain -> reward distribution
    failures: dict[str, int] = Field(default_factory=dict)  # split -> failed attempts kept for preference data
    failures_skipped: dict[str, int] = Field(default_factory=dict)  # why failed attempts were not kept
    preference: dict[str, Any] = Field(default_factory=dict)  # preference.PreferenceData.figures
    preference_files: dict[str, FileEntry] = Field(default_factory=dict)  # kto / dpo -> file


def _combined_hash(files: dict[str, FileEntry], preference_files: dict[str, FileEntry] | None = None) -> str:
    h = hashlib.sha256()
    for split, name in SPLIT_FILES.items():
        h.update(f"{name}:{files[split].sha256}\n".encode())
    for kind, name in PREFERENCE_FILES.items():
        if preference_files and kind in preference_files:
            h.update(f"{name}:{preference_files[kind].sha256}\n".encode())
    return h.hexdigest()


def _write_lines(path: Path, lines: list[str]) -> FileEntry:
    h = hashlib.sha256()
    size = 0
    with path.open("wb") as fh:
        for text in lines:
            line = (text + "\n").encode("utf-8")
            h.update(line)
            size += len(line)
            fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, 0o444)
    return FileEntry(name=path.name, sha256=h.hexdigest(), bytes=size, examples=len(lines))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(
    result: CurationResult,
    directory: Path,
    *,
    source: dict[str, Any],
    now: datetime | None = None,
    preference: PreferenceData | None = None,
) -> Manifest:
    """Write ``result`` (and ``preference``, if any) as a new snapshot at ``directory`` (which must not exist,
    or be empty)."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise SnapshotExistsError(f"snapshot {directory} already exists; snapshots are immutable")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        files = {
            split: _write_lines(tmp / name, [e.to_json() for e in result.split(split)])
            for split, name in SPLIT_FILES.items()
        }
        pref_files: dict[str, FileEntry] = {}
        line_ids = {name: [e.record_id for e in result.split(split)] for split, name in SPLIT_FILES.items()}
        if preference is not None:
            pref_files["kto"] = _write_lines(tmp / PREFERENCE_FILES["kto"], [k.to_json() for k in preference.kto])
            pref_files["dpo"] = _write_lines(tmp / PREFERENCE_FILES["dpo"], [p.to_json() for p in preference.dpo])
            line_ids[PREFERENCE_FILES["kto"]] = [k.record_id for k in preference.kto]
            line_ids[PREFERENCE_FILES["dpo"]] = [" / ".join(p.record_ids) for p in preference.dpo]
            pref_files["grpo"] = _write_lines(tmp / PREFERENCE_FILES["grpo"], [g.to_json() for g in preference.grpo])
            line_ids[PREFERENCE_FILES["grpo"]] = [" / ".join(g.record_ids) for g in preference.grpo]
        manifest = Manifest(
            content_hash=_combined_hash(files, pref_files),
            created_at=now or datetime.now(UTC),
            counts={split: entry.examples for split, entry in files.items()},
            records_in=result.records_in,
            files=files,
            domain_counts=result.domain_counts,
            weight_totals={s: round(sum(e.weight for e in result.split(s)), 6) for s in SPLIT_FILES},
            filters=result.config.as_dict(),
            dropped=result.dropped,
            dropped_samples=result.dropped_samples,
            quarantined=[QuarantineEntry(record_id=r, reason=why) for r, why in result.quarantined],
            scrubbed=result.scrubbed,
            source=source,
            with_tests={s: sum(1 for e in result.split(s) if e.tests) for s in SPLIT_FILES},
            task_clusters=result.task_clusters,
            rewards=result.rewards,
            failures={s: len(v) for s, v in result.failures.items()},
            failures_skipped=result.failures_skipped,
            preference=preference.figures if preference is not None else {},
            preference_files=pref_files,
        )
        with (tmp / MANIFEST).open("w", encoding="utf-8") as fh:
            fh.write(manifest.model_dump_json(indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp / MANIFEST, 0o444)
        # Defence in depth: what was written is scanned again with the scrubber's detectors; a hit refuses
        # the snapshot (ResidualSecretError names the records) and the temporary directory goes.
        refuse(scan_snapshot_dir(tmp, line_ids), f"snapshot {directory.name}")
        _fsync_dir(tmp)
        try:
            # rename(2) replaces only an *empty* directory; a non-empty one makes it fail, which is the
            # immutability guarantee even against a concurrent writer.
            os.rename(tmp, directory)
        except OSError as exc:
            raise SnapshotExistsError(f"snapshot {directory} already exists; snapshots are immutable") from exc
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(directory: Path) -> Manifest:
    """The manifest of the snapshot at ``directory``."""
    path = Path(directory) / MANIFEST
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise SnapshotError(f"{directory} has no {MANIFEST}") from exc
    except ValidationError as exc:
        raise SnapshotError(f"{path} is not a valid manifest: {exc.errors()[0]['msg']}") from exc


def verify_snapshot(directory: Path) -> Manifest:
    """Read the manifest and check every file's sha256 and the content hash; raise SnapshotError on mismatch."""
    manifest = read_manifest(directory)
    for split, entry in (*manifest.files.items(), *manifest.preference_files.items()):
        h = hashlib.sha256()
        try:
            with (Path(directory) / entry.name).open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except FileNotFoundError as exc:
            raise SnapshotError(f"snapshot {directory} is missing {entry.name}") from exc
        if h.hexdigest() != entry.sha256:
            raise SnapshotError(f"snapshot {directory}: {split} file {entry.name} does not match its sha256")
    if _combined_hash(manifest.files, manifest.preference_files) != manifest.content_hash:
        raise SnapshotError(f"snapshot {directory}: content hash does not match its files")
    return manifest
