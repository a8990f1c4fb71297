"""The dashboard's fixtures: one headless Chromium for the module (Debian's, driven by Playwright's Python API; no
downloaded browser), and a real uvicorn on loopback serving the daemon's app with the dashboard mounted."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` on a real uvicorn at 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True  # open live streams must not hold the test up
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which("chromium") is None and not shutil.which(CHROMIUM):
        pytest.fail("Debian's chromium is needed by the dashboard's browser tests: `make chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page_of(browser: Any) -> Iterator[Any]:
    """A factory of fresh pages (own cookies) that refuse every request off loopback (the dashboard is offline)."""
    contexts: list[Any] = []
    offsite: list[str] = []

    def make() -> Any:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)

        def guard(route: Any) -> None:
            url = route.request.url
            if url.startswith(("http://127.0.0.1", "about:", "data:")):
                route.continue_()
            else:
                offsite.append(url)
                route.abort()

        context.route("**/*", guard)
        page = context.new_page()
        page.set_default_timeout(15_000)
        return page

    yield make
    for context in contexts:
        context.close()
    assert offsite == [], f"the dashboard asked for something off the machine: {offsite}"
