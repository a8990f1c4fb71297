"""The daemon stays light: importing its modules loads no training stack, no LLM client and no knowledge base
(those load only when configured and used). Guards the idle-RSS budget (bench/bench_daemon_rss.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "litellm", "qdrant_client", "fastembed", "onnxruntime", "vastai", "boto3")


def test_daemon_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import pilot.service.daemon, pilot.supervisor.graph, pilot.supervisor.cycle, pilot.service.api, pilot.cli\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
