"""The model registry: versions with lineage, and the aliases ``champion`` / ``previous`` / ``candidate``.

Promotion and rollback move aliases (never rewrite versions); every move is an ``alias_history`` row and an
event, so the promotion history answers who, when and why. The base model is the implicit champion while no
version holds the alias.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, col, select

from pilot.errors import NotFound, TransitionError
from pilot.store.models import AliasHistory, ModelVersion
from pilot.store.status import Alias, ModelStatus
from pilot.store.writers import alias_target, move_alias, switch_model_status

CHAMPION, PREVIOUS, CANDIDATE = Alias.CHAMPION, Alias.PREVIOUS, Alias.CANDIDATE


@dataclass(frozen=True)
class AliasMove:
    from_version: str | None
    to_version: str | None


def get_version(session: Session, version_id: str) -> ModelVersion:
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise NotFound(f"no model version {version_id!r}")
    return version


def promote(session: Session, version_id: str, *, actor: str, reason: str) -> AliasMove:
    version = get_version(session, version_id)
    if version.status != ModelStatus.PROMOTED:
        switch_model_status(session, version_id, ModelStatus.PROMOTED, actor=actor, reason=reason)
    old = alias_target(session, CHAMPION)
    if old == version_id:
        return AliasMove(old, version_id)
    move_alias(session, CHAMPION, version_id, actor=actor, reason=reason)
    if old is not None:
        move_alias(session, PREVIOUS, old, actor=actor, reason=f"replaced by {version_id}")
    if alias_target(session, CANDIDATE) == version_id:
        move_alias(session, CANDIDATE, None, actor=actor, reason="promoted")
    return AliasMove(old, version_id)


def reject(session: Session, version_id: str, *, actor: str, reason: str) -> None:
    switch_model_status(session, version_id, ModelStatus.REJECTED, actor=actor, reason=reason)
    if alias_target(session, CANDIDATE) == version_id:
        move_alias(session, CANDIDATE, None, actor=actor, reason="rejected")


def mark_candidate(session: Session, version_id: str, *, actor: str, reason: str) -> None:
    move_alias(session, CANDIDATE, version_id, actor=actor, reason=reason)


def rollback(session: Session, *, to_version: str | None, actor: str, reason: str) -> AliasMove:
    """Take the champion down (ROLLED_BACK) and put ``to_version`` (default: ``previous``, else the base) up."""
    champion = alias_target(session, CHAMPION)
    if champion is None:
        raise NotFound("there is no champion to roll back (the base model is serving)")
    target = to_version if to_version is not None else alias_target(session, PREVIOUS)
    if target == champion:
        raise TransitionError(f"{target} is already the champion")
    if target is not None:
        version = get_version(session, target)
        if version.status not in (ModelStatus.PROMOTED, ModelStatus.ROLLED_BACK):
            raise TransitionError(
                f"{target} was never promoted ({version.status}); roll back only to a former champion"
            )
    switch_model_status(session, champion, ModelStatus.ROLLED_BACK, actor=actor, reason=reason)
    if target is not None and get_version(session, target).status == ModelStatus.ROLLED_BACK:
        switch_model_status(session, target, ModelStatus.PROMOTED, actor=actor, reason=f"restored: {reason}")
    move_alias(session, CHAMPION, target, actor=actor, reason=f"rollback: {reason}")
    move_alias(session, PREVIOUS, _promoted_before(session, target), actor=actor, reason="rollback")
    return AliasMove(champion, target)


def _promoted_before(session: Session, version_id: str | None) -> str | None:
    """The champion before ``version_id`` became champion, if it is still in good standing."""
    if version_id is None:
        return None
    rows = session.exec(
        select(AliasHistory)
        .where(AliasHistory.alias == CHAMPION, AliasHistory.new_version == version_id)
        .order_by(col(AliasHistory.id).desc())
    ).first()
    if rows is None or rows.old_version is None:
        return None
    older = session.get(ModelVersion, rows.old_version)
    return older.id if older is not None and older.status == ModelStatus.PROMOTED else None


def history(session: Session, limit: int = 50) -> list[AliasHistory]:
    return list(session.exec(select(AliasHistory).order_by(col(AliasHistory.id).desc()).limit(limit)).all())
