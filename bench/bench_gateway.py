"""The capture gateway's cost: added latency, added time to first token, throughput, and how fast records land.

Run: ``python bench/bench_gateway.py [--calls 4000] [--concurrency 50] [--streams 400] [--records 100000]
[--upstream-delay-ms 0,20,100] [--gateway-workers 1] [--gateway-cpus 1] [--profile gateway.prof]``.

Three processes on loopback: the fake OpenAI upstream (tools/serving/openai_fake.py), one gateway process
(``learning-pilot gateway``, recording on, SQLite store in a temp dir) and this load generator (aiohttp, one
pooled connector); with ``--gateway-workers N`` the gateway is N serving processes on its port
(``learning-pilot gateway --workers N``) and its CPU is theirs together. The same calls go straight to the
upstream and through the gateway in alternating rounds, so the difference is the gateway. ``--gateway-cpus 1``
pins the gateway (its workers and ingesters) to CPU 1 and this load generator and the upstream to the others, as
on a host where the proxy has a core of its own; by default all three share every core. Prints:

- for each ``--upstream-delay-ms`` (the fake sleeps that long before it answers, each non-streamed call's delay
  spread uniformly over +-``--jitter`` (50%) of it as a model server's answers are, and spaces streamed chunks by
  a tenth of it: a model server takes tens to hundreds of ms; 0 is an instant upstream, where the closed-loop
  clients saturate the machine's cores): added latency p50/p99 of small non-streamed chat calls at ``--concurrency``
  clients (targets 1 ms / 5 ms), added time to first streamed token p50 (target 2 ms) at 10 concurrent streams,
  the offered load (calls/s), and the gateway process's CPU per call and utilisation (of one core) meanwhile;
- calls/s through the one gateway process with recording on (target 1,000/s), instant upstream;
- seconds from the last of ``--records`` calls until all their records are in the store (target 5 s), and how
  many are missing (target 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlmodel import func, select  # noqa: E402

from pilot.store import Store  # noqa: E402
from pilot.store.models import GatewayCall  # noqa: E402

BASE = "base-model"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def serving_pids(gw_pid: int, workers: int) -> list[int]:
    """The processes that serve: the gateway, or its supervisor and its workers (spawned: ``spawn_main``)."""
    if workers == 1:
        return [gw_pid]
    spawned = [p for p in children(gw_pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return [gw_pid, *spawned]


def ingester_pids(gw_pid: int, workers: int) -> list[int]:
    """The ingester children (and multiprocessing's idle resource trackers) of the serving processes."""
    if workers == 1:
        return children(gw_pid)
    return [c for p in serving_pids(gw_pid, workers)[1:] for c in children(p)]


async def _wait_workers(url: str, workers: int) -> None:
    """Until each of the workers has answered /healthz (fresh connections: the kernel spreads them)."""
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"only gateway workers {sorted(seen)} came up")
        try:
            async with aiohttp.ClientSession() as http, http.get(url) as answer:
                seen.add(int((await answer.json())["worker"]))
        except aiohttp.ClientError:
            await asyncio.sleep(0.1)


async def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as answer:
                    if answer.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not come up")
            await asyncio.sleep(0.1)


async def load(
    base: str, model: str, calls: int, concurrency: int, delay_ms: float = 0, jitter: float = 0
) -> tuple[list[float], float, float]:
    """Non-streamed calls; returns (latencies in ms, calls/s, time of the last answer). Call ``i`` asks the fake for
    ``delay_ms`` times a factor drawn uniformly within 1 +- ``jitter`` (seeded by ``i``: the same on both sides)."""
    latencies: list[float] = []
    todo = iter(range(calls))
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    last = 0.0
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker(w: int) -> None:
            nonlocal last
            for i in todo:
                body = {"model": model, "messages": [{"role": "system", "content": "You fix code."},
                                                     {"role": "user", "content": f"task {i}"}]}  # fmt: skip
                t = time.perf_counter()
                delay = delay_ms * random.Random(i).uniform(1 - jitter, 1 + jitter)
                headers = {"X-Session-Id": f"s{w}", "X-Fake-Delay-Ms": f"{delay:.3f}"}
                async with http.post(f"{base}/chat/completions", json=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"call failed: HTTP {r.status}")
                last = time.perf_counter()
                latencies.append((last - t) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, calls / elapsed, last


async def ttft(base: str, model: str, streams: int, concurrency: int = 10, delay_ms: float = 0) -> list[float]:
    firsts: list[float] = []
    todo = iter(range(streams))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def worker() -> None:
            for i in todo:
                body = {"model": model, "stream": True, "messages": [{"role": "user", "content": f"say {i} a b c"}]}
                t = time.perf_counter()
                headers = {"X-Fake-Delay-Ms": str(delay_ms), "X-Fake-Chunk-Delay-Ms": str(delay_ms / 10)}
                async with http.post(f"{base}/chat/completions", json=body, headers=headers) as r:
                    first = None
                    async for line in r.content:
                        if first is None and line.startswith(b"data:"):
                            first = (time.perf_counter() - t) * 1000
                    assert first is not None
                    firsts.append(first)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return firsts


def _count(store: Store) -> int:
    with store.session() as s:
        return int(s.exec(select(func.count()).select_from(GatewayCall)).one())


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def condition(
    direct: str, via: str, gw: list[int], args: argparse.Namespace, delay_ms: float
) -> dict[str, object]:
    """Direct and gateway rounds, alternating, at one upstream delay; the gateway processes' CPU meanwhile."""
    d_lat: list[float] = []
    g_lat: list[float] = []
    d_rates, g_rates = [], []
    cpu = wall = 0.0
    for _ in range(2):  # alternate, so drift on a shared machine hits both sides
        lat, rate, _ = await load(direct, BASE, args.calls // 2, args.concurrency, delay_ms, args.jitter)
        d_lat += lat
        d_rates.append(rate)
        c0, t0 = _cpu(gw), time.perf_counter()
        lat, rate, _ = await load(via, "agent", args.calls // 2, args.concurrency, delay_ms, args.jitter)
        cpu += _cpu(gw) - c0
        wall += time.perf_counter() - t0
        g_lat += lat
        g_rates.append(rate)
    d_first, g_first = [], []
    for _ in range(2):
        d_first += await ttft(direct, BASE, args.streams // 2, delay_ms=delay_ms)
        g_first += await ttft(via, "agent", args.streams // 2, delay_ms=delay_ms)
    return {
        "upstream_delay_ms": delay_ms,
        "gateway_workers": args.gateway_workers,
        "gateway_cpus": args.gateway_cpus or "shared",
        "jitter": args.jitter,
        "concurrency": args.concurrency,
        "direct_p50_ms": round(_pct(d_lat, 0.5), 2),
        "gateway_p50_ms": round(_pct(g_lat, 0.5), 2),
        "added_p50_ms": round(_pct(g_lat, 0.5) - _pct(d_lat, 0.5), 2),
        "direct_p99_ms": round(_pct(d_lat, 0.99), 2),
        "gateway_p99_ms": round(_pct(g_lat, 0.99), 2),
        "added_p99_ms": round(_pct(g_lat, 0.99) - _pct(d_lat, 0.99), 2),
        "direct_calls_per_s": round(statistics.mean(d_rates)),
        "gateway_calls_per_s": round(statistics.mean(g_rates)),  # the offered load, closed-loop
        "gateway_cpu_us_per_call": round(cpu / len(g_lat) * 1e6),
        "gateway_cpu_utilisation": round(cpu / wall, 3),  # of one core
        "direct_ttft_p50_ms": round(_pct(d_first, 0.5), 2),
        "gateway_ttft_p50_ms": round(_pct(g_first, 0.5), 2),
        "added_ttft_p50_ms": round(_pct(g_first, 0.5) - _pct(d_first, 0.5), 2),
    }


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--records", type=int, default=100_000, help="0 skips the recording run")
    parser.add_argument("--upstream-delay-ms", default="0,20,100", help="comma-separated; one row each")
    parser.add_argument("--jitter", type=float, default=0.5, help="each call's delay: x uniform(1 - j, 1 + j)")
    parser.add_argument("--gateway-workers", type=int, default=1, help="gateway serving processes (--workers)")
    parser.add_argument("--profile", type=Path, help="run the gateway under cProfile, stats written here")
    parser.add_argument("--gateway-cpus", default="", help="e.g. 1: the gateway on these CPUs, the rest elsewhere")
    args = parser.parse_args()
    gateway_cpus = {int(c) for c in args.gateway_cpus.split(",") if c.strip()}
    if gateway_cpus:
        others = os.sched_getaffinity(0) - gateway_cpus
        if not others:
            raise SystemExit(f"--gateway-cpus {args.gateway_cpus} leaves no CPU for the load and the upstream")
        os.sched_setaffinity(0, others)  # this process, and the upstream started below, stay off the gateway's
    delays = [float(d) for d in args.upstream_delay_ms.split(",") if d.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    data = tmp / "data"
    data.mkdir()
    store = Store(f"sqlite:///{data / 'pilot.db'}")
    store.migrate()
    up_port, gw_port = _port(), _port()
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # the bench may add one
    env = {**os.environ, "PYTHONPATH": path, "LEARNING_PILOT_DATA_DIR": str(data),
           "LEARNING_PILOT_TRAINING__BASE_MODEL": BASE,
           "LEARNING_PILOT_GATEWAY__UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1"}  # fmt: skip
    env.pop("LEARNING_PILOT_CONFIG", None)
    profile = ["-m", "cProfile", "-o", str(args.profile.resolve())] if args.profile else []
    gateway = [sys.executable, *profile, "-m", "pilot.cli", "gateway"]
    procs = [
        subprocess.Popen([sys.executable, "-m", "tools.serving.openai_fake", str(up_port), BASE], env=env, cwd=tmp),
        subprocess.Popen(
            [*gateway, "--port", str(gw_port), "--workers", str(args.gateway_workers)],
            env=env,
            cwd=tmp,
            preexec_fn=(lambda: os.sched_setaffinity(0, gateway_cpus)) if gateway_cpus else None,
        ),
    ]
    if gateway_cpus:
        print(json.dumps({"gateway_cpus": sorted(gateway_cpus), "load_and_upstream_cpus": sorted(others)}))
    gw_pid = procs[1].pid
    direct, via = f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{gw_port}/v1"
    try:
        await _wait_up(f"{direct}/models")
        await _wait_up(f"http://127.0.0.1:{gw_port}/healthz")
        await _wait_workers(f"http://127.0.0.1:{gw_port}/healthz", args.gateway_workers)
        gw, ingesters = serving_pids(gw_pid, args.gateway_workers), ingester_pids(gw_pid, args.gateway_workers)
        await load(direct, BASE, 500, args.concurrency)  # warm both
        await load(via, "agent", 500, args.concurrency)
        ingester_cpu0 = _cpu(ingesters)
        rows = []
        for delay_ms in delays:
            rows.append(await condition(direct, via, gw, args, delay_ms))
            print(json.dumps(rows[-1]), flush=True)
        through = 500 + len(delays) * (2 * (args.calls // 2) + 2 * (args.streams // 2))
        print(json.dumps({"ingester_cpu_us_per_call": round(
            (_cpu(ingesters) - ingester_cpu0) / (through - 500) * 1e6)}))  # fmt: skip
        if args.records:
            before = _count(store)
            # every call through the gateway above is recorded too (the warm-up, the rounds, the streams)
            _, rate, last = await load(via, "agent", args.records, args.concurrency)
            deadline = time.perf_counter() + 600
            while (n := _count(store)) < through + args.records and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            landed = time.perf_counter() - last
            print(json.dumps({"records": {
                "calls": args.records,
                "gateway_calls_per_s_with_recording": round(rate),
                "seconds_from_last_call_to_all_records_stored": round(landed, 2),
                "missing": through + args.records - n,
                "stored_before_this_run": before,
            }}, indent=2))  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
