"""Ingest under abuse: a 400 MiB chunked body, and 2.5 M junk lines in one request while the kill switch pauses.

Against the daemon's app on real uvicorn in a child process (tests/helpers/api_server.py), SQLite store. Prints
the server's peak RSS (VmHWM) around the refused 400 MiB chunked body; then posts 2,500,000 junk lines (4.8 MiB)
and, while they are stored, commits the kill switch's pause and resume from another connection six times (as
`learning-pilot kill` does), printing each latency; then the whole request's time and answer size. Targets: the
refusal within 16 MiB + buffers and peak RSS growth under 48 MiB; every pause under 1 s.

    python bench/bench_ingest_limits.py [--uncapped]   # --uncapped: every junk line its own dead-letter row
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx  # noqa: E402

from pilot.store import Store  # noqa: E402
from pilot.store.writers import set_paused  # noqa: E402
from tests.helpers.api_server import ApiServer, send_chunked  # noqa: E402

MIB = 1024 * 1024
LINES = 2_500_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uncapped", action="store_true", help="ingest.dead_letters_per_request = 10**9")
    args = parser.parse_args()
    env = {"LEARNING_PILOT_INGEST__DEAD_LETTERS_PER_REQUEST": str(10**9)} if args.uncapped else {}
    ok = True
    with ApiServer(Path(tempfile.mkdtemp(prefix="bench-ingest-limits-")) / "data", env=env) as server:
        before = server.peak_rss_mib()
        started = time.perf_counter()
        status, sent = send_chunked(server.url, "/v1/records", server.token, 400 * MIB, (b"x" * 1023 + b"\n") * 1024)
        refused_s = time.perf_counter() - started
        after = server.peak_rss_mib()
        print(f"400 MiB chunked body:  HTTP {status} after {sent / MIB:.1f} MiB sent, {refused_s:.2f} s")
        print(f"server peak RSS:       {before:.0f} -> {after:.0f} MiB (+{after - before:.0f} MiB; target < 48)")
        ok &= status == 413 and after - before < 48

        body = b"x\n" * LINES
        answers: list[httpx.Response] = []
        headers = {"authorization": f"Bearer {server.token}", "content-type": "application/x-ndjson"}
        sender = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{server.url}/v1/records", content=body, headers=headers, timeout=900)
            )
        )
        started = time.perf_counter()
        sender.start()
        store = Store(server.settings.database_url)
        pauses = []
        time.sleep(1.0)  # the request is being validated and stored
        for n in range(6):
            began = time.perf_counter()
            with store.session(write=True) as session:
                set_paused(session, n % 2 == 0, actor="human:bench", reason="kill during a huge ingest")
            pauses.append(time.perf_counter() - began)
            time.sleep(0.2)
        during = sender.is_alive()
        sender.join()
        total = time.perf_counter() - started
        store.close()
        answer = answers[0]
        report = answer.json()
        print(
            f"2.5 M junk lines:      {len(body) / MIB:.1f} MiB body, dead letters per request "
            f"{'uncapped' if args.uncapped else 'default (1000)'}"
        )
        print(
            f"pause/resume latency:  {', '.join(f'{p:.3f}' for p in pauses)} s (max {max(pauses):.3f}; target < 1 s;"
            f" request still running: {during})"
        )
        print(
            f"whole request:         HTTP {answer.status_code} in {total:.1f} s, answer {len(answer.content)} bytes, "
            f"dead_lettered {report['dead_lettered']}, rows not kept {report['dead_letters_not_kept']}"
        )
        print(f"server peak RSS:       {server.peak_rss_mib():.0f} MiB")
        ok &= max(pauses) < 1.0 and answer.status_code == 200 and during
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
