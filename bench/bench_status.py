"""`learning-pilot status` wall time on a demo store (target <= 0.5 s), measured as a fresh process each time.

Usage: python bench/bench_status.py [--config config/demo.toml] [--runs 7]
Run `make demo` first (or any command that filled the store the config points at).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="config/demo.toml")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    command = [sys.executable, "-m", "pilot.cli", "--config", args.config, "status"]
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - started)
        if out.returncode != 0:
            sys.exit(f"status failed: {out.stderr.strip()}")
    json_started = time.perf_counter()
    subprocess.run([*command, "--json"], capture_output=True, check=True)
    json_time = time.perf_counter() - json_started
    print(
        f"status wall time over {args.runs} runs: median {statistics.median(times):.3f} s, "
        f"min {min(times):.3f} s, max {max(times):.3f} s; --json {json_time:.3f} s (target <= 0.5 s)"
    )


if __name__ == "__main__":
    main()
