"""Per-run cost of the bubblewrap sandbox versus a bare subprocess, and the cost of the isolation probe.

Run: python bench/bench_sandbox.py [runs]

Figures, median of N:
- bare: ``/usr/bin/python3 -I -S -B -c pass`` in a subprocess (the interpreter the sandbox runs);
- bwrap start-up: bwrap with the sandbox's namespaces running the same ``pass`` (run_python's machinery);
- run_python: a passing two-test solution end to end (memfds, bwrap, rlimits, runner, tests, reaping);
- probe: ``probe_isolation()`` uncached (listeners, planted secret, one sandboxed probe run).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.sandbox import SANDBOX_PYTHON, SandboxLimits, probe_isolation, run_python
from tools.sandbox_bwrap import launch

CODE = "def add(a, b):\n    return a + b\n"
TESTS = "from solution import add\n\nassert add(1, 2) == 3\n\ndef test_add():\n    assert add(-1, 1) == 0\n"


def _median_ms(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(runs * 0.9) - 1)]


def main(runs: int = 20) -> None:
    limits = SandboxLimits()
    probe_isolation.cache_clear()
    isolation = probe_isolation()
    print(f"isolation: ok={isolation.ok} mechanism={isolation.mechanism} uid={isolation.uid}")
    print(f"  {isolation.reason}")
    if not isolation.ok:
        print("sandbox degraded: runs return NOT_EVALUATED; nothing to time")
        return
    run_python(CODE, TESTS, limits)  # warm the page cache

    def bare() -> None:
        subprocess.run([SANDBOX_PYTHON, "-I", "-S", "-B", "-c", "pass"], check=True)

    def bwrap_pass() -> None:
        raw = launch(SANDBOX_PYTHON, "pass", [], limits, {}, b"", {"PATH": "/usr/bin:/bin"})
        assert raw.started and raw.returncode == 0, raw

    def sandboxed() -> None:
        result = run_python(CODE, TESTS, limits)
        assert result.passed, result

    def probe() -> None:
        probe_isolation.cache_clear()
        assert probe_isolation().ok

    figures = {
        "bare python -I -S -B -c pass": _median_ms(runs, bare),
        "bwrap sandbox, same pass": _median_ms(runs, bwrap_pass),
        "run_python, passing solution": _median_ms(runs, sandboxed),
        "probe_isolation() uncached": _median_ms(max(5, runs // 4), probe),
    }
    print(f"runs: {runs}")
    for name, (median, p90) in figures.items():
        print(f"{name:32s} median {median:7.1f} ms   p90 {p90:7.1f} ms")
    base = figures["bare python -I -S -B -c pass"][0]
    print(f"bwrap overhead per run:          {figures['bwrap sandbox, same pass'][0] - base:7.1f} ms")
    print(f"run_python overhead vs bare:     {figures['run_python, passing solution'][0] - base:7.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
