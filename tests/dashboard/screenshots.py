"""Screenshots of each dashboard page for docs/ (docs/dashboard-*.png), on 90 days of generated history, signed in
as an approver so the actions show. Run: ``PYTHONPATH=. python -m tests.dashboard.screenshots [OUT_DIR]``."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from pilot.context import build_context
from pilot.dashboard.auth import create_user
from pilot.service.api import create_app
from pilot.service.api_dashboard import mount_dashboard
from pilot.settings import load_settings
from pilot.store import Store
from tests.dashboard.conftest import ARGS, CHROMIUM, serving
from tests.dashboard.history import generate


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="lp-shots-"))
    settings = load_settings(
        None,
        data_dir=data,
        env="demo",
        gpu={"provider": "fake"},
        dashboard={"approvers": ["alice"]},
        budget={"per_day_usd": 25.0, "per_month_usd": 400.0},
    )
    store = Store(settings.database_url)
    store.migrate()
    history = generate(store, days=90, records=60_000, runs=900, versions=40)
    with store.session(write=True) as s:
        token = create_user(s, "alice", created_by="human:screenshots")
    ctx = build_context(settings, store=store)
    app = create_app(ctx)
    mount_dashboard(app, ctx)
    with serving(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        base = url + "/dashboard"
        page.goto(base + "/signin")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        pages = {
            "overview": "/",
            "run": f"/runs/{history.run_ids[0]}",
            "version": f"/versions/{history.version_ids[3]}",
            "data": "/data?days=90",
        }
        for name, path in pages.items():
            page.goto(base + path)
            page.wait_for_selector("#live.on")
            page.screenshot(path=str(out / f"dashboard-{name}.png"), full_page=True)
            print(out / f"dashboard-{name}.png")
        browser.close()
    ctx.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs"))
