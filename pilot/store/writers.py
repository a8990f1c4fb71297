"""The only code that changes a status, moves an alias or flips the pause flag.

Every change is a compare-and-set (``UPDATE ... WHERE id = :id AND status = :old``) along an edge of the table
in ``status.py``, and writes an ``event`` row (actor, old, new, reason) in the same transaction: the caller
passes the open session of ``Store.session(write=True)`` and the commit covers both.
Actors: ``system``, ``supervisor``, ``human:<id>``.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from sqlalchemy import update
from sqlmodel import Session, select

from pilot.errors import ConflictError, NotFound, TransitionError
from pilot.store.models import (
    AliasHistory,
    Approval,
    EvalStage,
    Event,
    ModelAlias,
    ModelVersion,
    PilotState,
    RunAttempt,
    TrainingRun,
    utcnow,
)
from pilot.store.status import (
    ApprovalStatus,
    AttemptStatus,
    EntityType,
    ModelStatus,
    RunStatus,
    RunTerminationReason,
    StageStatus,
    is_allowed,
)

E = TypeVar("E", bound=enum.StrEnum)
Row = TypeVar("Row", TrainingRun, Approval, ModelVersion, RunAttempt, EvalStage)


def record_event(
    session: Session,
    *,
    entity_type: str,
    entity_id: str,
    actor: str,
    reason: str,
    old: str | None = None,
    new: str | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    event = Event(
        entity_type=entity_type, entity_id=entity_id, actor=actor, reason=reason, old=old, new=new, data=data or {}
    )
    session.add(event)
    return event


def _switch(
    session: Session,
    table: type[Row],
    status_type: type[E],
    entity_id: str,
    new: E,
    *,
    actor: str,
    reason: str,
    expected: E | None,
    fields: dict[str, Any],
) -> Row:
    entity_type = table.__tablename__
    row = session.get(table, entity_id)
    if row is None:
        raise NotFound(f"no {entity_type} {entity_id!r}")
    old = status_type(row.status)
    if expected is not None and old != expected:
        raise ConflictError(f"{entity_type} {entity_id} is {old}, not {expected}")
    if not is_allowed(old, new):
        raise TransitionError(f"{entity_type} {entity_id}: {old} -> {new} is not allowed")
    statement = (
        update(table)
        .where(table.id == entity_id, table.status == old.value)  # type: ignore[arg-type]
        .values(status=new.value, **fields)
        .execution_options(synchronize_session=False)
    )
    if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]
        raise ConflictError(f"{entity_type} {entity_id} changed concurrently (expected {old})")
    record_event(session, entity_type=entity_type, entity_id=entity_id, actor=actor, reason=reason, old=old, new=new)
    session.flush()
    session.refresh(row)
    return row


def switch_run_status(
    session: Session,
    run_id: str,
    new: RunStatus,
    *,
    actor: str,
    reason: str,
    expected: RunStatus | None = None,
    termination_reason: RunTerminationReason | None = None,
    **fields: Any,
) -> TrainingRun:
    if termination_reason is not None:
        fields["termination_reason"] = termination_reason.value
    if new.is_terminal:
        fields.setdefault("finished_at", utcnow())
    if new is RunStatus.RUNNING:
        fields.setdefault("started_at", utcnow())
    return _switch(
        session, TrainingRun, RunStatus, run_id, new, actor=actor, reason=reason, expected=expected, fields=fields
    )


def switch_attempt_status(
    session: Session,
    attempt_id: str,
    new: AttemptStatus,
    *,
    actor: str,
    reason: str,
    expected: AttemptStatus | None = None,
    **fields: Any,
) -> RunAttempt:
    if new.is_terminal:
        fields.setdefault("ended_at", utcnow())
        fields.setdefault("end_reason", reason[:1000])
    if new is AttemptStatus.LAUNCHED:
        fields.setdefault("launched_at", utcnow())
    return _switch(
        session,
        RunAttempt,
        AttemptStatus,
        attempt_id,
        new,
        actor=actor,
        reason=reason,
        expected=expected,
        fields=fields,
    )


def switch_stage_status(
    session: Session,
    stage_id: str,
    new: StageStatus,
    *,
    actor: str,
    reason: str,
    expected: StageStatus | None = None,
    **fields: Any,
) -> EvalStage:
    if new.is_terminal:
        fields.setdefault("ended_at", utcnow())
        fields.setdefault("end_reason", reason[:1000])
    if new is StageStatus.LAUNCHED:
        fields.setdefault("launched_at", utcnow())
    return _switch(
        session, EvalStage, StageStatus, stage_id, new, actor=actor, reason=reason, expected=expected, fields=fields
    )


def switch_approval_status(
    session: Session,
    approval_id: str,
    new: ApprovalStatus,
    *,
    actor: str,
    reason: str,
    **fields: Any,
) -> Approval:
    fields.setdefault("decided_at", utcnow())
    fields.setdefault("decided_by", actor)
    return _switch(
        session,
        Approval,
        ApprovalStatus,
        approval_id,
        new,
        actor=actor,
        reason=reason,
        expected=ApprovalStatus.PENDING,
        fields=fields,
    )


def switch_model_status(
    session: Session,
    version_id: str,
    new: ModelStatus,
    *,
    actor: str,
    reason: str,
    **fields: Any,
) -> ModelVersion:
    return _switch(
        session, ModelVersion, ModelStatus, version_id, new, actor=actor, reason=reason, expected=None, fields=fields
    )


def move_alias(session: Session, alias: str, version_id: str | None, *, actor: str, reason: str) -> str | None:
    """Point ``alias`` at ``version_id`` (None clears it); returns the version it pointed at before."""
    row = session.get(ModelAlias, alias, with_for_update=True)
    old = row.version_id if row else None
    if row is None:
        session.add(ModelAlias(name=alias, version_id=version_id))
    else:
        row.version_id = version_id
        row.updated_at = utcnow()
    session.add(AliasHistory(alias=alias, old_version=old, new_version=version_id, actor=actor, reason=reason))
    record_event(
        session,
        entity_type=EntityType.MODEL_ALIAS,
        entity_id=alias,
        actor=actor,
        reason=reason,
        old=old,
        new=version_id,
    )
    session.flush()
    return old


def alias_target(session: Session, alias: str) -> str | None:
    row = session.get(ModelAlias, alias)
    return row.version_id if row else None


PAUSED_KEY = "paused"


def is_paused(session: Session) -> bool:
    row = session.exec(select(PilotState).where(PilotState.key == PAUSED_KEY)).first()
    return bool(row and row.value == "true")


def set_paused(session: Session, paused: bool, *, actor: str, reason: str) -> bool:
    """Persist the pause flag; returns the previous value. Idempotent."""
    row = session.get(PilotState, PAUSED_KEY, with_for_update=True)
    previous = bool(row and row.value == "true")
    value = "true" if paused else "false"
    if row is None:
        session.add(PilotState(key=PAUSED_KEY, value=value))
    else:
        row.value = value
        row.updated_at = utcnow()
    if previous != paused:
        record_event(
            session,
            entity_type=EntityType.PILOT,
            entity_id="pilot",
            actor=actor,
            reason=reason,
            old="paused" if previous else "active",
            new="paused" if paused else "active",
        )
    session.flush()
    return previous
