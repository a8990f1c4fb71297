"""Slack interactivity: an Approve / Reject click becomes ``pilot.supervisor.approvals.answer`` — or is refused.

The body is at most a few KB (the API refuses a larger one, 413, before reading it, pilot/service/api.py) and
is parsed only after its signature is verified. Checks, in order; the first that fails answers 401/403/409,
writes a ``slack_action`` event naming why (sampled for the unsigned ones, 1-4, which anyone can send: counted
in ``learning_pilot_api_refusals_total``, pilot/service/api_guard.py), and changes nothing else:

1. Slack is configured with a signing secret (else 403: the endpoint is off);
2. the timestamp is within 5 minutes of now (401: stale, a replay window closed);
3. the signature (``v0=HMAC-SHA256(secret, "v0:{ts}:{body}")``, slack_sdk's ``SignatureVerifier``) matches (401);
4. the (timestamp, signature) pair was never seen before (401: replay). Seen pairs are remembered in the store
   (``pilot_state`` rows ``slack-seen:<digest>``, a primary key, so two daemons cannot both accept one click),
   and forgotten after the 5-minute window, when the timestamp check alone refuses them;
5. the payload is a ``block_actions`` click on our ``approve`` / ``reject`` button (400 otherwise);
6. the user is on ``slack.approvers`` (403);
7. the approval exists, is pending and not expired (403 / 409), and the cost ceiling shown in the clicked
   message is the one in the store (409: the click is bound to the ceiling the human saw).

Then the answer is committed (actor ``human:slack:<user id>``, note naming the ceiling) and the message is
updated with the outcome. The waiting LangGraph thread is resumed by the next cycle, in whichever daemon runs
it, so a click survives a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from slack_sdk.signature import SignatureVerifier
from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from pilot.context import PilotContext
from pilot.errors import ConflictError, NotFound
from pilot.service.api_guard import RefusalLog
from pilot.store.models import Approval, PilotState, utcnow
from pilot.store.status import ApprovalStatus, EntityType
from pilot.store.writers import record_event
from pilot.supervisor import approvals
from tools.slack import APPROVE_ACTION, REJECT_ACTION

logger = logging.getLogger(__name__)

WINDOW_S = 5 * 60
SEEN_PREFIX = "slack-seen:"
_CEILING = re.compile(r"Cost ceiling:\*\s*\$([0-9]+(?:\.[0-9]+)?)")


@dataclass(frozen=True)
class ActionResult:
    status_code: int
    message: str
    approval_id: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status_code == 200


class _Clock:
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def _refuse(
    ctx: PilotContext, code: int, why: str, *, approval_id: str | None = None, user: str | None = None
) -> ActionResult:
    logger.warning("Refused a Slack action (%s) for approval %s from %s: %s", code, approval_id, user, why)
    with ctx.store.session(write=True) as session:
        record_event(
            session,
            entity_type=EntityType.SLACK_ACTION,
            entity_id=approval_id or "unknown",
            actor=f"slack:{user}" if user else "anonymous",
            reason=f"refused: {why}",
            data={"status_code": code},
        )
    return ActionResult(code, why, approval_id)


def _remember(ctx: PilotContext, timestamp: str, signature: str, now: float) -> bool:
    """True the first time this (timestamp, signature) is seen; False for a replay."""
    digest = hashlib.sha256(f"{timestamp}:{signature}".encode()).hexdigest()[:40]
    cutoff = utcnow() - timedelta(seconds=2 * WINDOW_S)
    try:
        with ctx.store.session(write=True) as session:
            session.execute(
                delete(PilotState).where(
                    col(PilotState.key).startswith(SEEN_PREFIX), col(PilotState.updated_at) < cutoff
                )
            )
            session.execute(
                insert(PilotState).values(key=SEEN_PREFIX + digest, value=str(int(now)), updated_at=utcnow())
            )
    except IntegrityError:
        return False
    return True


def _payload(body: bytes) -> dict[str, Any] | None:
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True)
        data = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError):
        return None
    return data if isinstance(data, dict) else None


def _shown_ceiling(payload: Mapping[str, Any]) -> float | None:
    """The cost ceiling the clicked message showed, if the payload carries the message."""
    text = json.dumps(payload.get("message", {}).get("blocks", []))
    match = _CEILING.search(text.replace("\\n", "\n"))
    return float(match.group(1)) if match else None


def handle_action(
    ctx: PilotContext,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
    refusals: RefusalLog | None = None,
) -> ActionResult:
    """Verify and carry out one interactivity request (the raw body, as Slack signed it)."""
    now = time.time() if now is None else now
    slack = ctx.settings.slack
    if refusals is None:
        refusals = RefusalLog(ctx.store, None, every_s=0.0)

    def unsigned(code: int, why: str) -> ActionResult:
        logger.warning("Refused an unsigned Slack action (%s): %s", code, why)
        refusals.record(
            "/slack/actions",
            code,
            why,
            client="slack?",
            actor="anonymous",
            entity_type=EntityType.SLACK_ACTION,
            entity_id="unknown",
        )
        return ActionResult(code, why)

    if slack.signing_secret is None or not slack.signing_secret.get_secret_value():
        return unsigned(403, "Slack interactivity is not configured (no signing secret)")
    lower = {k.lower(): v for k, v in headers.items()}
    timestamp = lower.get("x-slack-request-timestamp", "")
    signature = lower.get("x-slack-signature", "")
    if not timestamp.isdigit() or not signature:
        return unsigned(401, "missing Slack signature headers")
    if abs(now - int(timestamp)) > WINDOW_S:
        return unsigned(401, f"stale timestamp (the window is {WINDOW_S} s)")
    verifier = SignatureVerifier(slack.signing_secret.get_secret_value(), clock=_Clock(now))  # type: ignore[arg-type]
    if not verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
        return unsigned(401, "invalid signature")
    if not _remember(ctx, timestamp, signature, now):
        return unsigned(401, "replayed request (this signature was already used)")
    payload = _payload(body)
    if payload is None or payload.get("type") != "block_actions" or not payload.get("actions"):
        return _refuse(ctx, 400, "not a block_actions payload")
    user = str((payload.get("user") or {}).get("id") or "")
    action = payload["actions"][0]
    action_id, approval_id = action.get("action_id"), str(action.get("value") or "")
    if action_id not in (APPROVE_ACTION, REJECT_ACTION) or not approval_id:
        return _refuse(ctx, 400, f"unknown action {action_id!r}", user=user or None)
    if user not in slack.approvers:
        return _refuse(ctx, 403, f"user {user or '?'} is not on the approvers list", approval_id=approval_id, user=user)
    with ctx.store.session() as session:
        approval = session.get(Approval, approval_id)
    if approval is None:
        return _refuse(ctx, 403, f"no approval {approval_id!r}", approval_id=approval_id, user=user)
    if approval.status != ApprovalStatus.PENDING:
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        return _refuse(ctx, 409, f"approval already {approval.status}{by}", approval_id=approval_id, user=user)
    if approval.expires_at <= utcnow():
        return _refuse(
            ctx,
            403,
            f"approval expired at {approval.expires_at:%Y-%m-%d %H:%M} UTC",
            approval_id=approval_id,
            user=user,
        )
    shown = _shown_ceiling(payload)
    if shown is not None and abs(shown - round(approval.cost_ceiling_usd, 2)) > 0.005:
        return _refuse(
            ctx,
            409,
            f"the message showed a ${shown:.2f} ceiling, the approval is bound to ${approval.cost_ceiling_usd:.2f}",
            approval_id=approval_id,
            user=user,
        )
    approve = action_id == APPROVE_ACTION
    note = f"via Slack; bound to cost ceiling ${approval.cost_ceiling_usd:.2f}"
    try:
        with ctx.store.session(write=True) as session:
            answered = approvals.answer(session, approval_id, approve=approve, actor=f"human:slack:{user}", note=note)
    except (ConflictError, NotFound) as exc:
        return _refuse(ctx, 409, str(exc), approval_id=approval_id, user=user)
    from pilot.supervisor.notify import notify_outcome

    notify_outcome(ctx, approval_id)
    verb = "approved" if approve else "rejected"
    logger.info("Approval %s %s in Slack by %s", approval_id, verb, user)
    return ActionResult(200, f"{answered.id} {verb} by {answered.decided_by}", approval_id)
