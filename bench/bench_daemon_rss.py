"""Idle resident memory of the daemon process (target <= 200 MB; no torch or transformers loaded).

The bench re-runs itself as a child that *is* the daemon: ``pilot.service.daemon.serve`` on a fresh data dir
(SQLite, the fake GPU provider, Slack off), the same call ``learning-pilot run`` makes. Once uvicorn listens and the
first cycle and reconcile have had time to run, a probe thread in the child reads VmRSS from /proc, checks
``sys.modules`` for torch/transformers, writes both to a file and sends the child SIGTERM; the parent prints the
figures and asserts the targets.

    python bench/bench_daemon_rss.py [--idle-s 8]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_MB = 200.0
HEAVY = ("torch", "transformers", "peft")


def _rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def child(out: Path, idle_s: float) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from pilot.service.daemon import serve
    from pilot.settings import load_settings
    from pilot.store import Store

    data = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    settings = load_settings(None, data_dir=data, env="bench", gpu={"provider": "fake"}, api={"port": 0})
    store = Store(settings.database_url)

    def probe() -> None:
        time.sleep(idle_s)
        result = {
            "rss_mb": _rss_mb(),
            "heavy_loaded": [m for m in HEAVY if m in sys.modules],
            "modules": len(sys.modules),
            "langgraph_loaded": "langgraph" in sys.modules,
        }
        out.write_text(json.dumps(result))
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=probe, daemon=True).start()
    serve(settings, store)


def main() -> int:
    idle_s = float(sys.argv[sys.argv.index("--idle-s") + 1]) if "--idle-s" in sys.argv else 8.0
    out = Path(tempfile.mkdtemp(prefix="bench-rss-out-")) / "result.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(out), str(idle_s)],
        env=env,
        capture_output=True,
        text=True,
        timeout=idle_s + 120,
    )
    wall = time.perf_counter() - started
    if not out.is_file():
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        print("FAIL: the daemon did not report")
        return 1
    result = json.loads(out.read_text())
    print(f"daemon idle RSS:      {result['rss_mb']:.1f} MB (target <= {TARGET_MB:.0f} MB)")
    print(f"modules loaded:       {result['modules']} (langgraph: {result['langgraph_loaded']})")
    print(f"torch/transformers:   {result['heavy_loaded'] or 'not loaded'}")
    print(f"exit code on SIGTERM: {proc.returncode} (wall {wall:.1f} s, idle {idle_s:.0f} s)")
    assert not result["heavy_loaded"], f"the daemon imported {result['heavy_loaded']}"
    passed = result["rss_mb"] <= TARGET_MB and proc.returncode == 0
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(Path(sys.argv[i + 1]), float(sys.argv[i + 2]))
    else:
        raise SystemExit(main())
