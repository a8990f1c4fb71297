"""The one effect gate: every side effect that spends money, promotes, or changes what serves asks here first.

``authorize(session, effect, ...)`` re-reads the store right before the effect and raises ``EffectRefused`` unless:

- the pilot is not paused — while paused only ``TEARDOWN``, ``SETTLE`` and ``ROLLBACK`` (to the last stable
  champion) may act;
- the lease named by the caller (the run's, the stage's or the supervisor thread's) is held by this process: one
  that lost it (frozen, partitioned, a leader change) cannot rent, relaunch, promote or deploy;
- for ``RENT`` (a training attempt, first host or retry): the run exists and is not ended; its reservation is
  active and covers the price; where the rules ask for approval (the reservation is above
  ``policy.approval_required_above_usd``, or that threshold is 0), the run's approval is approved and its ceiling
  covers the reservation — the figure the approver was shown is the most the run may spend;
- for ``START_STAGE`` (an evaluation stage's host): the stage exists and is not ended; its reservation covers it.

The kill switch therefore only has to flip the pause flag: every actor stops itself at its next effect. A refusal
writes an ``effect`` event with the reason. Callers check right before the provider call and, for a rental, once
more right after it returns (a kill committed during the call): then they tear the new instance down.
"""

from __future__ import annotations

import enum
import logging

from sqlmodel import Session, select

from pilot.errors import PilotError
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.leases import holder, holds
from pilot.store.models import Approval, EvalStage, SpendEntry, TrainingRun
from pilot.store.status import ApprovalStatus, EntityType, RunStatus, StageStatus
from pilot.store.writers import is_paused, record_event

logger = logging.getLogger(__name__)

EPSILON = 1e-6


class Effect(enum.StrEnum):
    RENT = "rent"  # a training attempt on a rented host (the first one or a retry on another host)
    START_STAGE = "start_stage"  # an evaluation stage's host
    PROMOTE = "promote"  # move the champion alias to a candidate
    DEPLOY = "deploy"  # make the serving target serve something else
    CANARY_STEP = "canary_step"  # widen (or complete) a canary's share
    ROLLBACK = "rollback"  # back to the last stable champion
    TEARDOWN = "teardown"  # destroy an instance
    SETTLE = "settle"  # replace a reservation by what was spent


ALLOWED_WHILE_PAUSED = frozenset({Effect.ROLLBACK, Effect.TEARDOWN, Effect.SETTLE})


class EffectRefused(PilotError):
    """The gate said no; ``reason`` says why (it is also an ``effect`` event)."""

    def __init__(self, effect: Effect, reason: str) -> None:
        super().__init__(f"{effect} refused: {reason}")
        self.effect = effect
        self.reason = reason


def active_reservation(session: Session, run_id: str) -> float | None:
    rows = session.exec(
        select(SpendEntry.amount_usd).where(
            SpendEntry.run_id == run_id,
            SpendEntry.kind == "reservation",
            SpendEntry.active == True,  # noqa: E712
        )
    ).all()
    return float(sum(rows)) if rows else None


def needs_approval(amount_usd: float, settings: Settings) -> bool:
    threshold = settings.policy.approval_required_above_usd
    return threshold == 0 or amount_usd > threshold + EPSILON


def _uncovered(reserved: float | None, price_usd: float | None, what: str, whose: str) -> str | None:
    if reserved is None:
        return f"{what} has no active reservation"
    if price_usd is not None and price_usd > reserved + EPSILON:
        return f"the price ${price_usd:.4f} is above the {whose} ${reserved:.4f} reservation"
    return None


def _why_not(
    session: Session,
    effect: Effect,
    settings: Settings,
    *,
    owner: str,
    lease: str | None,
    run_id: str | None,
    stage_id: str | None,
    price_usd: float | None,
) -> str | None:
    if effect not in ALLOWED_WHILE_PAUSED and is_paused(session):
        return "the pilot is paused (kill switch); only teardown, settlement and rollback may act"
    if lease is not None and not holds(session, lease, owner):
        return f"lease {lease} is not held by this process (held by {holder(session, lease) or 'nobody'})"
    if effect is Effect.RENT:
        assert run_id is not None
        run = session.get(TrainingRun, run_id, populate_existing=True)
        if run is None:
            return f"no run {run_id}"
        if RunStatus(run.status).is_terminal:
            return f"run {run_id} is {run.status}"
        reserved = active_reservation(session, run_id)
        if (problem := _uncovered(reserved, price_usd, f"run {run_id}", "run's")) is not None:
            return problem
        assert reserved is not None
        if needs_approval(reserved, settings):
            approval = session.get(Approval, run.approval_id, populate_existing=True) if run.approval_id else None
            if approval is None or approval.decision_id != run.decision_id:
                return f"a human must approve up to ${reserved:.4f} (no approval for this run)"
            if approval.status != ApprovalStatus.APPROVED:
                return f"approval {approval.id} is {approval.status}"
            if approval.cost_ceiling_usd + EPSILON < reserved:
                return (
                    f"approval {approval.id} covers ${approval.cost_ceiling_usd:.4f}, less than the run's "
                    f"${reserved:.4f} reservation"
                )
    if effect is Effect.START_STAGE:
        assert stage_id is not None
        stage = session.get(EvalStage, stage_id, populate_existing=True)
        if stage is None:
            return f"no evaluation stage {stage_id}"
        if StageStatus(stage.status).is_terminal:
            return f"evaluation stage {stage_id} is {stage.status}"
        reserved = active_reservation(session, stage_id)
        if (problem := _uncovered(reserved, price_usd, f"evaluation stage {stage_id}", "stage's")) is not None:
            return problem
    return None


def refusal(
    session: Session,
    effect: Effect,
    settings: Settings,
    *,
    owner: str,
    lease: str | None = None,
    run_id: str | None = None,
    stage_id: str | None = None,
    price_usd: float | None = None,
    actor: str = "system",
) -> EffectRefused | None:
    """None when ``effect`` may happen now; else the refusal, with its ``effect`` event added to ``session``."""
    reason = _why_not(
        session, effect, settings, owner=owner, lease=lease, run_id=run_id, stage_id=stage_id, price_usd=price_usd
    )
    if reason is None:
        return None
    logger.warning("Effect %s refused (run %s, stage %s): %s", effect, run_id, stage_id, reason)
    record_event(
        session,
        entity_type=EntityType.EFFECT,
        entity_id=str(run_id or stage_id or effect),
        actor=actor,
        reason=f"{effect} refused: {reason}"[:2000],
        data={"effect": effect.value, "owner": owner, "lease": lease},
    )
    return EffectRefused(effect, reason)


def authorize(
    store: Store,
    effect: Effect,
    settings: Settings,
    *,
    owner: str,
    lease: str | None = None,
    run_id: str | None = None,
    stage_id: str | None = None,
    price_usd: float | None = None,
    actor: str = "system",
) -> None:
    """Raise ``EffectRefused`` unless ``effect`` may happen now (see the module docstring); the refusal's event is
    committed first. Call it right before the side effect, outside any open write transaction."""
    with store.session(write=True) as session:
        refused = refusal(
            session,
            effect,
            settings,
            owner=owner,
            lease=lease,
            run_id=run_id,
            stage_id=stage_id,
            price_usd=price_usd,
            actor=actor,
        )
    if refused is not None:
        raise refused
