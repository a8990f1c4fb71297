"""Each page in headless Chromium against 90 days of generated history (thousands of runs and records): it loads,
its charts are drawn with the right number of series, and a change in the store appears on the open page without a
reload. One browser for the module; one store and one server for the module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pilot.context import PilotContext, build_context
from pilot.service.api import create_app
from pilot.service.api_dashboard import mount_dashboard
from pilot.settings import load_settings
from pilot.store import Store
from pilot.store.models import Decision, utcnow
from pilot.store.status import EntityType
from pilot.store.writers import record_event
from tests.dashboard.conftest import serving
from tests.dashboard.history import DOMAINS, History, generate


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, History, PilotContext]]:
    data = tmp_path_factory.mktemp("dashboard")
    settings = load_settings(None, data_dir=data, env="test", gpu={"provider": "fake"}, dashboard={"poll_s": 0.3})
    store = Store(settings.database_url)
    store.migrate()
    history = generate(store, days=90, records=30_000, runs=1_500, versions=60)
    ctx = build_context(settings, store=store)
    app = create_app(ctx)
    mount_dashboard(app, ctx)
    with serving(app) as url:
        yield url + "/dashboard", history, ctx
    ctx.close()


def series(page: Any, chart: str) -> list[str]:
    return page.eval_on_selector_all(f"{chart} svg.chart g.series", "els => els.map(e => e.dataset.series)")


def drawn(page: Any, chart: str) -> int:
    """Marks actually drawn (bars, line points, dots) in a chart."""
    return int(
        page.eval_on_selector(
            f"{chart} svg.chart",
            "svg => svg.querySelectorAll('g.series rect, g.series polyline, g.series circle').length",
        )
    )


def test_the_overview_shows_state_spend_quality_and_what_is_in_flight(
    site: tuple[str, History, PilotContext], page_of: Callable[[], Any]
) -> None:
    base, history, _ = site
    page = page_of()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = page.goto(base + "/")
    assert response is not None and response.status == 200
    assert page.text_content("#pilot-state") == "active"
    assert series(page, "#chart-spend") == ["gpu actual", "reserved", "llm"]
    assert drawn(page, "#chart-spend") > 30  # 30 days of LLM spend at least, plus the GPU bars
    assert series(page, "#chart-golden") == ["golden score"]
    assert drawn(page, "#chart-golden") >= len(history.version_ids)
    live = series(page, "#chart-live")
    assert len(live) >= 2 and all(v == "base" or v.startswith("v") for v in live)
    assert page.locator("#chart-live svg .mark").count() >= 1  # promotions or rollbacks in the window
    for run_id in history.in_flight:
        assert page.locator(f"#in-flight a[href$='/runs/{run_id}']").count() == 1
    assert page.locator(f"#approval-{history.pending_approval}").count() == 1
    assert "concentrated in sql" in (page.text_content("[data-live=decisions]") or "")
    page.wait_for_selector("#live.on")  # the live stream said hello
    assert errors == []


def test_the_run_page_shows_timeline_attempts_loss_and_cost(
    site: tuple[str, History, PilotContext], page_of: Callable[[], Any]
) -> None:
    base, history, _ = site
    page = page_of()
    page.goto(f"{base}/runs/{history.run_ids[0]}")  # run 0 had two attempts (a host went offline)
    assert page.locator("#attempts tr").count() == 1 + 2
    assert "host offline" in (page.text_content("#attempts") or "")
    assert series(page, "#chart-loss") == ["train loss", "eval loss"]
    assert drawn(page, "#chart-loss") > 2
    assert page.locator("#timeline li").count() >= 4
    assert "sft" in (page.text_content("#run-method") or "")  # a plan without a method reads as supervised
    page.goto(f"{base}/runs/{history.in_flight[-1]}")
    assert page.text_content("#run-status") == "running"
    assert "s ago" in (page.text_content("#attempts") or "")  # the last heartbeat's age


def test_the_version_page_walks_the_chain_with_the_gate(
    site: tuple[str, History, PilotContext], page_of: Callable[[], Any]
) -> None:
    base, history, _ = site
    page = page_of()
    page.goto(f"{base}/versions/{history.version_ids[0]}")
    steps = page.locator("#chain > li").all_text_contents()
    assert [s.split()[0] for s in steps] == [
        "Records",
        "Snapshot",
        "Decision",
        "Approval",
        "Run",
        "Adapter",
        "Evaluation",
        "Promotion",
    ]
    assert page.locator("#per-domain tr").count() == 1 + len(DOMAINS)
    assert page.text_content("#ci-low") and page.text_content("#ci-high")
    missing = page.goto(f"{base}/versions/nope")
    assert missing is not None and missing.status == 404


def test_the_data_page_shows_records_dead_letters_and_curation(
    site: tuple[str, History, PilotContext], page_of: Callable[[], Any]
) -> None:
    base, _, _ = site
    page = page_of()
    page.goto(f"{base}/data?days=90")
    assert sorted(series(page, "#chart-records")) == sorted(DOMAINS)
    assert drawn(page, "#chart-records") >= 80 * len(DOMAINS)  # a bar per domain per day, nearly every day
    assert page.text_content("#records-total") == "30000"
    assert page.locator("#dead-letters tr").count() > 1
    assert page.locator("#snapshots tr").count() > 1
    assert "scrubbed" not in (page.text_content("#snapshots td") or "")  # figures, not raw JSON


def test_a_store_change_appears_on_the_open_page_without_reload(
    site: tuple[str, History, PilotContext], page_of: Callable[[], Any], tmp_path: Path
) -> None:
    base, _, ctx = site
    page = page_of()
    page.goto(base + "/")
    page.wait_for_selector("#live.on")
    page.evaluate("window.__sameDocument = true")
    with ctx.store.session(write=True) as s:
        s.add(
            Decision(
                id="dec-live",
                thread_id="cycle-live",
                action="wait",
                reason="a decision made just now",
                created_at=utcnow(),
            )
        )
        record_event(s, entity_type=EntityType.DECISION, entity_id="dec-live", actor="supervisor", reason="decided")
    page.wait_for_function(
        "document.querySelector('[data-live=decisions]').textContent.includes('a decision made just now')",
        timeout=8_000,
    )
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert int(page.evaluate("document.body.dataset.updates")) >= 1
    page.screenshot(path=str(tmp_path / "overview.png"))
