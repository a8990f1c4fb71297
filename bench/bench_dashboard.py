"""Each dashboard page's server time on a large store (target <= 200 ms per page): 1,000,000 records over 90 days,
2,000 runs, 500 model versions (plus their attempts, events, ledger, snapshots and dead letters), SQLite.

The store is generated once (tests/dashboard/history.py, bulk inserts); every page is then requested through the
ASGI app (routing, queries, charts and templates: everything the server does) ``--repeat`` times after one warm-up,
and the median and worst are printed with the query part alone. The first page after start is timed apart: it
fills the in-memory record rollup (pilot/dashboard/queries.py), which later pages only top up with new records.
The live stream's change probe is timed too.

    python bench/bench_dashboard.py [--records 1000000] [--runs 2000] [--versions 500] [--repeat 7] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

TARGET_MS = 200.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2_000)
    parser.add_argument("--versions", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="Reuse (or create) the store in this directory.")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from pilot.dashboard import queries
    from pilot.dashboard.app import DashboardServices, create_standalone_app
    from pilot.service.explain import explain
    from pilot.settings import load_settings
    from pilot.store import Store
    from tests.dashboard.history import generate

    data = args.keep or Path(tempfile.mkdtemp(prefix="lp-bench-dashboard-"))
    data.mkdir(parents=True, exist_ok=True)
    settings = load_settings(None, data_dir=data, env="bench", gpu={"provider": "fake"})
    fresh = not (data / "pilot.db").exists()
    store = Store(settings.database_url)
    store.migrate()
    if fresh:
        t0 = time.monotonic()
        generate(store, days=90, records=args.records, runs=args.runs, versions=args.versions, seed=11)
        print(
            f"generated {args.records:,} records, {args.runs:,} runs, {args.versions} versions in "
            f"{time.monotonic() - t0:.1f} s ({data})"
        )
    with store.session() as s:
        run_id = queries.runs_list(s, limit=1)[0].id
        versions = queries.versions_list(s, limit=args.versions)
        counts = (queries.RecordRollup().total(s), len(versions))
    version_id = versions[len(versions) // 2]["id"]
    print(
        f"store: {counts[0]:,} records, {counts[1]} versions (SQLite file "
        f"{(data / 'pilot.db').stat().st_size / 1e6:.0f} MB)"
    )
    app = create_standalone_app(store, settings, DashboardServices(explain=explain), bound_host="127.0.0.1", warm=False)
    client = TestClient(app, client=("127.0.0.1", 50000))
    t = time.perf_counter()
    assert client.get("/dashboard/").status_code == 200
    cold_ms = (time.perf_counter() - t) * 1000
    records = queries.RecordRollup()
    with store.session() as s:
        records.refresh(s)  # the queries-only timings below start warm, like the pages

    def timed(fn: object, repeat: int) -> tuple[float, float]:
        assert callable(fn)
        fn()  # warm-up: templates compiled, SQLite pages in the OS cache
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times), max(times)

    def query(kind: str) -> object:
        def run() -> None:
            with store.session() as s:
                if kind == "overview":
                    queries.overview(s, settings, records)
                elif kind == "run":
                    queries.run_page(s, run_id)
                elif kind == "data":
                    queries.data_page(s, records, window_days=90)
                elif kind == "marker":
                    queries.change_marker(s)
            if kind == "version":
                explain(store, version_id)

        return run

    pages = {
        "overview": ("/dashboard/", "overview"),
        "run": (f"/dashboard/runs/{run_id}", "run"),
        "model version": (f"/dashboard/versions/{version_id}", "version"),
        "data (30 days)": ("/dashboard/data", None),
        "data (90 days)": ("/dashboard/data?days=90", "data"),
        "runs & versions": ("/dashboard/runs", None),
    }
    print(f"\n{'page':<18} {'server median':>14} {'worst':>8} {'queries median':>15}   (target <= {TARGET_MS:.0f} ms)")
    worst_page = 0.0
    for name, (url, kind) in pages.items():

        def get(url: str = url) -> None:
            response = client.get(url)
            assert response.status_code == 200, (url, response.status_code)

        median, worst = timed(get, args.repeat)
        q = f"{timed(query(kind), args.repeat)[0]:13.1f} ms" if kind else f"{'':>16}"
        worst_page = max(worst_page, median)
        flag = "" if median <= TARGET_MS else "  OVER TARGET"
        print(f"{name:<18} {median:11.1f} ms {worst:6.1f} ms {q}{flag}")
    marker_median, marker_worst = timed(query("marker"), args.repeat)
    print(
        f"{'change marker':<18} {marker_median:11.2f} ms {marker_worst:6.2f} ms   (polled by each open page every "
        f"{settings.dashboard.poll_s} s)"
    )
    print(
        f"first overview after start: {cold_ms:.0f} ms (reads every record once into the rollup; the daemon does "
        "that in the background when it mounts the dashboard)"
    )
    print(f"\nslowest page median: {worst_page:.1f} ms ({'meets' if worst_page <= TARGET_MS else 'MISSES'} the target)")
    store.close()


if __name__ == "__main__":
    main()
