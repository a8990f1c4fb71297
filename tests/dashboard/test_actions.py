"""The dashboard's actions in headless Chromium, against the daemon's app on a real uvicorn: an approval answered in
the browser resumes the waiting cycle; the kill switch button pauses and destroys on the local Vast server; a forged
POST (no CSRF token, no session, or a cross-site form) is refused and changes nothing."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from pilot.context import PilotContext, build_context
from pilot.dashboard.auth import create_user
from pilot.data.ingest import ingest_lines
from pilot.service.api import create_app
from pilot.service.api_dashboard import mount_dashboard
from pilot.settings import load_settings
from pilot.store import Store
from pilot.store.models import Approval, Event, TrainingRun
from pilot.store.status import ApprovalStatus, EntityType
from pilot.store.writers import is_paused
from pilot.supervisor.cycle import run_cycle
from subagents.data.samples import generate_demo_records
from tests.dashboard.conftest import serving
from tools.gpu.vast import VastGpuProvider
from tools.gpu.vast_server import ShiftableClock, VastServer, load_offer_book

FIXTURE = Path(__file__).parent.parent / "fixtures" / "vast_offers.json"
VAST_KEY = "vast-secret-key-dashboard-0123"


def _ctx(tmp_path: Path, **gpu: Any) -> PilotContext:
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        env="test",
        gpu=gpu or {"provider": "fake"},
        policy={"min_new_examples": 50, "cooldown_minutes": 0, "approval_required_above_usd": 0},
        budget={"per_run_usd": 1000.0, "per_day_usd": 1000.0, "per_month_usd": 1000.0, "max_dph": 100.0},
        training={"base_model_params_b": 1.0, "max_steps": 10, "poll_interval_s": 0.01, "max_duration_minutes": 1},
        dashboard={"approvers": ["alice"], "poll_s": 0.3},
    )
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    store = Store(settings.database_url)
    store.migrate()
    return build_context(settings, store=store)


def _tokens(ctx: PilotContext) -> dict[str, str]:
    with ctx.store.session(write=True) as s:
        return {who: create_user(s, who, created_by="human:test") for who in ("alice", "bob")}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, PilotContext, dict[str, str]]]:
    ctx = _ctx(tmp_path)
    tokens = _tokens(ctx)
    app = create_app(ctx)
    mount_dashboard(app, ctx)
    with serving(app) as url:
        yield url + "/dashboard", ctx, tokens
    ctx.close()


def signed_in(page_of: Callable[[], Any], base: str, token: str) -> Any:
    """A fresh page (own cookies) signed in with ``token``, on the overview."""
    page = page_of()
    page.goto(base + "/signin")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    return page


def waiting_cycle(ctx: PilotContext) -> Any:
    """A supervisor cycle that decided to fine-tune and now waits on a human (its approval id in ``waiting_on``)."""
    ingest_lines(ctx.store, generate_demo_records(300, seed=3, malformed=0.0), source="test")
    [first] = run_cycle(ctx)
    assert first.waiting_on is not None
    return first


def test_an_approval_answered_in_the_browser_resumes_the_waiting_cycle(
    site: tuple[str, PilotContext, dict[str, str]], page_of: Callable[[], Any]
) -> None:
    base, ctx, tokens = site
    first = waiting_cycle(ctx)
    page = signed_in(page_of, base, tokens["alice"])
    row = page.locator(f"#approval-{first.waiting_on}")
    assert row.count() == 1
    page.once("dialog", lambda dialog: dialog.accept())  # "Approve apv-… (up to $…)?"
    row.locator("button", has_text="Approve").click()
    page.wait_for_url(base + "/")
    assert page.locator(f"#approval-{first.waiting_on}").count() == 0
    with ctx.store.session() as s:
        approval = s.get(Approval, first.waiting_on)
        assert approval is not None
        assert approval.status == ApprovalStatus.APPROVED and approval.decided_by == "human:alice"
        assert "via the dashboard" in (approval.note or "")
    resumed = next(r for r in run_cycle(ctx) if r.resumed)  # the daemon's next cycle picks the answer up
    assert resumed.thread_id == first.thread_id
    with ctx.store.session() as s:
        runs = s.exec(select(TrainingRun).where(TrainingRun.approval_id == first.waiting_on)).all()
    assert len(runs) == 1


def test_a_person_not_on_the_approvers_list_cannot_approve(
    site: tuple[str, PilotContext, dict[str, str]], page_of: Callable[[], Any]
) -> None:
    base, ctx, tokens = site
    first = waiting_cycle(ctx)
    page = signed_in(page_of, base, tokens["bob"])
    assert page.locator(f"#approval-{first.waiting_on} button").count() == 0  # no buttons shown to bob
    csrf = page.get_attribute("#kill-dialog input[name=csrf]", "value")
    response = page.request.post(f"{base}/approvals/{first.waiting_on}/approve", form={"csrf": csrf or ""})
    assert response.status == 403 and "not on dashboard.approvers" in response.text()
    with ctx.store.session() as s:
        approval = s.get(Approval, first.waiting_on)
    assert approval is not None and approval.status == ApprovalStatus.PENDING


def test_forged_posts_are_refused_and_change_nothing(
    site: tuple[str, PilotContext, dict[str, str]], page_of: Callable[[], Any]
) -> None:
    base, ctx, tokens = site
    page = signed_in(page_of, base, tokens["alice"])
    csrf = page.get_attribute("#kill-dialog input[name=csrf]", "value")
    assert csrf
    no_token = page.request.post(base + "/kill", form={"confirm": "kill"})  # the session cookie, no CSRF token
    assert no_token.status == 403 and "CSRF" in no_token.text()
    wrong = page.request.post(base + "/kill", form={"confirm": "kill", "csrf": csrf[:-2] + "xx"})
    assert wrong.status == 403
    unconfirmed = page.request.post(base + "/kill", form={"csrf": csrf})
    assert unconfirmed.status == 400
    anonymous = page_of()
    no_session = anonymous.request.post(base + "/kill", form={"confirm": "kill", "csrf": csrf})
    assert no_session.status == 401
    # A cross-site form (even one that knew the CSRF token): SameSite=Strict keeps the cookie out of it.
    forger = page.context.new_page()
    forger.set_content(
        f'<form id="f" method="post" action="{base}/kill"><input name="csrf" value="{csrf}">'
        '<input name="confirm" value="kill"></form>'
    )
    with forger.expect_navigation():
        forger.evaluate("document.getElementById('f').submit()")
    assert "no session" in (forger.text_content("body") or "")
    with ctx.store.session() as s:
        assert not is_paused(s)
        refusals = s.exec(select(Event).where(Event.entity_type == EntityType.DASHBOARD)).all()
    # Five refusals of three kinds: one sampled event per (route, status, reason) (pilot/store/refusals.py).
    kinds = sorted(e.data["status_code"] for e in refusals if e.reason.startswith("refused") and "/kill" in e.entity_id)
    assert kinds in ([400, 401, 403], [400, 401, 403, 403]), kinds


def test_the_kill_switch_button_pauses_and_destroys_on_the_vast_server(
    tmp_path: Path, page_of: Callable[[], Any]
) -> None:
    clock = ShiftableClock()
    with VastServer(load_offer_book(FIXTURE), api_key=VAST_KEY, clock=clock, workdir=tmp_path / "vast") as server:
        ctx = _ctx(tmp_path, provider="vast", vast={"api_url": server.url, "api_key": VAST_KEY})
        ctx.gpu = VastGpuProvider(
            VAST_KEY, api_url=server.url, request_timeout_s=5.0, sleep=clock.sleep, clock=clock, rng=random.Random(3)
        )
        seeded = server.seed_instances([ctx.instance_label("run-a"), ctx.instance_label("run-b")])
        foreign = server.seed_instances(["someone-else/prod/x"])
        tokens = _tokens(ctx)
        app = create_app(ctx)
        mount_dashboard(app, ctx)
        with serving(app) as url:
            base = url + "/dashboard"
            page = signed_in(page_of, base, tokens["bob"])  # not an approver: may still pull the kill switch
            page.click("#kill-button")
            page.fill("#kill-dialog input[name=reason]", "runaway spend test")
            page.click("#kill-confirm")
            page.wait_for_selector("#report-destroyed")
            assert page.text_content("#report-destroyed") == str(len(seeded))
            assert page.text_content("#report-paused") == "True"
            assert server.live_instances() == foreign  # ours destroyed (verified by the kill switch), not theirs
            with ctx.store.session() as s:
                assert is_paused(s)
                incident = s.exec(select(Event).where(Event.entity_type == EntityType.INCIDENT)).all()
            assert any(e.actor == "human:bob" and "runaway spend test" in e.reason for e in incident)
            page.goto(base + "/")
            assert page.text_content("#pilot-state") == "PAUSED"
            assert page.locator("#resume-button").count() == 0  # bob may not resume
            alice = signed_in(page_of, base, tokens["alice"])
            alice.click("#resume-button")
            alice.click("#resume-confirm")
            alice.wait_for_selector("#pilot-state:has-text('active')")
            with ctx.store.session() as s:
                assert not is_paused(s)
        ctx.close()
