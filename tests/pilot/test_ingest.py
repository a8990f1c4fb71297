"""Ingestion: bad lines are dead-lettered with their reason, the rest of the batch is kept, nothing twice."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import func
from sqlmodel import select

from pilot.data.ingest import ingest_drop_dir, ingest_file, ingest_lines
from pilot.store import Store
from pilot.store.models import DeadLetter, ExecutionRecordRow
from tests import factories


def _count(store: Store, table: type) -> int:
    with store.session() as s:
        return int(s.exec(select(func.count()).select_from(table)).one())


def test_malformed_lines_are_dead_lettered_and_the_rest_kept(store: Store) -> None:
    good = [factories.record_line() for _ in range(5)]
    bad = [
        "{not json",
        json.dumps(factories.record(success="yes")),
        json.dumps({k: v for k, v in factories.record().items() if k != "prompt"}),
        json.dumps(factories.record(unexpected_field=1)),
        b'{"record_id": "\xff\xfe"}',
    ]
    lines: list[str | bytes] = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3], bad[3], good[4], bad[4]]
    report = ingest_lines(store, lines, source="test")
    assert (report.accepted, report.dead_lettered, report.duplicates) == (5, 5, 0)
    assert _count(store, ExecutionRecordRow) == 5
    with store.session() as s:
        letters = s.exec(select(DeadLetter).order_by(DeadLetter.id)).all()  # type: ignore[arg-type]
    reasons = [d.reason for d in letters]
    assert [d.location for d in letters] == ["2", "4", "6", "8", "10"]
    assert "JSON" in reasons[0] and "success" in reasons[1] and "prompt" in reasons[2]
    assert "unexpected_field" in reasons[3] and "UTF-8" in reasons[4]


def test_record_ids_are_idempotency_keys(store: Store) -> None:
    line = factories.record_line(record_id="rec-same")
    first = ingest_lines(store, [line, line], source="a")
    second = ingest_lines(store, [line, factories.record_line()], source="b")
    assert (first.accepted, first.duplicates) == (1, 1)
    assert (second.accepted, second.duplicates) == (1, 1)
    assert _count(store, ExecutionRecordRow) == 2


def test_small_batches_keep_every_record(store: Store) -> None:
    lines = [factories.record_line() for _ in range(23)] + ["garbage"]
    report = ingest_lines(store, lines, source="x", batch_size=5)
    assert (report.accepted, report.dead_lettered) == (23, 1)


def test_drop_dir_moves_files_after_commit(store: Store, tmp_path: Path) -> None:
    drop = tmp_path / "inbox"
    drop.mkdir()
    (drop / "a.jsonl").write_text("\n".join(factories.record_line() for _ in range(3)) + "\n\n")
    (drop / "b.jsonl.tmp").write_text(factories.record_line())  # still being written: not picked up
    reports = ingest_drop_dir(store, drop)
    assert [r.accepted for r in reports] == [3]
    assert (drop / "processed" / "a.jsonl").is_file() and (drop / "b.jsonl.tmp").is_file()
    assert not (drop / "a.jsonl").exists()


def test_ingest_file_reports_its_source(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(factories.record_line() + "\n{oops\n")
    report = ingest_file(store, path)
    assert report.to_dict()["source"] == str(path) and report.dead_lettered == 1
