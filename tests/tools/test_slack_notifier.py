"""SlackNotifier through the real slack-sdk WebClient against the local fake Slack Web API."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tools.errors import NotificationError
from tools.slack import APPROVE_ACTION, REJECT_ACTION, ApprovalRequest, SlackNotifier
from tools.slack_fake import CHANNEL_ID, FakeSlack

REQ = ApprovalRequest(
    approval_id="apv-1234",
    kind="training",
    what="LoRA fine-tune",
    why="240 new curated examples",
    cost_ceiling_usd=1.25,
    expires_at=datetime(2026, 11, 2, 9, 30, tzinfo=UTC),
    dataset="snapshot `snap-1`: 200 train / 20 eval / 30 golden",
    offer="RTX 4090 (offer 7) at $0.400/h for ~2.00 h",
    eval_plan="paired bootstrap on the golden split",
    rollback_plan="previous champion stays registered",
)


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


def test_approval_message_carries_everything_and_the_buttons(fake: FakeSlack) -> None:
    notifier = SlackNotifier(fake.token, fake.base_url, "#ops")
    message = notifier.post_approval(REQ)
    assert message.channel == CHANNEL_ID and message.ts
    [call] = fake.calls_to("chat.postMessage")
    assert call.body["channel"] == "#ops"
    text = str(call.body["blocks"])
    for expected in ("LoRA fine-tune", "$1.25", "snap-1", "RTX 4090", "paired bootstrap", "previous champion", "09:30"):
        assert expected in text
    [actions] = [b for b in call.body["blocks"] if b["type"] == "actions"]
    assert [(e["action_id"], e["value"]) for e in actions["elements"]] == [
        (APPROVE_ACTION, "apv-1234"),
        (REJECT_ACTION, "apv-1234"),
    ]


def test_update_replaces_buttons_with_the_outcome_and_progress_goes_to_the_thread(fake: FakeSlack) -> None:
    notifier = SlackNotifier(fake.token, fake.base_url, "#ops")
    message = notifier.post_approval(REQ)
    notifier.update_approval(message, REQ, "approved by human:slack:U1")
    notifier.post_progress(message, "run run-1 launched")
    [update] = fake.calls_to("chat.update")
    assert update.body["ts"] == message.ts and update.body["channel"] == message.channel
    assert not [b for b in update.body["blocks"] if b["type"] == "actions"]
    assert "approved by human:slack:U1" in str(update.body["blocks"])
    progress = fake.calls_to("chat.postMessage")[-1]
    assert progress.body["thread_ts"] == message.ts and progress.body["text"] == "run run-1 launched"
    report = notifier.post_report("Daily", ["*Spend today:* $1.00"], channel="#reports")
    assert report.ts and fake.calls_to("chat.postMessage")[-1].body["channel"] == "#reports"


def test_failures_become_notification_errors(fake: FakeSlack) -> None:
    with pytest.raises(NotificationError, match="invalid_auth"):
        SlackNotifier("xoxb-wrong", fake.base_url, "#ops").post("hi")
    notifier = SlackNotifier(fake.token, fake.base_url, "#ops")
    fake.fail_next("ratelimited")
    with pytest.raises(NotificationError, match="ratelimited"):
        notifier.post("hi")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(NotificationError, match=r"chat\.postMessage failed"):
        SlackNotifier(fake.token, f"http://127.0.0.1:{port}/api/", "#ops", timeout=2).post("hi")
