"""Kill switch latency: from POST /v1/kill to every instance of ours confirmed gone, at Vast's real limits.

Setup: the local Vast REST server (tools/gpu/vast_server.py) with the contract's rate limits ON (list one call per
1 s per key, destroy 3 s, bulk destroy 3 s; 429 without Retry-After) and 100 ms added to every Vast API call, driven
through the real vastai client by VastGpuProvider with production settings (backoff base 1 s with jitter, pacing to
the contract's windows, real sleeps), the daemon's HTTP app on real uvicorn on loopback. Our instances are
interleaved with foreign ones — another installation of the same env (same ``env``, other installation id: must
survive) and another tool's — so the account spans 3+ list pages (25 rows per page).

Scenarios (each on a fresh server and store):

- ``known``: N training runs in flight (RUNNING on Vast, one attempt each, reservation held), the situation a kill
  is pulled in. Target: 20 instances <= 2 s, 100 instances <= 5 s.
- ``orphans``: N instances of ours the store does not know (a crash between "rented" and "recorded"), for
  information: finding them costs list calls the store-known case does not make.

Every scenario checks: the answer is ok, every instance of ours is gone on the server, every foreign instance (and
every instance of the other installation) is still live, and the runs' reservations were settled.

    python bench/bench_kill.py                     # known 20, known 100, orphans 20
    python bench/bench_kill.py known:20 orphans:100
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from pilot.context import build_context  # noqa: E402
from pilot.service.api import create_app  # noqa: E402
from pilot.settings import load_settings  # noqa: E402
from pilot.spend.ledger import reserve, spend_summary  # noqa: E402
from pilot.store import Store  # noqa: E402
from pilot.store.models import DatasetSnapshot, Decision, RunAttempt, TrainingRun, utcnow  # noqa: E402
from pilot.store.status import AttemptStatus, RunStatus  # noqa: E402
from tools.gpu.base import instance_label  # noqa: E402
from tools.gpu.vast import VastGpuProvider  # noqa: E402
from tools.gpu.vast_server import VastServer, load_offer_book  # noqa: E402

DELAY_S = 0.1
TARGETS = {20: 2.0, 100: 5.0}
KEY = "bench-key"
TOKEN = "bench-token"
ENV = "bench"


def _record_runs(store: Store, ctx_budget: object, labels: list[str], ids: list[int]) -> None:
    with store.session(write=True) as session:
        decision = Decision(id=f"dec-{uuid.uuid4().hex[:8]}", thread_id="bench", action="finetune", reason="bench")
        snap = DatasetSnapshot(id=f"snap-{uuid.uuid4().hex[:8]}", content_hash=uuid.uuid4().hex, path="/none")
        session.add(decision)
        session.add(snap)
        session.flush()
        started = utcnow() - timedelta(minutes=30)
        for label, instance_id in zip(labels, ids, strict=True):
            run_id = label.rsplit("/", 1)[1]
            session.add(
                TrainingRun(
                    id=run_id,
                    decision_id=decision.id,
                    snapshot_id=snap.id,
                    status=RunStatus.RUNNING,
                    provider="vast",
                    label=label,
                    offer_id="1",
                    instance_id=str(instance_id),
                    dph=0.4,
                    estimated_cost_usd=0.5,
                    created_at=started,
                    started_at=started,
                )
            )
            session.flush()
            session.add(
                RunAttempt(
                    id=f"{run_id}-a1",
                    run_id=run_id,
                    n=1,
                    status=AttemptStatus.RUNNING,
                    offer_id="1",
                    dph=0.4,
                    instance_id=str(instance_id),
                    launched_at=started,
                    running_since=started,
                )
            )
            reserve(store, session, amount_usd=0.75, caps=ctx_budget, run_id=run_id)  # type: ignore[arg-type]


def scenario(kind: str, n: int) -> bool:
    work = Path(tempfile.mkdtemp(prefix="bench-kill-"))
    offers = load_offer_book(ROOT / "tests" / "fixtures" / "vast_offers.json")
    with VastServer(offers, api_key=KEY, loading_s=0.05, workdir=work / "vast") as vast:
        settings = load_settings(
            None,
            data_dir=work / "data",
            env=ENV,
            gpu={"provider": "vast", "vast": {"api_url": vast.url, "api_key": KEY}},
            api={"kill_token": TOKEN},
            budget={"per_day_usd": 1000.0, "per_month_usd": 10000.0},
        )
        store = Store(settings.database_url)
        store.migrate()
        ctx = build_context(settings, store=store)
        ctx.gpu = VastGpuProvider(KEY, api_url=vast.url)  # production backoff and pacing
        ours_labels: list[str] = []
        ours: list[int] = []
        foreign: list[int] = []
        for k in range(n):  # interleaved, so ours are spread over every list page
            label = ctx.instance_label(f"run-{uuid.uuid4().hex[:10]}")
            ours_labels.append(label)
            ours += vast.seed_instances([label], dph_base=0.4)
            if k % 2 == 0:
                foreign += vast.seed_instances([instance_label(ENV, f"run-{k:04d}", "lp-other-install")])
            foreign += vast.seed_instances([f"someone-else/job-{k}a", f"someone-else/job-{k}b"])
        if kind == "known":
            _record_runs(store, settings.budget, ours_labels, ours)
        total = len(ours) + len(foreign)
        pages = -(-total // 25)
        time.sleep(3.5)  # the setup's calls leave no rate-limit window open

        server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]

        vast.latency_s = DELAY_S  # every Vast API call from now on takes >= 100 ms
        before = len(vast.request_log)
        started = time.perf_counter()
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/kill",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"reason": "bench", "by": "bench"},
            timeout=300,
        )
        elapsed = time.perf_counter() - started
        vast.latency_s = 0.0
        calls = vast.request_log[before:]
        report = answer.json()
        live = set(vast.live_instances())
        left = [i for i in ours if i in live]
        untouched = set(foreign) <= live
        with store.session() as session:
            reserved = spend_summary(session).reserved_usd
        server.should_exit = True
        thread.join(timeout=10)
        store.close()

    by_endpoint: dict[str, int] = {}
    for call in calls:
        key = f"{call.method} {'/api/v1/instances/' if call.path.startswith('/api/v1/instances') else call.path}"
        key = (
            "DELETE /api/v0/instances/ (bulk)" if call.method == "DELETE" and call.path == "/api/v0/instances/" else key
        )
        by_endpoint[key] = by_endpoint.get(key, 0) + 1
    target = TARGETS.get(n) if kind == "known" else None
    ok = bool(report.get("ok")) and not left and untouched and (kind != "known" or reserved == 0)
    passed = ok and (target is None or elapsed <= target)
    print(f"-- {kind}: {n} instances of ours, {len(foreign)} foreign ({total} rows, {pages} list pages)")
    print(f"   HTTP status:           {answer.status_code} (ok={report.get('ok')})")
    print(
        f"   confirmed gone:        {len(report.get('instances_destroyed', []))}/{n}; left on the server: {len(left)}"
    )
    others = report.get("other_installations") or {}
    print(f"   foreign untouched:     {untouched}; other installation's instances reported: {sum(others.values())}")
    print(f"   reservations left:     ${reserved:.4f}")
    print(f"   Vast calls:            {len(calls)} {by_endpoint}; HTTP 429: {sum(c.status == 429 for c in calls)}")
    shown = f"target <= {target:.1f} s" if target is not None else "no target: for information"
    print(f"   POST -> all verified:  {elapsed:.3f} s ({shown}); kill switch internal {report.get('duration_s')} s")
    print("   PASS" if passed else "   FAIL")
    return passed


def main(argv: list[str]) -> int:
    runs = [a.split(":") for a in argv] or [["known", "20"], ["known", "100"], ["orphans", "20"]]
    results = [scenario(kind, int(n)) for kind, n in runs]
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
