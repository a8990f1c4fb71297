"""Telling humans: approval requests, their outcomes, progress, reminders, the daily report, incidents.

Invariants:

- Notifying never decides anything and never fails a decision: every Slack failure (``NotificationError``) is
  logged with the approval id and swallowed; with Slack off (``slack.enabled = false`` or no token) every
  function is a no-op and the CLI (``learning-pilot approve ID``) is the channel.
- Where a message was posted is remembered in the store as an event (``entity_type = "slack_message"``,
  ``entity_id = <approval id>``, ``data = {"channel", "ts"}``), so the outcome updates the right message after
  a daemon restart and in whichever daemon handles the click.
- A reminder is sent at most once per approval (an ``approval`` event with ``data.reminder = true`` marks it),
  ``slack.reminder_before_expiry_minutes`` before expiry; then ``approvals.expire_due`` denies by default.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from pilot.context import PilotContext
from pilot.settings import Settings
from pilot.spend.ledger import spend_summary
from pilot.store.models import Approval, DatasetSnapshot, Decision, Event, TrainingRun, utcnow
from pilot.store.status import ApprovalStatus, EntityType
from pilot.store.writers import record_event
from pilot.supervisor import approvals
from subagents.methods import describe_method
from tools.errors import NotificationError
from tools.slack import ApprovalRequest, SlackMessage, SlackNotifier

logger = logging.getLogger(__name__)

MESSAGE_ENTITY = "slack_message"


def make_notifier(settings: Settings) -> SlackNotifier | None:
    """The Slack notifier, or None when Slack is off or has no bot token."""
    slack = settings.slack
    if not slack.enabled or slack.bot_token is None:
        return None
    return SlackNotifier(slack.bot_token.get_secret_value(), slack.base_url, slack.channel)


def approval_request(session: Any, approval: Approval) -> ApprovalRequest:
    """The Slack view of an approval: what, why, cost, dataset, offer, evaluation and rollback plans."""
    summary = approval.summary or {}
    plan = summary.get("plan") or {}
    dataset = ""
    snapshot_id = summary.get("snapshot")
    if snapshot_id:
        snap = session.get(DatasetSnapshot, snapshot_id)
        if snap is not None:
            domains = snap.manifest.get("domains") or snap.manifest.get("per_domain") or {}
            dataset = (
                f"snapshot `{snap.id}`: {snap.train_count} train / {snap.eval_count} eval / {snap.golden_count} golden"
            )
            if domains:
                dataset += f"; domains {domains}"
        else:
            dataset = f"snapshot `{snapshot_id}`"
    decision = session.get(Decision, approval.decision_id)
    if decision is not None and decision.figures.get("new_examples") is not None:
        dataset += f"{'; ' if dataset else ''}{decision.figures['new_examples']} new curated examples since last time"
        if decision.figures.get("per_domain_new"):
            dataset += f" {decision.figures['per_domain_new']}"
    offer = ""
    if plan:
        offer = (
            f"{plan.get('gpu', '?')} (offer {plan.get('offer', '?')}) at ${float(plan.get('dph', 0.0)):.3f}/h "
            f"for ~{float(plan.get('expected_hours', 0.0)):.2f} h, "
            f"estimated ${float(plan.get('estimated_cost_usd', 0.0)):.2f}"
        )
    return ApprovalRequest(
        approval_id=approval.id,
        kind=str(approval.kind),
        what=str(summary.get("what") or approval.kind),
        why=str(summary.get("why") or ""),
        cost_ceiling_usd=float(approval.cost_ceiling_usd),
        expires_at=approval.expires_at,
        dataset=dataset,
        offer=offer,
        eval_plan=str(summary.get("eval_plan") or ""),
        rollback_plan=str(summary.get("rollback_plan") or ""),
        extra={**_method_lines(plan), **_agent_lines(decision)},
    )


def _method_lines(plan: dict[str, Any]) -> dict[str, str]:
    """The training method and the data it learns from (pairs, failures, prompts with tests)."""
    if not plan.get("method"):
        return {}
    m = describe_method(plan)
    return {"Method": f"{m['method']}: {m['data']} (priced at {m['cost_factor']:g}x supervised GPU time)"}


def _agent_lines(decision: Decision | None) -> dict[str, str]:
    """The supervisor agent's rationale, when a model took part in the decision."""
    if decision is None or not decision.rationale:
        return {}
    agent = decision.figures.get("agent") or {}
    lines = {"Agent's rationale": decision.rationale[:1500]}
    if agent.get("fallback"):
        lines["Agent fallback"] = str(agent["fallback"])[:300]
    return lines


def approval_message(ctx: PilotContext, approval_id: str) -> SlackMessage | None:
    """Where the approval's Slack message is, if one was posted."""
    with ctx.store.session() as session:
        event = session.exec(
            select(Event)
            .where(Event.entity_type == MESSAGE_ENTITY, Event.entity_id == approval_id)
            .order_by(col(Event.id).desc())
        ).first()
    if event is None or "ts" not in event.data:
        return None
    return SlackMessage(str(event.data["channel"]), str(event.data["ts"]))


def notify_approval_requested(ctx: PilotContext, approval_id: str) -> SlackMessage | None:
    """Post the approval request (once). Call right after ``approvals.request_approval`` committed."""
    notifier = make_notifier(ctx.settings)
    if notifier is None:
        return None
    existing = approval_message(ctx, approval_id)
    if existing is not None:
        return existing
    with ctx.store.session() as session:
        approval = session.get(Approval, approval_id)
        if approval is None or approval.status != ApprovalStatus.PENDING:
            return None
        request = approval_request(session, approval)
    try:
        message = notifier.post_approval(request)
    except NotificationError as exc:
        logger.warning("Could not post approval %s to Slack (the CLI still works): %s", approval_id, exc)
        return None
    with ctx.store.session(write=True) as session:
        record_event(
            session,
            entity_type=MESSAGE_ENTITY,
            entity_id=approval_id,
            actor="system",
            reason=f"approval request posted to Slack {message.channel}",
            data={"channel": message.channel, "ts": message.ts},
        )
    return message


def describe_outcome(approval: Approval) -> str:
    by = approval.decided_by or "system"
    match ApprovalStatus(approval.status):
        case ApprovalStatus.APPROVED:
            return f":white_check_mark: approved by {by}"
        case ApprovalStatus.REJECTED:
            return f":x: rejected by {by}"
        case ApprovalStatus.EXPIRED:
            return ":hourglass: expired without an answer: denied by default"
        case ApprovalStatus.CANCELLED:
            return f":octagonal_sign: cancelled by {by}" + (f" ({approval.note})" if approval.note else "")
        case ApprovalStatus.PENDING:
            return "waiting for an answer"


def notify_outcome(ctx: PilotContext, approval_id: str, outcome: str | None = None) -> bool:
    """Update the approval's message with its outcome and who gave it (``outcome`` overrides the text)."""
    notifier = make_notifier(ctx.settings)
    if notifier is None:
        return False
    message = approval_message(ctx, approval_id)
    if message is None:
        return False
    with ctx.store.session() as session:
        approval = session.get(Approval, approval_id)
        if approval is None:
            return False
        request = approval_request(session, approval)
        text = outcome or describe_outcome(approval)
    try:
        notifier.update_approval(message, request, text)
    except NotificationError as exc:
        logger.warning("Could not update the Slack message of approval %s: %s", approval_id, exc)
        return False
    return True


def notify_progress(ctx: PilotContext, approval_id: str, text: str) -> bool:
    """A line in the approval's thread (run launched, finished, candidate promoted or rejected)."""
    notifier = make_notifier(ctx.settings)
    message = approval_message(ctx, approval_id) if notifier is not None else None
    if notifier is None or message is None:
        return False
    try:
        notifier.post_progress(message, text)
    except NotificationError as exc:
        logger.warning("Could not post progress of approval %s to Slack: %s", approval_id, exc)
        return False
    return True


def remind_due(ctx: PilotContext, *, now: datetime | None = None) -> list[str]:
    """Remind (once) about pending approvals that expire within ``slack.reminder_before_expiry_minutes``.

    The reminder is recorded as an event whether or not Slack is on, so ``status`` shows it as well.
    """
    now = now or utcnow()
    horizon = now + timedelta(minutes=ctx.settings.slack.reminder_before_expiry_minutes)
    with ctx.store.session() as session:
        due = session.exec(
            select(Approval).where(
                Approval.status == ApprovalStatus.PENDING,
                col(Approval.expires_at) <= horizon,
                col(Approval.expires_at) > now,
            )
        ).all()
        reminded = {
            e.entity_id
            for e in session.exec(
                select(Event).where(Event.entity_type == "approval", col(Event.entity_id).in_([a.id for a in due]))
            ).all()
            if e.data.get("reminder")
        }
    sent: list[str] = []
    for approval in due:
        if approval.id in reminded:
            continue
        minutes = max((approval.expires_at - now).total_seconds() / 60, 0.0)
        text = (
            f":bell: Reminder: approval `{approval.id}` expires in {minutes:.0f} min "
            f"({approval.expires_at:%H:%M} UTC) and will then be denied by default."
        )
        notify_progress(ctx, approval.id, text)
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type=EntityType.APPROVAL,
                entity_id=approval.id,
                actor="system",
                reason=f"reminder: expires in {minutes:.0f} min, then denied by default",
                data={"reminder": True},
            )
        sent.append(approval.id)
    return sent


def expire_and_notify(ctx: PilotContext) -> list[str]:
    """Deny by default every approval past its expiry (recorded) and update their Slack messages."""
    with ctx.store.session(write=True) as session:
        expired = [a.id for a in approvals.expire_due(session)]
    for approval_id in expired:
        logger.info("Approval %s expired: denied by default", approval_id)
        notify_outcome(ctx, approval_id)
    return expired


def daily_report_lines(ctx: PilotContext, *, now: datetime | None = None) -> list[str]:
    now = now or utcnow()
    caps = ctx.settings.budget
    since = now - timedelta(days=1)
    with ctx.store.session() as session:
        spend = spend_summary(session, now)
        runs = session.exec(
            select(TrainingRun.status, func.count())
            .where(col(TrainingRun.created_at) >= since)
            .group_by(TrainingRun.status)
        ).all()
        decisions = session.exec(
            select(Decision.action, func.count()).where(col(Decision.created_at) >= since).group_by(Decision.action)
        ).all()
        pending = len(approvals.pending(session))
    return [
        f"*Spend today:* ${spend.today_usd:.2f} of ${caps.per_day_usd:.2f}",
        f"*Spend this month:* ${spend.month_usd:.2f} of ${caps.per_month_usd:.2f}",
        f"*Runs (24 h):* {dict((str(s), int(n)) for s, n in runs) or 'none'}",
        f"*Decisions (24 h):* {dict((str(a), int(n)) for a, n in decisions) or 'none'}",
        f"*Pending approvals:* {pending}",
    ]


def send_daily_report(ctx: PilotContext, *, now: datetime | None = None) -> bool:
    notifier = make_notifier(ctx.settings)
    if notifier is None:
        return False
    lines = daily_report_lines(ctx, now=now)
    try:
        notifier.post_report(
            f"Learning Pilot daily report ({ctx.settings.env})", lines, channel=ctx.settings.slack.report_channel
        )
    except NotificationError as exc:
        logger.warning("Could not post the daily report to Slack: %s", exc)
        return False
    return True


def notify_incident(ctx: PilotContext, text: str) -> bool:
    """A top-level message in the channel (kill switch engaged, resumed)."""
    notifier = make_notifier(ctx.settings)
    if notifier is None:
        return False
    try:
        notifier.post(text)
    except NotificationError as exc:
        logger.warning("Could not post the incident notice to Slack: %s", exc)
        return False
    return True
