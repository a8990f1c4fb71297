"""A process that drives one run the way the daemon does, for the crash tests (tests/pilot/test_crash_points.py).

``python -m tests.helpers.crash_harness SETTINGS_JSON RUN_ID`` builds the context from the settings (the test's
local Vast server and S3), runs the start-up reconcile, and drives the run under its lease until it ends. With
``LEARNING_PILOT_CRASH_AT=<point>`` it exits at that point with status 137, as a ``kill -9`` would end it: no
cleanup, nothing committed after the point. The rented host runs the stub job (``HostModules``: injected here,
not a setting).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from pilot import testpoints
from pilot.context import HostModules, build_context
from pilot.runs.driver import watch_run
from pilot.service.reconcile import reconcile
from pilot.settings import Settings


def main(settings_file: str, run_id: str) -> int:
    logging.basicConfig(level=logging.WARNING)
    testpoints.install_crash_from_env()
    settings = Settings(**json.loads(Path(settings_file).read_text()))
    ctx = build_context(settings)
    ctx.host_modules = HostModules(train="stub_job")
    try:
        reconcile(ctx, state=None)  # what a daemon does at start-up
        run = watch_run(ctx, run_id, poll_s=0.05)
    finally:
        ctx.close()
    print(json.dumps({"status": run.status, "reason": run.termination_reason, "message": run.status_message}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
