"""Reconcile at Vast's real limits: orphans over 3+ list pages with a 429 on every third request converge in <= 2
passes.

Setup: the local Vast REST server (tools/gpu/vast_server.py) with the contract's rate limits ON (list 1 s, destroy and
bulk destroy 3 s per key; 429 without Retry-After), a 429 injected on EVERY third request to any endpoint, and 100 ms
added to every Vast API call, driven through the real vastai client by VastGpuProvider with production settings
(backoff base 1 s with jitter, pacing, real sleeps). On the account: a run of ours in flight (must survive), 10
orphans of ours (crashed between "rented" and "recorded", and a finished run's leftover), 10 live instances of
another installation of the same env (must survive: reported, never destroyed) and 70 of another tool: 91 rows,
4 list pages. ``pilot.service.reconcile.reconcile`` runs pass after pass (daemon mode, with ``ReconcileState``)
until no orphan is left. Target: <= 2 passes.

    python bench/bench_reconcile.py
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from pilot.context import build_context  # noqa: E402
from pilot.service.reconcile import ReconcileState, reconcile  # noqa: E402
from pilot.settings import load_settings  # noqa: E402
from pilot.store import Store  # noqa: E402
from pilot.store.models import DatasetSnapshot, Decision, TrainingRun, utcnow  # noqa: E402
from pilot.store.status import RunStatus  # noqa: E402
from tools.gpu.base import instance_label  # noqa: E402
from tools.gpu.vast import VastGpuProvider  # noqa: E402
from tools.gpu.vast_server import VastServer, load_offer_book  # noqa: E402

KEY = "bench-key"
LATENCY_S = 0.1
TARGET_PASSES = 2


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    offers = load_offer_book(ROOT / "tests" / "fixtures" / "vast_offers.json")
    with VastServer(offers, api_key=KEY, workdir=work / "vast") as vast:
        settings = load_settings(
            None,
            data_dir=work / "data",
            env="bench",
            gpu={"provider": "vast", "vast": {"api_url": vast.url, "api_key": KEY}},
        )
        store = Store(settings.database_url)
        store.migrate()
        ctx = build_context(settings, store=store)
        ctx.gpu = VastGpuProvider(KEY, api_url=vast.url, rng=random.Random(3))  # production backoff and pacing
        live_label = ctx.instance_label("run-live")
        live = vast.seed_instances([live_label])[0]
        with store.session(write=True) as session:
            decision = Decision(id=f"dec-{uuid.uuid4().hex[:8]}", thread_id="bench", action="finetune", reason="b")
            snap = DatasetSnapshot(id=f"snap-{uuid.uuid4().hex[:8]}", content_hash=uuid.uuid4().hex, path="/none")
            session.add(decision)
            session.add(snap)
            session.flush()
            session.add(
                TrainingRun(
                    id="run-live",
                    decision_id=decision.id,
                    snapshot_id=snap.id,
                    status=RunStatus.RUNNING,
                    provider="vast",
                    label=live_label,
                    instance_id=str(live),
                    dph=0.4,
                    started_at=utcnow() - timedelta(minutes=5),
                )
            )
        orphans: list[int] = []
        others: list[int] = []
        for k in range(70):
            if k < 10:
                orphans += vast.seed_instances([ctx.instance_label(f"run-lost-{k:02d}")])
                others += vast.seed_instances([instance_label("bench", f"run-{k:02d}", "lp-other-install")])
            others += vast.seed_instances([f"someone-else/job-{k}"])
        total = len(vast.live_instances())
        time.sleep(3.5)  # the setup's calls leave no rate-limit window open

        vast.latency_s = LATENCY_S
        vast.fail_every(3, 429)  # every third request, to any endpoint, answers 429 (no Retry-After)
        state = ReconcileState()
        passes = 0
        started = time.perf_counter()
        per_pass: list[str] = []
        while passes < 5 and set(orphans) & set(vast.live_instances()):
            passes += 1
            t0 = time.perf_counter()
            report = reconcile(ctx, state=state)
            per_pass.append(
                f"pass {passes}: {time.perf_counter() - t0:.2f} s, {len(report.orphans_destroyed)} destroyed, "
                f"{len(report.orphans_not_verified)} not verified, errors {report.errors or 'none'}"
            )
        elapsed = time.perf_counter() - started
        vast.clear_faults()
        vast.latency_s = 0.0
        left = set(orphans) & set(vast.live_instances())
        survivors = {live, *others} <= set(vast.live_instances())
        injected = sum(1 for r in vast.request_log if r.status == 429)
        store.close()

    print(f"account: {total} instances over {-(-total // 25)} list pages; {len(orphans)} orphans of ours")
    print(f"Vast API latency {LATENCY_S * 1000:.0f} ms per call; a 429 on every third request; production backoff")
    for line in per_pass:
        print(f"  {line}")
    print(f"passes:              {passes} (target <= {TARGET_PASSES})")
    print(f"seconds:             {elapsed:.2f}")
    print(f"orphans left:        {len(left)}")
    print(f"live run, other installation, foreign untouched: {survivors}")
    print(f"HTTP 429 answered:   {injected}")
    passed = not left and survivors and passes <= TARGET_PASSES
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
