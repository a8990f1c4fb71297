"""Ingest throughput: validate + hash + store, batched, into SQLite, through pilot.data.ingest.store_batch.

Target: >= 20,000 records/s. Also prints parse+hash alone, so a shortfall can be placed (parsing or the store).

    python bench/bench_ingest.py [--records 100000] [--batch 5000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from pilot.data.ingest import store_batch  # noqa: E402
from pilot.store import Store  # noqa: E402
from subagents.data.samples import generate_demo_records  # noqa: E402
from subagents.data.schema import content_hash, parse_jsonl_line  # noqa: E402

TARGET = 20_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2, help="best of N")
    args = parser.parse_args()

    t = time.perf_counter()
    lines = [line.encode() for line in generate_demo_records(args.records, seed=1, malformed=0.0)]
    # Re-deliveries inside the sample are counted as duplicates; make every record_id unique for a clean figure.
    lines = [line.replace(b'"record_id": "', b'"record_id": "%d-' % i, 1) for i, line in enumerate(lines)]
    mb = sum(len(x) for x in lines) / 1e6
    print(f"generated {len(lines):,} records ({mb:.0f} MB of JSONL) in {time.perf_counter() - t:.1f}s")

    t = time.perf_counter()
    for line in lines:
        content_hash(parse_jsonl_line(line))
    parse_rate = len(lines) / (time.perf_counter() - t)
    print(f"parse + hash alone:             {parse_rate:>10,.0f} records/s")

    best = 0.0
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="lp-bench-ingest-") as tmp:
            store = Store(f"sqlite:///{tmp}/pilot.db")
            store.migrate()
            accepted = 0
            t = time.perf_counter()
            for start in range(0, len(lines), args.batch):
                chunk = lines[start : start + args.batch]
                report = store_batch(store, [(str(start + i), x) for i, x in enumerate(chunk)], source="bench")
                accepted += report.accepted
            elapsed = time.perf_counter() - t
            store.close()
        rate = accepted / elapsed
        best = max(best, rate)
        print(
            f"round {round_ + 1}: store_batch x{len(lines) // args.batch}: {accepted:,} accepted in {elapsed:.2f}s "
            f"= {rate:,.0f} records/s"
        )
    verdict = "OK" if best >= TARGET else "BELOW TARGET"
    print(
        f"ingest (validate + hash + store, SQLite, batch {args.batch}): {best:,.0f} records/s "
        f"(target >= {TARGET:,}) {verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
