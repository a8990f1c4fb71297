"""Dashboard people, sessions and who may read: tokens stored as digests, revocation, bad ids, the read-only view,
sign-in required off loopback, the cookie's flags, the CLI commands, and the page queries on SQLite and
PostgreSQL (the per-day grouping differs)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from pilot.context import build_context
from pilot.dashboard import auth, queries
from pilot.dashboard.app import DashboardServices, create_standalone_app
from pilot.data.ingest import ingest_lines
from pilot.errors import ConflictError, NotFound
from pilot.service.api import create_app
from pilot.service.api_dashboard import mount_dashboard
from pilot.service.explain import explain
from pilot.settings import Settings, load_settings
from pilot.store import Store
from pilot.store.models import Approval, DashboardUser, Event, utcnow
from pilot.store.status import ApprovalKind, ApprovalStatus
from pilot.supervisor import approvals
from tests import factories
from tests.dashboard.history import DOMAINS, generate
from tests.factories import record_line
from tests.pilot.test_cli import cli


def test_a_token_is_shown_once_and_stored_as_a_digest(store: Store) -> None:
    with store.session(write=True) as s:
        token = auth.create_user(s, "alice", created_by="human:root")
    with store.session() as s:
        [row] = s.exec(select(DashboardUser)).all()
    assert token.startswith("lpd_") and token not in row.token_sha256 and row.token_sha256 == auth.digest(token)
    with store.session(write=True) as s, pytest.raises(ConflictError, match="revoke it first"):
        auth.create_user(s, "alice", created_by="human:root")


@pytest.mark.parametrize("bad", ["", "Alice", "a b", "x" * 65, "../etc", "alice;drop"])
def test_a_bad_user_id_is_refused_with_the_rule(store: Store, bad: str) -> None:
    with store.session(write=True) as s, pytest.raises(ValueError, match="invalid dashboard user id"):
        auth.create_user(s, bad, created_by="human:root")


def test_revoking_ends_the_sessions_at_once(store: Store) -> None:
    with store.session(write=True) as s:
        token = auth.create_user(s, "alice", created_by="human:root")
    with store.session(write=True) as s:
        signed = auth.sign_in(s, token, hours=1, client="127.0.0.1")
    assert signed is not None
    cookie, who = signed
    with store.session() as s:
        assert auth.lookup(s, cookie) == who
    with store.session(write=True) as s:
        auth.revoke_user(s, "alice", actor="human:root")
    with store.session(write=True) as s:
        assert auth.lookup(s, cookie) is None
        assert auth.sign_in(s, token, hours=1, client="127.0.0.1") is None
        with pytest.raises(NotFound):
            auth.revoke_user(s, "nobody", actor="human:root")
    with store.session(write=True) as s:  # a revoked id can be given a new token
        assert auth.create_user(s, "alice", created_by="human:root") != token


def _client(store: Store, settings: Settings, *, bound: str, client_host: str) -> TestClient:
    app = create_standalone_app(store, settings, DashboardServices(explain=explain), bound_host=bound)
    return TestClient(app, client=(client_host, 50000), base_url="http://dash.example")


def test_reading_needs_a_sign_in_off_loopback_and_the_cookie_is_strict(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    with store.session(write=True) as s:
        token = auth.create_user(s, "alice", created_by="human:root")
    local = _client(store, settings, bound="127.0.0.1", client_host="127.0.0.1")
    assert local.get("/dashboard/").status_code == 200  # loopback: read-only without a sign-in
    remote = _client(store, settings, bound="0.0.0.0", client_host="10.1.2.3")
    refused = remote.get("/dashboard/")
    assert refused.status_code == 401 and "sign in" in refused.text
    assert remote.get("/dashboard/events").status_code == 401
    assert remote.post("/dashboard/signin", data={"token": "lpd_wrong"}).status_code == 401
    signed = remote.post("/dashboard/signin", data={"token": token}, follow_redirects=False)
    assert signed.status_code == 303
    flags = signed.headers["set-cookie"].lower()
    assert "httponly" in flags and "samesite=strict" in flags and "secure" in flags and "path=/dashboard" in flags
    remote.cookies.set("lp_dashboard", signed.cookies["lp_dashboard"])
    assert remote.get("/dashboard/").status_code == 200
    assert (
        "secure"
        not in local.post("/dashboard/signin", data={"token": token}, follow_redirects=False)
        .headers["set-cookie"]
        .lower()
    )  # plain http on loopback: a Secure cookie would never come back


def test_the_standalone_view_is_read_only(store: Store, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(dashboard={"approvers": ["alice"]})
    with store.session(write=True) as s:
        token = auth.create_user(s, "alice", created_by="human:root")
    client = _client(store, settings, bound="127.0.0.1", client_host="127.0.0.1")
    client.post("/dashboard/signin", data={"token": token})
    page = client.get("/dashboard/")
    assert "read-only" in page.text and "kill-button" not in page.text
    refused = client.post("/dashboard/kill", data={"confirm": "kill", "csrf": "x"})
    assert refused.status_code == 403 and "read-only" in refused.text
    assert client.post("/dashboard/approvals/apv-x/approve", data={"csrf": "x"}).status_code == 403
    assert client.get("/dashboard/static/../../settings.py").status_code == 404
    assert client.get("/dashboard/runs/nope").status_code == 404


def test_the_page_queries_on_both_stores(store: Store, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    history = generate(store, days=40, records=2_000, runs=120, versions=12)
    records = queries.RecordRollup()
    with store.session() as s:
        overview = queries.overview(s, settings, records, now=history.now)
        data = queries.data_page(s, records, window_days=41, now=history.now)  # 40 days back reach into a 41st
        run = queries.run_page(s, history.in_flight[0], now=history.now)
        marker = queries.change_marker(s)
    assert len(overview["spend"]["days"]) == 30
    assert set(overview["spend"]["series"]) == {"gpu actual", "reserved", "llm"}
    assert sum(overview["spend"]["series"]["llm"]) > 0 and overview["live"]["series"]
    assert {r["id"] for r in overview["in_flight"]} == set(history.in_flight)
    assert all(r["cost_so_far_usd"] > 0 for r in overview["in_flight"])
    assert sorted(data["per_domain"]) == sorted(DOMAINS)
    assert data["records_window"] == data["records_total"] == 2_000
    assert run["run"]["status"] == "running" and run["cost"]["so_far_usd"] > 0 and run["cost"]["reserved_usd"] == 4.0
    assert marker and marker.count(":") == 4
    ingest_lines(store, [record_line(record_id="one-more", domain="sql")], source="test")  # the rollup catches up
    with store.session() as s:
        assert queries.data_page(s, records, window_days=41)["records_total"] == 2_001
        assert queries.data_page(s, queries.RecordRollup(), window_days=41)["records_total"] == 2_001


def test_the_dashboard_user_commands(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "pilot.toml"
    config.write_text(f'env = "test"\ndata_dir = "{tmp_path / "data"}"\n[dashboard]\napprovers = ["alice"]\n')
    assert cli(capsys, "-c", str(config), "init")[0] == 0
    code, out, err = cli(capsys, "-c", str(config), "dashboard-user", "create", "alice", "--by", "root")
    assert code == 0 and out.strip().startswith("lpd_") and "an approver" in err
    code, _, err = cli(capsys, "-c", str(config), "dashboard-user", "create", "Bad Id")
    assert code == 1 and "invalid dashboard user id" in err
    code, _, err = cli(capsys, "-c", str(config), "dashboard-user", "create", "alice")
    assert code == 1 and "revoke it first" in err
    code, out, _ = cli(capsys, "-c", str(config), "dashboard-user", "list")
    assert code == 0 and out.startswith("alice\tactive\tapprover")
    assert cli(capsys, "-c", str(config), "dashboard-user", "revoke", "alice")[0] == 0
    code, _, err = cli(capsys, "-c", str(config), "dashboard-user", "revoke", "nobody")
    assert code == 1 and "no dashboard user" in err
    settings = load_settings(config)
    with Store(settings.database_url).session() as s:
        assert s.get(DashboardUser, "alice").revoked_at is not None  # type: ignore[union-attr]


def test_answering_an_answered_or_expired_approval_is_refused(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(store={"url": store.url}, gpu={"provider": "fake"}, dashboard={"approvers": ["alice"]})
    with store.session(write=True) as s:
        token = auth.create_user(s, "alice", created_by="human:root")
        decision = factories.decision(s)
        ids = [
            approvals.request_approval(
                s, decision=decision, kind=kind, summary={}, cost_ceiling_usd=1.0, expiry_minutes=60
            ).id
            for kind in (ApprovalKind.TRAINING, ApprovalKind.PROMOTION)
        ]
        approvals.answer(s, ids[0], approve=False, actor="human:bob")
        expired = s.get(Approval, ids[1])
        assert expired is not None
        expired.expires_at = utcnow() - timedelta(minutes=1)
        s.add(expired)
    ctx = build_context(settings, store=store)
    app = create_app(ctx)
    mount_dashboard(app, ctx)
    client = TestClient(app, client=("127.0.0.1", 50000))
    client.post("/dashboard/signin", data={"token": token})
    match = re.search(r'name="csrf" value="([^"]+)"', client.get("/dashboard/").text)
    assert match is not None
    csrf = match.group(1)
    answered = client.post(f"/dashboard/approvals/{ids[0]}/approve", data={"csrf": csrf})
    assert answered.status_code == 409 and "already rejected by human:bob" in answered.text
    late = client.post(f"/dashboard/approvals/{ids[1]}/approve", data={"csrf": csrf})
    assert late.status_code == 409 and "expired" in late.text
    unknown = client.post("/dashboard/approvals/apv-nope/approve", data={"csrf": csrf})
    assert unknown.status_code == 404
    assert client.post(f"/dashboard/approvals/{ids[0]}/bless", data={"csrf": csrf}).status_code == 404
    with store.session() as s:
        assert s.get(Approval, ids[0]).status == ApprovalStatus.REJECTED  # type: ignore[union-attr]
    ctx.close()


def test_a_flood_of_refused_posts_and_token_guesses_writes_sampled_events(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    """Every refused write and failed sign-in used to be one event row: a flood could fill the store and hold its
    write lock. Now one event per reason per window (api.refusal_event_every_s), counting the ones it left out."""
    settings = make_settings(dashboard={"approvers": ["alice"]})
    client = _client(store, settings, bound="0.0.0.0", client_host="10.1.2.3")
    for k in range(40):
        assert client.post("/dashboard/signin", data={"token": f"lpd_guess{k}"}).status_code == 401
        assert client.post("/dashboard/kill", data={"confirm": "kill", "csrf": "forged"}).status_code in (401, 403)
    with store.session() as s:
        rows = s.exec(select(Event).where(Event.entity_type == "dashboard")).all()
    assert 2 <= len(rows) <= 3, [r.reason for r in rows]
    assert any(r.entity_id == "sign-in" and "unknown or revoked token" in r.reason for r in rows)
    assert all(r.reason.startswith("refused: ") for r in rows)
