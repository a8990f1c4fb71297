"""Ingestion: execution records in, validated and stored durably; bad ones to the dead-letter table.

Invariants: a batch is committed in one transaction before it is acknowledged; a record whose ``record_id`` (the
producer's idempotency key) is already stored is counted as a duplicate, never stored twice; an invalid line is
dead-lettered with its reason and never stops the rest of the batch. Drop-directory files are moved to
``processed/`` (or ``failed/`` with a ``.reason`` file) only after their records are committed; producers should
write ``name.jsonl.tmp`` and rename, since only ``*.jsonl`` is picked up.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from pilot.store import Store
from pilot.store.models import DeadLetter, ExecutionRecordRow, utcnow
from subagents.data.schema import ExecutionRecord, RecordError, content_hash, parse_jsonl_line

logger = logging.getLogger(__name__)

RAW_KEEP = 4096  # bytes of an invalid line kept in the dead-letter row
DROP_DIR_PRODUCER = "drop-dir"
FIRST_ERRORS = 50  # (location, reason) pairs a report keeps; the rest are only counted


@dataclass
class IngestReport:
    source: str
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    first_errors: list[tuple[str, str]] = field(default_factory=list)  # (location, reason), at most FIRST_ERRORS

    def merge(self, other: IngestReport) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.reasons.update(other.reasons)
        self.first_errors.extend(other.first_errors[: max(FIRST_ERRORS - len(self.first_errors), 0)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "top_reasons": dict(self.reasons.most_common(5)),
        }


def _row(record: ExecutionRecord, source: str, producer: str | None, now: Any) -> dict[str, Any]:
    return {
        "record_id": record.record_id,
        "content_hash": content_hash(record),
        "domain": record.domain,
        "success": record.success,
        "session_id": record.session_id,
        "model_version": record.model_version,
        "ts": record.timestamp,
        "ingested_at": now,
        "source": source[:500],
        "producer": producer[:100] if producer else None,
        "payload": record.model_dump_json(),
    }


def _raw_text(line: bytes | str) -> str:
    if isinstance(line, bytes):
        return line[:RAW_KEEP].decode("utf-8", "backslashreplace")
    return line[:RAW_KEEP].encode("utf-8", "backslashreplace").decode("utf-8")


def store_batch(
    store: Store, items: list[tuple[str, bytes | str]], *, source: str, producer: str | None = None
) -> IngestReport:
    """Validate, hash and store one batch of ``(location, line)`` sent by ``producer``; one transaction, taken only
    after the batch is validated (keep batches to ``ingest.batch_size`` so the write lock is held briefly)."""
    report = IngestReport(source)
    now = utcnow()
    rows: dict[str, dict[str, Any]] = {}
    dead: list[dict[str, Any]] = []
    for location, line in items:
        try:
            record = parse_jsonl_line(line)
        except RecordError as exc:
            dead.append({"source": source[:500], "location": location, "reason": exc.reason, "raw": _raw_text(line)})
            report.reasons[exc.reason.split(":", 1)[0]] += 1
            if len(report.first_errors) < FIRST_ERRORS:
                report.first_errors.append((location, exc.reason))
            continue
        if record.record_id in rows:
            report.duplicates += 1
            continue
        rows[record.record_id] = _row(record, source, producer, now)
    with store.session(write=True) as session:
        if rows:
            table = ExecutionRecordRow.__table__  # type: ignore[attr-defined]
            existing: set[str] = set()
            ids = list(rows)
            for start in range(0, len(ids), 900):  # stay under SQLite's bound-parameter limit
                chunk = ids[start : start + 900]
                existing.update(
                    session.execute(select(table.c.record_id).where(table.c.record_id.in_(chunk))).scalars()
                )
            fresh = [row for key, row in rows.items() if key not in existing]
            report.duplicates += len(existing)
            if fresh:
                session.execute(insert(table), fresh)
            report.accepted += len(fresh)
        if dead:
            session.execute(insert(DeadLetter.__table__), [{**d, "received_at": now} for d in dead])  # type: ignore[attr-defined]
            report.dead_lettered += len(dead)
    return report


def _batches(lines: Iterable[tuple[str, bytes | str]], size: int) -> Iterator[list[tuple[str, bytes | str]]]:
    iterator = iter(lines)
    while batch := list(islice(iterator, size)):
        yield batch


def ingest_lines(
    store: Store,
    lines: Iterable[bytes | str],
    *,
    source: str,
    producer: str | None = None,
    batch_size: int = 5000,
) -> IngestReport:
    """Store ``lines`` in batches of ``batch_size``, each its own transaction (blank lines are skipped)."""
    numbered = ((str(n), line) for n, line in enumerate(lines, 1) if line.strip())
    report = IngestReport(source)
    for batch in _batches(numbered, batch_size):
        report.merge(store_batch(store, batch, source=source, producer=producer))
    return report


def ingest_file(store: Store, path: Path, *, batch_size: int = 5000, producer: str | None = None) -> IngestReport:
    with path.open("rb") as fh:
        lines = (line.rstrip(b"\r\n") for line in fh)
        return ingest_lines(store, lines, source=str(path), producer=producer, batch_size=batch_size)


def ingest_drop_dir(store: Store, drop_dir: Path, *, batch_size: int = 5000) -> list[IngestReport]:
    """Ingest every ``*.jsonl`` in ``drop_dir``; move each to processed/ or failed/ (with a reason file).

    The drop directory's credential is the file system: whoever may write into it (the daemon's user and the
    group the operator grants) is a producer, recorded as ``DROP_DIR_PRODUCER``. Keep it mode 0770 or tighter."""
    reports = []
    processed, failed = drop_dir / "processed", drop_dir / "failed"
    for path in sorted(drop_dir.glob("*.jsonl")):
        try:
            report = ingest_file(store, path, batch_size=batch_size, producer=DROP_DIR_PRODUCER)
        except OSError as exc:
            failed.mkdir(parents=True, exist_ok=True)
            (failed / f"{path.name}.reason").write_text(f"could not read: {exc}\n")
            shutil.move(str(path), failed / path.name)
            logger.warning("Moved unreadable %s to %s: %s", path, failed, exc)
            continue
        processed.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), processed / path.name)
        logger.info(
            "Ingested %s: %d accepted, %d duplicates, %d dead-lettered",
            path.name,
            report.accepted,
            report.duplicates,
            report.dead_lettered,
        )
        reports.append(report)
    return reports
