"""Live quality, on its own schedule: the champion's live window against its baseline (pilot/serving/canary.py).

A healthy canary steps up (when the effect gate allows ``CANARY_STEP``: not while paused); a significant drop
rolls back — alias move, serving target, decision, event and Slack — which is allowed while paused. The daemon
runs this every ``monitoring.interval_s`` whether or not a run is in flight, and each cycle's first node runs it
too; both record the rollback as a decision of its own.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from pilot import testpoints
from pilot.context import PilotContext
from pilot.data.stats import task_drift
from pilot.serving import canary, registry
from pilot.serving.deploy import apply_champion
from pilot.spend.effects import Effect, refusal
from pilot.store.models import Decision, utcnow
from pilot.store.status import DecisionAction, EntityType
from pilot.store.writers import record_event
from pilot.supervisor import notify

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorOutcome:
    action: str  # none | healthy | hold | step | complete | rollback
    line: str
    reason: str
    decision_id: str | None = None


def watch_live_quality(ctx: PilotContext, *, cycle_id: str | None = None, lease: str | None = None) -> MonitorOutcome:
    settings = ctx.settings
    standalone = cycle_id is None
    cycle_id = cycle_id or f"mon-{uuid.uuid4().hex[:10]}"
    testpoints.reached("live_check")
    with ctx.store.session(write=True) as session:
        stop = refusal(session, Effect.CANARY_STEP, settings, owner=ctx.owner, lease=lease)
        watched = canary.watch(session, settings, may_step=stop is None)
        drift = task_drift(session)
        decision = None
        if watched.action == "rollback":
            decision = Decision(
                id=f"dec-{cycle_id}",
                thread_id=f"cycle-{cycle_id}",
                action=DecisionAction.ROLLBACK,
                reason=watched.reason,
                figures={**(watched.figures or {}), "drift": drift.to_dict()},
            )
            session.add(decision)
            session.flush()
            move = registry.rollback(session, to_version=None, actor="supervisor", reason=watched.reason)
            canary.end_rollout(session, actor="supervisor", reason=f"rolled back: {watched.reason}")
    drifted = "" if drift.js_divergence is None else f"; input drift JS={drift.js_divergence:.3f}"
    if decision is None:
        line = f"monitor: {watched.reason}{drifted}"
        if watched.action in ("step", "complete"):
            notify.notify_incident(ctx, f"Learning Pilot {line}")
        return MonitorOutcome(watched.action, line, watched.reason)
    line = f"monitor: rolled back {move.from_version} -> {move.to_version or 'base'}: {watched.reason}"
    line += apply_champion(ctx, f"rolled back {move.from_version}", effect=Effect.ROLLBACK) + drifted
    notify.notify_incident(ctx, f":rotating_light: Learning Pilot {line}")
    logger.warning("%s", line)
    if standalone:  # no thread will finish this decision: record its outcome now
        with ctx.store.session(write=True) as session:
            row = session.get(Decision, decision.id)
            if row is not None:
                row.finished_at, row.outcome = utcnow(), line
            record_event(
                session, entity_type=EntityType.DECISION, entity_id=decision.id, actor="supervisor", reason=line
            )
    return MonitorOutcome("rollback", line, watched.reason, decision.id)
