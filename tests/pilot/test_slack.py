"""Slack approvals: signed clicks accepted; every bad input refused with an event and nothing changed;
reminders and expiry; the round trip post -> signed click -> run_cycle resumes -> message updated."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from pilot.context import PilotContext, build_context
from pilot.service.api import create_app
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import Approval, Decision, Event, utcnow
from pilot.store.status import ApprovalKind, ApprovalStatus
from pilot.supervisor import approvals, notify
from tests import factories
from tools.slack_fake import FakeSlack

SECRET = "test-signing-secret"
APPROVER = "U0APPROVER"


def sign(body: bytes, *, ts: int | None = None, secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    digest = hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


def click(approval_id: str, *, action: str = "approve", user: str = APPROVER, ceiling: float | None = None) -> bytes:
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user},
        "actions": [{"action_id": action, "value": approval_id, "block_id": "approval_actions"}],
    }
    if ceiling is not None:
        payload["message"] = {"blocks": [{"type": "section", "text": {"text": f"*Cost ceiling:* ${ceiling:.2f}"}}]}
    return urlencode({"payload": json.dumps(payload)}).encode()


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def settings(make_settings: Callable[..., Settings], slack: FakeSlack) -> Settings:
    return make_settings(
        gpu={"provider": "fake"},
        slack={
            "enabled": True,
            "bot_token": slack.token,
            "base_url": slack.base_url,
            "signing_secret": SECRET,
            "approvers": [APPROVER],
            "reminder_before_expiry_minutes": 30,
        },
    )


@pytest.fixture
def ctx(store: Store, settings: Settings) -> PilotContext:
    return build_context(settings, store=store)


@pytest.fixture
def client(ctx: PilotContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx)) as c:
        yield c


def _approval(ctx: PilotContext, *, expiry_minutes: float = 60, ceiling: float = 1.5) -> str:
    with ctx.store.session(write=True) as session:
        decision = factories.decision(session)
        approval = approvals.request_approval(
            session,
            decision=decision,
            kind=ApprovalKind.TRAINING,
            summary={"what": "LoRA fine-tune", "why": "new data", "plan": {"gpu": "RTX 4090", "dph": 0.4}},
            cost_ceiling_usd=ceiling,
            expiry_minutes=expiry_minutes,
        )
    return approval.id


def _status(ctx: PilotContext, approval_id: str) -> str:
    with ctx.store.session() as session:
        approval = session.get(Approval, approval_id)
        assert approval is not None
        return str(approval.status)


def _refusals(ctx: PilotContext) -> list[Event]:
    with ctx.store.session() as session:
        return list(session.exec(select(Event).where(Event.entity_type == "slack_action").order_by(col(Event.id))))


def test_a_signed_click_by_an_approver_answers_and_updates_the_message(
    client: TestClient, ctx: PilotContext, slack: FakeSlack
) -> None:
    approval_id = _approval(ctx)
    message = notify.notify_approval_requested(ctx, approval_id)
    assert message is not None
    assert notify.notify_approval_requested(ctx, approval_id) == message  # posted once
    body = click(approval_id, ceiling=1.5)
    answer = client.post("/slack/actions", content=body, headers=sign(body))
    assert answer.status_code == 200
    with ctx.store.session() as session:
        approval = session.get(Approval, approval_id)
        assert approval is not None and approval.status == ApprovalStatus.APPROVED
        assert approval.decided_by == f"human:slack:{APPROVER}" and "$1.50" in (approval.note or "")
    [update] = slack.calls_to("chat.update")
    assert update.body["ts"] == message.ts and f"approved by human:slack:{APPROVER}" in str(update.body["blocks"])


def _refused_case(name: str, ctx: PilotContext, approval_id: str) -> tuple[bytes, dict[str, str]]:
    body = click(approval_id)
    match name:
        case "forged signature":
            return body, sign(body, secret="not-the-secret")
        case "tampered body":
            return click(approval_id, action="approve", user="U0OTHER"), sign(body)
        case "stale timestamp":
            return body, sign(body, ts=int(time.time()) - 301)
        case "future timestamp":
            return body, sign(body, ts=int(time.time()) + 301)
        case "missing headers":
            return body, {"Content-Type": "application/x-www-form-urlencoded"}
        case "not an approver":
            other = click(approval_id, user="U0INTRUDER")
            return other, sign(other)
        case "unknown approval":
            other = click("apv-nope")
            return other, sign(other)
        case "ceiling mismatch":
            other = click(approval_id, ceiling=0.5)
            return other, sign(other)
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("forged signature", 401),
        ("tampered body", 401),
        ("stale timestamp", 401),
        ("future timestamp", 401),
        ("missing headers", 401),
        ("not an approver", 403),
        ("unknown approval", 403),
        ("ceiling mismatch", 409),
    ],
)
def test_bad_clicks_are_refused_recorded_and_change_nothing(
    client: TestClient, ctx: PilotContext, slack: FakeSlack, case: str, code: int
) -> None:
    approval_id = _approval(ctx)
    body, headers = _refused_case(case, ctx, approval_id)
    answer = client.post("/slack/actions", content=body, headers=headers)
    assert answer.status_code == code, answer.text
    assert _status(ctx, approval_id) == ApprovalStatus.PENDING
    [event] = _refusals(ctx)
    assert event.reason.startswith("refused: ") and event.data["status_code"] == code
    assert slack.calls_to("chat.update") == []


def test_a_replayed_click_is_refused(client: TestClient, ctx: PilotContext) -> None:
    first, second = _approval(ctx), _approval(ctx)
    body = click(first, action="reject")
    headers = sign(body)
    assert client.post("/slack/actions", content=body, headers=headers).status_code == 200
    assert _status(ctx, first) == ApprovalStatus.REJECTED
    replay = client.post("/slack/actions", content=body, headers=headers)
    assert replay.status_code == 401 and "replayed" in replay.json()["error"]
    assert _status(ctx, second) == ApprovalStatus.PENDING
    assert [e.reason for e in _refusals(ctx)] == ["refused: replayed request (this signature was already used)"]


def test_an_expired_or_answered_approval_cannot_be_clicked(client: TestClient, ctx: PilotContext) -> None:
    expired = _approval(ctx, expiry_minutes=0.0001)
    time.sleep(0.05)
    body = click(expired)
    answer = client.post("/slack/actions", content=body, headers=sign(body))
    assert answer.status_code == 403 and "expired" in answer.json()["error"]
    assert _status(ctx, expired) == ApprovalStatus.PENDING  # the expiry job denies it, not the click
    answered = _approval(ctx)
    with ctx.store.session(write=True) as session:
        approvals.answer(session, answered, approve=False, actor="human:cli")
    body = click(answered)
    answer = client.post("/slack/actions", content=body, headers=sign(body))
    assert answer.status_code == 409 and _status(ctx, answered) == ApprovalStatus.REJECTED


def test_no_signing_secret_means_the_endpoint_is_off(store: Store, make_settings: Callable[..., Settings]) -> None:
    ctx = build_context(make_settings(slack={"approvers": [APPROVER]}), store=store)
    approval_id = _approval(ctx)
    body = click(approval_id)
    with TestClient(create_app(ctx)) as c:
        assert c.post("/slack/actions", content=body, headers=sign(body)).status_code == 403
    assert _status(ctx, approval_id) == ApprovalStatus.PENDING


def test_reminder_once_before_expiry_then_denied_by_default(ctx: PilotContext, slack: FakeSlack) -> None:
    soon = _approval(ctx, expiry_minutes=20)  # inside the 30-minute reminder window
    later = _approval(ctx, expiry_minutes=600)
    notify.notify_approval_requested(ctx, soon)
    assert notify.remind_due(ctx) == [soon]
    assert notify.remind_due(ctx) == []  # once
    reminder = slack.calls_to("chat.postMessage")[-1]
    assert "Reminder" in reminder.body["text"] and reminder.body.get("thread_ts")
    assert notify.expire_and_notify(ctx) == []
    with ctx.store.session(write=True) as session:
        row = session.get(Approval, soon)
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    assert notify.expire_and_notify(ctx) == [soon]
    assert _status(ctx, soon) == ApprovalStatus.EXPIRED and _status(ctx, later) == ApprovalStatus.PENDING
    assert "denied by default" in str(slack.calls_to("chat.update")[-1].body["blocks"])


def test_notify_is_a_no_op_with_slack_off(store: Store, make_settings: Callable[..., Settings]) -> None:
    ctx = build_context(make_settings(), store=store)
    approval_id = _approval(ctx)
    assert notify.notify_approval_requested(ctx, approval_id) is None
    assert notify.notify_outcome(ctx, approval_id) is False
    assert notify.send_daily_report(ctx) is False


def test_daily_report_posts_spend_against_caps(ctx: PilotContext, slack: FakeSlack) -> None:
    assert notify.send_daily_report(ctx)
    text = str(slack.calls_to("chat.postMessage")[-1].body["blocks"])
    assert "Spend today" in text and "$50.00" in text


def test_round_trip_post_click_resume_after_restart_message_updated(
    store: Store, make_settings: Callable[..., Settings], slack: FakeSlack
) -> None:
    """The whole path: a cycle asks, Slack shows it, a signed click answers, a restarted daemon's cycle resumes
    the waiting LangGraph thread, and the message shows the outcome and who gave it."""
    from pilot.data.ingest import ingest_lines
    from pilot.store.models import TrainingRun
    from pilot.supervisor.cycle import run_cycle

    settings = make_settings(
        gpu={"provider": "fake"},
        policy={"min_new_examples": 5, "approval_required_above_usd": 0},
        training={"poll_interval_s": 0.01},
        slack={
            "enabled": True,
            "bot_token": slack.token,
            "base_url": slack.base_url,
            "signing_secret": SECRET,
            "approvers": [APPROVER],
        },
    )
    ctx = build_context(settings, store=store)
    lines = [
        factories.record_line(
            domain=("python-naming", "sql")[i % 2], prompt=f"Task {i}: rename thing {i * 7919}", output=f"out_{i * 31}"
        )
        for i in range(40)
    ]
    ingest_lines(store, lines, source="test")
    [first] = run_cycle(ctx, ingest=False)
    approval_id = first.waiting_on
    assert approval_id is not None
    message = notify.notify_approval_requested(ctx, approval_id)  # the graph's request_approval node calls this
    assert message is not None
    posted = slack.calls_to("chat.postMessage")[0]
    with store.session() as s:
        chosen_gpu = s.get(Decision, s.get(Approval, approval_id).decision_id).figures["plan"]["gpu"]  # type: ignore[union-attr]
    assert approval_id in str(posted.body["blocks"]) and chosen_gpu in str(posted.body["blocks"])

    with TestClient(create_app(ctx)) as c:
        body = click(approval_id, ceiling=_ceiling(ctx, approval_id))
        assert c.post("/slack/actions", content=body, headers=sign(body)).status_code == 200
    update = slack.calls_to("chat.update")[-1]
    assert update.body["ts"] == message.ts and f"approved by human:slack:{APPROVER}" in str(update.body["blocks"])

    restarted = Store(store.url)  # a daemon restart between the click and the resume
    try:
        results = run_cycle(build_context(settings, store=restarted), ingest=False)
    finally:
        restarted.close()
    resumed = next(r for r in results if r.thread_id == first.thread_id)
    assert resumed.resumed
    with store.session() as session:
        decision = session.exec(select(Decision).where(Decision.thread_id == first.thread_id)).one()
        run = session.exec(select(TrainingRun).where(TrainingRun.decision_id == decision.id)).one()
    assert decision.finished_at is not None
    assert run.approval_id == approval_id  # the approved decision trained (the fake job writes no adapter)


def _ceiling(ctx: PilotContext, approval_id: str) -> float:
    with ctx.store.session() as session:
        approval = session.get(Approval, approval_id)
        assert approval is not None
        return round(approval.cost_ceiling_usd, 2)
