"""Destroying many Vast instances, and listing under 429s, at Vast's real limits (provider level).

Setup: the local Vast REST server (tools/gpu/vast_server.py) with the contract's rate limits ON (single destroy one
call per 3 s per key, list 1 s, ...; 429 without Retry-After) and 100 ms added to every API call, driven through the
real ``vastai`` client by ``VastGpuProvider`` with production settings (backoff base 1 s with jitter, cap 30 s,
pacing to the contract's windows, real sleeps). Our instances are interleaved with foreign ones (another
installation of the same env, and another tool's) so the account spans 3+ list pages.

1. ``terminate_many`` of 20 and of 100 of our instances: time from the call until every one is confirmed gone
   (targets: 20 <= 2 s, 100 <= 5 s); every foreign instance must be untouched. Also, for information, the same with
   the bulk call leaving 2 instances behind (finished by single destroys, 3 s apart).
2. ``list_owned`` over 3+ pages with a 429 on every third request: it must converge in one pass, each page
   retried on its own (page 1's ``label_counts`` name every label, so only the pages of our labels are read after
   it); passes and seconds are printed. The reconciler's own figure is bench/bench_reconcile.py.

    python bench/bench_vast_destroy.py
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.errors import ProviderError  # noqa: E402
from tools.gpu.base import instance_label, label_prefix  # noqa: E402
from tools.gpu.vast import VastGpuProvider  # noqa: E402
from tools.gpu.vast_server import VastServer, load_offer_book  # noqa: E402

KEY = "bench-key"
LATENCY_S = 0.1
ENV, OURS, THEIRS = "bench", "inst-ours", "inst-theirs"
LIST = "/api/v1/instances/"


def seed(server: VastServer, ours: int, foreign: int) -> tuple[list[str], list[int]]:
    """``ours`` of our instances interleaved with ``foreign`` others (ids in one sequence: spread over the pages)."""
    mine: list[str] = []
    others: list[int] = []
    for k in range(max(ours, foreign)):
        if k < ours:
            mine += [str(i) for i in server.seed_instances([instance_label(ENV, f"run-{k:04d}", OURS)])]
        if k < foreign:
            label = instance_label(ENV, f"run-{k:04d}", THEIRS) if k % 2 else f"someone-else/job-{k}"
            others += server.seed_instances([label])
    return mine, others


def provider(server: VastServer) -> VastGpuProvider:
    return VastGpuProvider(KEY, api_url=server.url, rng=random.Random(1))  # production backoff and pacing


def bench_destroy(work: Path, n: int, foreign: int, target_s: float | None, *, bulk_leaves: int = 0) -> bool:
    with VastServer(load_offer_book(ROOT / "tests/fixtures/vast_offers.json"), api_key=KEY, workdir=work) as server:
        mine, others = seed(server, n, foreign)
        server.latency_s = LATENCY_S
        gpu = provider(server)
        pages = -(-(n + foreign) // 25)
        if bulk_leaves:
            server.bulk_destroy_leaves(bulk_leaves)
        started = time.perf_counter()
        report = gpu.terminate_many(mine, deadline_s=30)
        elapsed = time.perf_counter() - started
        live = set(server.live_instances())
        untouched = set(others) <= live
        ours_left = [i for i in mine if int(i) in live]
        calls = [r for r in server.request_log]
        passed = report.ok and not ours_left and untouched and (target_s is None or elapsed <= target_s)
        what = f"{n} instances" + (f", bulk leaves {bulk_leaves}" if bulk_leaves else "")
        target = f"target <= {target_s:.1f} s" if target_s is not None else "no target"
        print(f"terminate_many: {what}; account of {n + foreign} instances over {pages} list pages")
        print(f"  call -> all confirmed gone: {elapsed:.3f} s ({target})")
        print(f"  confirmed gone:             {len(report.gone)}/{n}; not gone: {dict(report.not_gone) or 'none'}")
        print(f"  foreign instances:          {len(others)}, untouched: {untouched}")
        print(
            f"  API calls:                  {len(calls)} "
            f"(bulk {sum(1 for r in calls if r.path == '/api/v0/instances/')}, "
            f"single {sum(1 for r in calls if r.method == 'DELETE' and r.path != '/api/v0/instances/')}, "
            f"list {sum(1 for r in calls if r.path == LIST)}), HTTP 429: {server.rate_limited()}"
        )
        print(f"  {'PASS' if passed else 'FAIL'}")
        return passed


def bench_list(work: Path, ours: int, foreign: int) -> bool:
    with VastServer(load_offer_book(ROOT / "tests/fixtures/vast_offers.json"), api_key=KEY, workdir=work) as server:
        mine, _ = seed(server, ours, foreign)
        server.latency_s = LATENCY_S
        server.fail_every(3, 429, path=LIST)
        gpu = provider(server)
        started = time.perf_counter()
        passes, found = 0, None
        while found is None and passes < 5:
            passes += 1
            try:
                found = gpu.list_owned(label_prefix(ENV, OURS))
            except ProviderError as exc:
                print(f"  pass {passes} failed: {exc}")
        elapsed = time.perf_counter() - started
        log = server.requests_to("GET", LIST)
        # A restart is the unfiltered page 1 asked again after it was answered (a ``label in`` query for the owned
        # labels page 1's label_counts named is a new, smaller list, not a restart).
        first_ok = next(n for n, r in enumerate(log) if r.status == 200)
        restarts = sum(
            1
            for r in log[first_ok + 1 :]
            if "after_token" not in r.query and r.query.get("select_filters", "{}") == "{}"
        )
        complete = found is not None and sorted(i.id for i in found) == sorted(mine)
        pages = -(-(ours + foreign) // 25)
        print(f"list_owned: {ours + foreign} instances over {pages} pages, a 429 on every third list request")
        print(f"  passes: {passes}; {elapsed:.3f} s; complete and exact: {complete}")
        print(
            f"  list requests: {len(log)} ({sum(1 for r in log if r.status == 429)} answered 429); "
            f"restarts from page 1: {restarts}"
        )
        passed = complete and passes == 1 and restarts == 0
        print(f"  {'PASS' if passed else 'FAIL'}")
        return passed


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-vast-destroy-"))
    print(f"Vast API latency {LATENCY_S * 1000:.0f} ms per call; contract rate limits on; production backoff\n")
    results = [
        bench_destroy(work / "d20", 20, 40, 2.0),
        bench_destroy(work / "d100", 100, 60, 5.0),
        bench_destroy(work / "d20-partial", 20, 40, None, bulk_leaves=2),
        bench_list(work / "list", 30, 45),
    ]
    print("\nPASS" if all(results) else "\nFAIL")
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
