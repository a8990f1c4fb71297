"""Approvals: a human's yes or no on a decision, bound to the decision id and its cost ceiling.

The answer is written to the store first (compare-and-set from pending, one event); the waiting graph thread is
resumed by the next cycle, in whichever process runs it, so ``learning-pilot approve`` needs no graph and works
while the daemon is down. A second answer to the same approval is refused, not silently ignored.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, select

from pilot.errors import ConflictError, NotFound
from pilot.store.models import Approval, Decision, utcnow
from pilot.store.status import ApprovalKind, ApprovalStatus, EntityType
from pilot.store.writers import record_event, switch_approval_status


def new_approval_id() -> str:
    return f"apv-{secrets.token_hex(4)}"


def request_approval(
    session: Session,
    *,
    decision: Decision,
    kind: ApprovalKind,
    summary: dict[str, Any],
    cost_ceiling_usd: float,
    expiry_minutes: float,
) -> Approval:
    """Create the pending approval for ``decision`` (idempotent: a pending one of the same decision and kind is
    reused; once answered, asking again — a price that rose past the approved ceiling — makes a new one)."""
    existing = session.exec(
        select(Approval).where(
            Approval.decision_id == decision.id,
            Approval.kind == kind.value,
            Approval.status == ApprovalStatus.PENDING,
        )
    ).first()
    if existing is not None:
        return existing
    approval = Approval(
        id=new_approval_id(),
        decision_id=decision.id,
        kind=kind,
        status=ApprovalStatus.PENDING,
        thread_id=decision.thread_id,
        summary=summary,
        cost_ceiling_usd=cost_ceiling_usd,
        expires_at=utcnow() + timedelta(minutes=expiry_minutes),
    )
    session.add(approval)
    session.flush()
    record_event(
        session,
        entity_type=EntityType.APPROVAL,
        entity_id=approval.id,
        actor="supervisor",
        reason=f"{kind} approval requested for decision {decision.id}",
        new=ApprovalStatus.PENDING,
    )
    return approval


def answer(session: Session, approval_id: str, *, approve: bool, actor: str, note: str | None = None) -> Approval:
    """Record a human's answer. Raises NotFound for an unknown id, ConflictError if already answered or expired."""
    approval = session.get(Approval, approval_id)
    if approval is None:
        raise NotFound(f"no approval {approval_id!r}")
    if approval.status != ApprovalStatus.PENDING:
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        raise ConflictError(f"approval {approval_id} was already {approval.status}{by}")
    if approval.expires_at <= utcnow():
        switch_approval_status(
            session, approval_id, ApprovalStatus.EXPIRED, actor="system", reason="expired before the answer arrived"
        )
        raise ConflictError(f"approval {approval_id} expired at {approval.expires_at:%Y-%m-%d %H:%M} UTC")
    new = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
    reason = f"{'approved' if approve else 'rejected'} by {actor}" + (f": {note}" if note else "")
    return switch_approval_status(session, approval_id, new, actor=actor, reason=reason, note=note)


def expire_due(session: Session) -> list[Approval]:
    """Deny by default every pending approval past its expiry; returns them."""
    due = session.exec(
        select(Approval).where(Approval.status == ApprovalStatus.PENDING, col(Approval.expires_at) <= utcnow())
    ).all()
    return [
        switch_approval_status(
            session, a.id, ApprovalStatus.EXPIRED, actor="system", reason="no answer before expiry: denied by default"
        )
        for a in due
    ]


def pending(session: Session) -> list[Approval]:
    return list(
        session.exec(
            select(Approval).where(Approval.status == ApprovalStatus.PENDING).order_by(col(Approval.requested_at))
        ).all()
    )
