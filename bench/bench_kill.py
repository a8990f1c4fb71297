"""Kill switch latency: from POST /v1/kill to all 20 instances confirmed gone, with 100 ms per Vast API call.

Setup: the local Vast REST server (tools/gpu/vast_server.py) with the contract's rate limits on (single destroy
one call per 3 s per key, list 1 s; 429 without Retry-After), driven through the real vastai client by
VastGpuProvider with production settings (backoff base 1 s, jitter, pacing), 20 running instances labelled for this
pilot among 40 foreign ones (3 list pages), the daemon's HTTP app on real uvicorn on loopback. Then every Vast
request takes 100 ms (``latency_s``) and the kill is posted; the answer comes only after each instance was verified
gone with the provider. Target: <= 2 s; foreign instances untouched.

    python bench/bench_kill.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from pilot.context import build_context  # noqa: E402
from pilot.service.api import create_app  # noqa: E402
from pilot.settings import load_settings  # noqa: E402
from pilot.store import Store  # noqa: E402
from tools.gpu.vast import VastGpuProvider  # noqa: E402
from tools.gpu.vast_server import VastServer, load_offer_book  # noqa: E402

N = 20
DELAY_S = 0.1
TARGET_S = 2.0
KEY = "bench-key"
TOKEN = "bench-token"


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-kill-"))
    offers = load_offer_book(ROOT / "tests" / "fixtures" / "vast_offers.json")
    with VastServer(offers, api_key=KEY, loading_s=0.05, workdir=work / "vast") as vast:
        settings = load_settings(
            None,
            data_dir=work / "data",
            env="bench",
            gpu={"provider": "vast", "vast": {"api_url": vast.url, "api_key": KEY}},
            api={"kill_token": TOKEN},
        )
        store = Store(settings.database_url)
        store.migrate()
        ctx = build_context(settings, store=store)
        ctx.gpu = VastGpuProvider(KEY, api_url=vast.url)  # production backoff and pacing
        foreign: list[int] = []
        for n in range(N):  # interleaved, so ours are spread over every list page
            vast.seed_instances([f"{ctx.label_prefix}run-{uuid.uuid4().hex[:8]}"])
            foreign += vast.seed_instances([f"someone-else/job-{n}a", f"someone-else/job-{n}b"])
        assert len(ctx.gpu.list_owned(ctx.label_prefix)) == N, "setup: not every instance is live"
        time.sleep(3.5)  # the setup's calls leave no rate-limit window open

        server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]

        vast.latency_s = DELAY_S  # every Vast API call from now on takes >= 100 ms
        started = time.perf_counter()
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/kill",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"reason": "bench", "by": "bench"},
            timeout=300,
        )
        elapsed = time.perf_counter() - started
        vast.clear_faults()
        report = answer.json()
        live = [i for i in vast.live_instances() if i not in foreign]
        untouched = set(foreign) <= set(vast.live_instances())
        limited = vast.rate_limited()
        server.should_exit = True
        thread.join(timeout=10)
        store.close()

    print(f"instances:             {N}")
    print(f"Vast API delay:        {DELAY_S * 1000:.0f} ms per call")
    print(f"HTTP status:           {answer.status_code} (ok={report['ok']})")
    print(f"confirmed gone:        {len(report['instances_destroyed'])}/{N}")
    print(f"left on the provider:  {len(live)}")
    print(f"foreign untouched:     {untouched} ({len(foreign)})")
    print(f"HTTP 429 answers:      {limited}")
    print(f"POST -> all verified:  {elapsed:.3f} s (target <= {TARGET_S:.1f} s)")
    print(f"kill switch internal:  {report['duration_s']:.3f} s")
    print(f"destroy attempts:      {sorted(i['attempts'] for i in report['instances'])}")
    passed = report["ok"] and len(report["instances_destroyed"]) == N and not live and untouched and elapsed <= TARGET_S
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
