from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from data_factories import record

from subagents.data.curate import CurationConfig, curate
from subagents.data.errors import ResidualSecretError, SnapshotError, SnapshotExistsError
from subagents.data.final_pass import check_payloads
from subagents.data.samples import generate_demo_records
from subagents.data.schema import parse_jsonl_line
from subagents.data.snapshot import Manifest, read_manifest, verify_snapshot, write_snapshot

NOW = datetime(2025, 2, 1, 12, 0, tzinfo=UTC)


def result_for(n: int = 600):  # type: ignore[no-untyped-def]
    return curate([parse_jsonl_line(line) for line in generate_demo_records(n, seed=9, malformed=0.0)])


def test_writes_the_example_format_and_a_manifest(tmp_path: Path) -> None:
    result = result_for()
    manifest = write_snapshot(result, tmp_path / "snap-1", source={"records": "store", "run": 7}, now=NOW)
    snap = tmp_path / "snap-1"
    assert sorted(p.name for p in snap.iterdir()) == ["eval.jsonl", "golden.jsonl", "manifest.json", "train.jsonl"]
    lines = (snap / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(result.train) == manifest.counts["train"]
    first = json.loads(lines[0])
    assert set(first) == {"id", "domain", "weight", "messages"}
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert manifest.source == {"records": "store", "run": 7}
    assert manifest.filters == CurationConfig().as_dict()
    assert manifest.created_at == NOW
    assert manifest.domain_counts == result.domain_counts
    assert [q.record_id for q in manifest.quarantined] == [r for r, _ in result.quarantined]
    assert read_manifest(snap) == manifest == verify_snapshot(snap)
    assert isinstance(manifest, Manifest) and len(manifest.content_hash) == 64
    with pytest.raises(Exception):  # noqa: B017 - frozen pydantic model
        manifest.content_hash = "x"  # type: ignore[misc]


def test_content_hash_names_the_data_not_the_time(tmp_path: Path) -> None:
    result = result_for()
    a = write_snapshot(result, tmp_path / "a", source={}, now=NOW)
    b = write_snapshot(result, tmp_path / "b", source={"other": True})
    assert a.content_hash == b.content_hash
    c = write_snapshot(curate([record()]), tmp_path / "c", source={}, now=NOW)
    assert c.content_hash != a.content_hash


def test_existing_snapshot_is_never_overwritten(tmp_path: Path) -> None:
    result = result_for(200)
    write_snapshot(result, tmp_path / "s", source={}, now=NOW)
    before = (tmp_path / "s" / "train.jsonl").read_bytes()
    with pytest.raises(SnapshotExistsError):
        write_snapshot(curate([record()]), tmp_path / "s", source={}, now=NOW)
    assert (tmp_path / "s" / "train.jsonl").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary directory left behind
    assert not os.access(tmp_path / "s" / "train.jsonl", os.W_OK) or os.geteuid() == 0


def test_an_empty_directory_may_receive_a_snapshot(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    write_snapshot(result_for(100), tmp_path / "s", source={}, now=NOW)
    verify_snapshot(tmp_path / "s")


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    result = result_for(100)

    class ExplodingResult:
        def __getattr__(self, name: str) -> object:
            return getattr(result, name)

        def split(self, name: str) -> list[object]:
            if name == "golden":
                raise Boom
            return result.split(name)

    with pytest.raises(Boom):
        write_snapshot(ExplodingResult(), tmp_path / "s", source={}, now=NOW)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_verify_detects_tampering(tmp_path: Path) -> None:
    write_snapshot(result_for(200), tmp_path / "s", source={}, now=NOW)
    path = tmp_path / "s" / "eval.jsonl"
    os.chmod(path, 0o644)
    path.write_text(path.read_text() + '{"id": "extra"}\n')
    with pytest.raises(SnapshotError, match="eval"):
        verify_snapshot(tmp_path / "s")
    with pytest.raises(SnapshotError):
        read_manifest(tmp_path / "missing")


def _planted_aws_key() -> str:
    # Built at run time from the format (AKIA + 16 of A-Z2-7): no secret-shaped literal in the repository.
    return "AKIA" + "".join(random.Random(3).choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))


def test_final_pass_refuses_a_snapshot_with_a_value_that_slipped_past_scrubbing(tmp_path: Path) -> None:
    result = result_for(200)
    victim = result.train[3]
    key = _planted_aws_key()
    # Injected after scrubbing, as a later step or a bug would: the first pass never saw it.
    leaked = dataclasses.replace(
        victim, messages=(victim.messages[0], {"role": "assistant", "content": f"use {key} for the upload"})
    )
    tampered = dataclasses.replace(result, train=[*result.train[:3], leaked, *result.train[4:]])
    with pytest.raises(ResidualSecretError) as info:
        write_snapshot(tampered, tmp_path / "s", source={}, now=NOW)
    assert info.value.record_ids == [victim.record_id]
    assert victim.record_id in str(info.value) and "aws_access_key" in str(info.value)
    assert key not in str(info.value)  # the error is logged: it names the record, never the value
    assert list(tmp_path.iterdir()) == []  # nothing shipped, no temporary directory left


def test_final_pass_also_scans_the_tests_field_and_the_manifest(tmp_path: Path) -> None:
    result = result_for(100)
    victim = result.golden[0]
    tampered = dataclasses.replace(
        result, golden=[dataclasses.replace(victim, tests=f"KEY = '{_planted_aws_key()}'"), *result.golden[1:]]
    )
    with pytest.raises(ResidualSecretError, match=re.escape(victim.record_id)):
        write_snapshot(tampered, tmp_path / "a", source={}, now=NOW)
    with pytest.raises(ResidualSecretError, match=r"manifest\.json"):
        write_snapshot(result, tmp_path / "b", source={"note": f"uploaded with {_planted_aws_key()}"}, now=NOW)
    assert list(tmp_path.iterdir()) == []


def test_knowledge_base_payloads_are_checked_the_same_way() -> None:
    check_payloads([("p1", {"task": "Rename getUserName to snake_case", "solution": "get_user_name"})])
    with pytest.raises(ResidualSecretError) as info:
        check_payloads([("p1", {"task": "ok"}), ("p2", {"solution": {"text": f"key {_planted_aws_key()}"}})])
    assert info.value.record_ids == ["p2"] and info.value.kinds == ["aws_access_key"]
