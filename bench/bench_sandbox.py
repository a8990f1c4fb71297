"""Per-run overhead of tools.sandbox.run_python versus a bare `python -c` subprocess.

Run: python bench/bench_sandbox.py [runs]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.sandbox import SandboxLimits, isolation_support, run_python

CODE = "def add(a, b):\n    return a + b\n"
TESTS = "from solution import add\n\ndef test_add():\n    assert add(1, 2) == 3\n"


def main(runs: int = 20) -> None:
    support = isolation_support()
    print(f"isolation: {support}")
    limits = SandboxLimits()
    run_python(CODE, TESTS, limits)  # warm the interpreter probe and the page cache
    sandboxed = []
    for _ in range(runs):
        start = time.perf_counter()
        result = run_python(CODE, TESTS, limits)
        sandboxed.append(time.perf_counter() - start)
        assert result.passed, result
    bare = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        bare.append(time.perf_counter() - start)
    med_s, med_b = statistics.median(sandboxed), statistics.median(bare)
    print(f"runs: {runs}")
    p90 = sorted(sandboxed)[int(runs * 0.9) - 1]
    print(f"sandboxed run_python: median {med_s * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms")
    print(f"bare python -I -S -c pass: median {med_b * 1000:.1f} ms")
    print(f"overhead per run: {(med_s - med_b) * 1000:.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
