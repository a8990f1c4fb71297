"""Slack: approval requests with buttons, their outcome, progress in the thread, and a daily report.

A thin layer over slack-sdk's ``WebClient`` (``base_url`` from settings, a local fake in tests). Every Slack or
network failure is translated at this boundary into ``tools.errors.NotificationError``: a notifier failure must
never take a decision down with it, so callers catch that one error and carry on (the CLI stays the fallback).

The Approve / Reject buttons carry the approval id as their ``value`` (action ids ``approve`` / ``reject``);
the interactivity endpoint (pilot/service/slack_actions.py) binds the click to that id and to its cost ceiling.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from tools.errors import NotificationError

logger = logging.getLogger(__name__)

APPROVE_ACTION = "approve"
REJECT_ACTION = "reject"
ACTIONS_BLOCK = "approval_actions"


@dataclass(frozen=True)
class SlackMessage:
    """Where a posted message lives (``ts`` is Slack's message id within the channel)."""

    channel: str
    ts: str


@dataclass(frozen=True)
class ApprovalRequest:
    """Everything the approver needs to say yes or no without opening another tool."""

    approval_id: str
    kind: str  # training | promotion
    what: str
    why: str
    cost_ceiling_usd: float
    expires_at: datetime
    dataset: str = ""  # counts, domains, what changed since last time
    offer: str = ""  # chosen GPU offer and price
    eval_plan: str = ""
    rollback_plan: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}


def approval_blocks(req: ApprovalRequest, *, outcome: str | None = None) -> list[dict[str, Any]]:
    """Block Kit for the request; with ``outcome`` the buttons are replaced by the answer (no second click)."""
    fields = [
        ("Why", req.why),
        ("Cost ceiling (the most it may spend)", f"${req.cost_ceiling_usd:.2f}"),
        ("Dataset", req.dataset),
        ("Offer", req.offer),
        ("Evaluation plan", req.eval_plan),
        ("Rollback plan", req.rollback_plan),
        *req.extra.items(),
    ]
    body = "\n".join(f"*{name}:* {value}" for name, value in fields if value)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Approval needed: {req.what}"[:150]}},
        _section(body),
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"`{req.approval_id}` ({req.kind}) · expires {req.expires_at:%Y-%m-%d %H:%M} UTC · "
                    f"denied by default when unanswered · CLI: `learning-pilot approve {req.approval_id}`",
                }
            ],
        },
    ]
    if outcome is None:
        blocks.append(
            {
                "type": "actions",
                "block_id": ACTIONS_BLOCK,
                "elements": [
                    {
                        "type": "button",
                        "action_id": APPROVE_ACTION,
                        "text": {"type": "plain_text", "text": "Approve"},
                        "style": "primary",
                        "value": req.approval_id,
                    },
                    {
                        "type": "button",
                        "action_id": REJECT_ACTION,
                        "text": {"type": "plain_text", "text": "Reject"},
                        "style": "danger",
                        "value": req.approval_id,
                    },
                ],
            }
        )
    else:
        blocks.append(_section(f"*Outcome:* {outcome}"))
    return blocks


class SlackNotifier:
    """Posts to one channel through the Slack Web API. Raises NotificationError on any failure."""

    def __init__(self, token: str, base_url: str, channel: str, *, timeout: int = 10) -> None:
        self.channel = channel
        self._client = WebClient(token=token, base_url=base_url, timeout=timeout)

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._client.api_call(method, json=kwargs)
        except SlackApiError as exc:
            raise NotificationError(f"Slack {method} failed: {exc.response.get('error', exc)}") from exc
        except (SlackClientError, OSError) as exc:
            raise NotificationError(f"Slack {method} failed: {exc.__class__.__name__}: {exc}") from exc
        data = response.data if isinstance(response.data, dict) else {}
        if not data.get("ok"):
            raise NotificationError(f"Slack {method} failed: {data.get('error', 'no ok in the answer')}")
        return data

    def post_approval(self, req: ApprovalRequest) -> SlackMessage:
        data = self._call(
            "chat.postMessage",
            channel=self.channel,
            text=f"Approval needed: {req.what} (${req.cost_ceiling_usd:.2f}) — {req.approval_id}",
            blocks=approval_blocks(req),
        )
        return SlackMessage(str(data["channel"]), str(data["ts"]))

    def update_approval(self, message: SlackMessage, req: ApprovalRequest, outcome: str) -> None:
        """Replace the buttons by the outcome and who gave it."""
        self._call(
            "chat.update",
            channel=message.channel,
            ts=message.ts,
            text=f"{req.what}: {outcome}",
            blocks=approval_blocks(req, outcome=outcome),
        )

    def post_progress(self, message: SlackMessage, text: str) -> SlackMessage:
        """A reply in the approval's thread (run started, finished, promoted...)."""
        data = self._call("chat.postMessage", channel=message.channel, thread_ts=message.ts, text=text)
        return SlackMessage(str(data["channel"]), str(data["ts"]))

    def post(self, text: str, *, channel: str | None = None) -> SlackMessage:
        data = self._call("chat.postMessage", channel=channel or self.channel, text=text)
        return SlackMessage(str(data["channel"]), str(data["ts"]))

    def post_report(self, title: str, lines: Sequence[str], *, channel: str | None = None) -> SlackMessage:
        """The daily report: a header and one line per figure."""
        blocks = [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            _section("\n".join(lines) or "nothing to report"),
        ]
        data = self._call("chat.postMessage", channel=channel or self.channel, text=title, blocks=blocks)
        return SlackMessage(str(data["channel"]), str(data["ts"]))
