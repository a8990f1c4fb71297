"""A decision's new-data count must grow with new records, not with the store.

Two stores, 10,000 and 1,000,000 records already trained on (the watermark: a succeeded run's snapshot), each
with the same 1,000 new records after it; times pilot.data.snapshots.new_data (read past the watermark, curate,
count per domain) on each. Target: time(1M) / time(10k) <= 1.5.

Old rows are bulk-inserted with executemany and carry a small payload: they must never be read, and the
figure would expose it if they were (the 1M store would be ~100x slower).

    python bench/bench_cycle_scaling.py [--big 1000000] [--small 10000] [--new 1000]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from pilot.context import build_context  # noqa: E402
from pilot.data.ingest import store_batch  # noqa: E402
from pilot.data.snapshots import new_data  # noqa: E402
from pilot.settings import load_settings  # noqa: E402
from pilot.store import Store  # noqa: E402
from pilot.store.models import DatasetSnapshot, Decision, TrainingRun  # noqa: E402
from pilot.store.status import RunStatus  # noqa: E402
from subagents.data.samples import generate_demo_records  # noqa: E402

TARGET_RATIO = 1.5
DOMAINS = ("python", "sql", "frontend", "devops")


def bulk_old_rows(db: Path, n: int) -> None:
    conn = sqlite3.connect(db)
    ts = "2025-01-01 00:00:00.000000"
    rows = (
        (f"old-{i}", f"{i:064x}", DOMAINS[i % 4], i % 4 != 0, f"s-{i % 97}", "v1", ts, ts, "bench", '{"old": true}')
        for i in range(n)
    )
    conn.executemany(
        "INSERT INTO execution_record (record_id, content_hash, domain, success, session_id, model_version, ts, "
        "ingested_at, source, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.commit()
    conn.close()


def build_store(tmp: Path, n_old: int, new_lines: list[bytes]) -> tuple[Store, float]:
    t = time.perf_counter()
    db = tmp / "pilot.db"
    store = Store(f"sqlite:///{db}")
    store.migrate()
    bulk_old_rows(db, n_old)
    with store.session(write=True) as s:
        s.add(Decision(id="d-bench", thread_id="t", action="train", reason="bench"))
        s.add(DatasetSnapshot(id="snap-bench", content_hash="bench", path=str(tmp), max_record_pk=n_old))
        s.flush()
        s.add(
            TrainingRun(
                id="run-bench",
                decision_id="d-bench",
                snapshot_id="snap-bench",
                status=RunStatus.SUCCEEDED,
                provider="local",
                label="learning-pilot/bench/run-bench",
            )
        )
    report = store_batch(store, [(str(i), x) for i, x in enumerate(new_lines)], source="bench-new")
    assert report.accepted == len(new_lines), report.to_dict()
    return store, time.perf_counter() - t


def time_new_data(tmp: Path, store: Store, rounds: int) -> tuple[float, int]:
    ctx = build_context(load_settings(None, data_dir=tmp, env="bench"), store=store)
    best, found = float("inf"), 0
    for _ in range(rounds):
        t = time.perf_counter()
        result = new_data(ctx)
        best = min(best, time.perf_counter() - t)
        found = result.new_records
    return best, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="best of N")
    args = parser.parse_args()
    lines = [x.encode() for x in generate_demo_records(args.new, seed=7, malformed=0.0)]
    lines = [x.replace(b'"record_id": "', b'"record_id": "new-%d-' % i, 1) for i, x in enumerate(lines)]

    times = {}
    for n_old in (args.small, args.big):
        with tempfile.TemporaryDirectory(prefix="lp-bench-cycle-") as tmp_name:
            tmp = Path(tmp_name)
            store, setup = build_store(tmp, n_old, lines)
            best, found = time_new_data(tmp, store, args.rounds)
            store.close()
        assert found == args.new, f"expected {args.new} new records, read {found}"
        times[n_old] = best
        print(f"{n_old:>9,} stored + {args.new:,} new: new_data {best * 1000:8.1f} ms (setup {setup:.1f}s)")
    ratio = times[args.big] / times[args.small]
    verdict = "OK" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(f"ratio {args.big:,} / {args.small:,} stored = {ratio:.2f} (target <= {TARGET_RATIO}) {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
