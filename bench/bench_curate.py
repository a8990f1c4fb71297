"""Benchmarks for the data subagent: parse+hash throughput, scrub recall/false positives on the old fixture,
the scrubber's and the clustering's cost per record, curation speed, and the snapshot write with its final pass.
Recall and precision on the generated corpus: bench/bench_scrub.py.

Run: ``python bench/bench_curate.py [N]`` (N records to curate, default 100000). Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from subagents.data.clusters import TaskItem, task_clusters
from subagents.data.curate import CurationConfig, curate
from subagents.data.detect import find
from subagents.data.samples import generate_demo_records
from subagents.data.schema import ExecutionRecord, RecordError, content_hash, parse_jsonl_line
from subagents.data.scrub import scrub
from subagents.data.snapshot import write_snapshot

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "scrub_corpus.jsonl"


def bench_parse(lines: list[str]) -> None:
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for line in lines:
            with contextlib.suppress(RecordError):
                content_hash(parse_jsonl_line(line))
        best = max(best, len(lines) / (time.perf_counter() - t))
    print(f"parse_jsonl_line + content_hash: {best:,.0f} records/s (best of 3, {len(lines):,} lines)")


def bench_scrub() -> None:
    lines = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    total: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    clean = changed = 0
    t = time.perf_counter()
    for line in lines:
        out = scrub(line["text"]).text
        if not line["secrets"]:
            clean += 1
            changed += out != line["text"]
        for secret in line["secrets"]:
            total[secret["kind"]] += 1
            caught[secret["kind"]] += secret["value"] not in out
    elapsed = time.perf_counter() - t
    print(f"scrub corpus: {len(lines)} texts in {elapsed:.2f}s ({len(lines) / elapsed:,.0f} texts/s)")
    for kind in sorted(total):
        print(f"  recall {kind:<26} {caught[kind]:>4}/{total[kind]:<4} {caught[kind] / total[kind]:7.2%}")
    print(f"  recall overall {sum(caught.values()) / sum(total.values()):.2%}")
    print(f"  false-positive rate on clean look-alikes: {changed}/{clean} = {changed / clean:.2%}")


def bench_scrub_per_record(records: list[ExecutionRecord]) -> None:
    """What the scrubber costs curation: every record's prompt, output and tests (the fields curation scrubs),
    and the final pass's detectors over the same texts once scrubbed."""
    sample = records[:20_000]
    t = time.perf_counter()
    scrubbed = [scrub(text).text for r in sample for text in (r.prompt, r.output, r.tests)]
    elapsed = time.perf_counter() - t
    t = time.perf_counter()
    for text in scrubbed:
        find(text)
    final = time.perf_counter() - t
    print(
        f"scrub per record (prompt+output+tests): {elapsed / len(sample) * 1e6:.0f} us; "
        f"final-pass detectors on the scrubbed text: {final / len(sample) * 1e6:.0f} us ({len(sample):,} records)"
    )
    t = time.perf_counter()
    task_clusters([TaskItem(r.prompt, r.output) for r in records])
    print(f"task clusters over {len(records):,} records: {time.perf_counter() - t:.1f}s")


def bench_curate(n: int) -> None:
    t = time.perf_counter()
    lines = generate_demo_records(n, seed=1)
    print(f"generate_demo_records({n:,}): {time.perf_counter() - t:.1f}s")
    records = []
    for line in lines:
        with contextlib.suppress(RecordError):
            records.append(parse_jsonl_line(line))
    bench_scrub_per_record(records)
    t = time.perf_counter()
    result = curate(records, CurationConfig())
    elapsed = time.perf_counter() - t
    print(f"curate {len(records):,} records: {elapsed:.1f}s ({len(records) / elapsed:,.0f} records/s)")
    print(f"  train/eval/golden = {len(result.train)}/{len(result.eval)}/{len(result.golden)}")
    print(f"  dropped = {result.dropped}; quarantined = {len(result.quarantined)}; scrubbed = {result.scrubbed}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        manifest = write_snapshot(result, Path(tmp) / "snap", source={"bench": True})
        print(
            f"write_snapshot (with the final pass over every file): {time.perf_counter() - t:.2f}s, "
            f"content hash {manifest.content_hash[:16]}; task clusters {result.task_clusters}"
        )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    bench_parse(generate_demo_records(20_000, seed=7, malformed=0.0))
    bench_scrub()
    bench_curate(n)


if __name__ == "__main__":
    main()
