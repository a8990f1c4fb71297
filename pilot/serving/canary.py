"""Live rollout: which model a product session should use, and the live-quality watch that moves it.

How canary and promotion interact (decided here): the gate's promotion is immediate in the registry (the
``champion`` alias moves, the serving target loads the adapter; the former champion becomes ``previous`` and
stays loaded where the target can hold several adapters). The *traffic* is what rolls out:

- ``deploy.canary = false`` (default): every session gets the champion at once; the watch below still compares
  it with the previous champion every cycle and rolls back on a significant drop.
- ``deploy.canary = true``: a new champion starts with ``deploy.canary_steps[0]`` of sessions (a stable sha256
  bucket of the session id, ``tools.serving.canary``); the other sessions keep the previous champion (or the base
  model). Each monitoring pass where both sides have ``monitoring.min_records`` live records in the window and
  no significant drop steps the share up (10 -> 50 -> 100%); at 100% the rollout is complete and its state
  cleared. A significant drop at any step rolls back (the caller: registry rollback, target revert, event,
  Slack) and the share falls to 0.

Invariants:

- The rollout is one ``pilot_state`` row (key ``canary``, JSON), written only by this module, each change with
  an event row (entity ``canary``). No row: every session gets the registry's champion.
- ``pick_model`` depends only on the session id and the stored rollout: a session keeps its model while the
  share holds, and raising the share only moves sessions from the baseline to the new champion.
- The monitoring window: the champion's records that arrived since its promotion (ingestion time: the pilot's
  clock) and are no older than ``monitoring.window_hours`` (the record's own timestamp), against the baseline's
  (previous champion, or the base model: records naming no version or the base model's name) timestamped from
  ``window_hours`` before the promotion on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Integer, cast, func, or_
from sqlmodel import Session, col, select

from pilot.errors import ConfigError
from pilot.settings import Settings
from pilot.store.models import AliasHistory, ExecutionRecordRow, PilotState, as_utc, utcnow
from pilot.store.status import EntityType
from pilot.store.writers import alias_target, record_event
from subagents.monitoring import LiveStats, Verdict, compare_live
from tools.serving.canary import bucket

logger = logging.getLogger(__name__)

CANARY_KEY = "canary"
CHAMPION, PREVIOUS = "champion", "previous"


@dataclass(frozen=True)
class Rollout:
    """A new champion taking a growing share of sessions from ``baseline`` (None: the base model)."""

    version: str
    baseline: str | None
    share: float
    started_at: datetime
    stepped_at: datetime  # when the share last changed: evidence for the next step is counted from here

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "baseline": self.baseline,
                "share": self.share,
                "started_at": self.started_at.isoformat(),
                "stepped_at": self.stepped_at.isoformat(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Rollout:
        data = json.loads(text)
        return cls(
            version=str(data["version"]),
            baseline=None if data.get("baseline") is None else str(data["baseline"]),
            share=float(data["share"]),
            started_at=as_utc(datetime.fromisoformat(data["started_at"])),
            stepped_at=as_utc(datetime.fromisoformat(data["stepped_at"])),
        )


@dataclass(frozen=True)
class Route:
    """What the product should call for one session: ``model`` is the adapter name (a version id) or the base
    model's name; ``version`` is None for the base model."""

    session_id: str
    model: str
    version: str | None
    canary: bool
    share: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "model": self.model,
            "version": self.version,
            "canary": self.canary,
            "share": self.share,
        }


def canary_steps(settings: Settings) -> tuple[float, ...]:
    steps = tuple(settings.deploy.canary_steps)
    if not steps or steps[-1] != 1.0 or any(not 0.0 < s <= 1.0 for s in steps) or list(steps) != sorted(set(steps)):
        raise ConfigError(f"deploy.canary_steps must increase within (0, 1] and end at 1.0, got {list(steps)}")
    return steps


# ------------------------------------------------------------------------------------------ rollout state


def get_rollout(session: Session) -> Rollout | None:
    row = session.get(PilotState, CANARY_KEY)
    return Rollout.from_json(row.value) if row is not None and row.value else None


def _write(session: Session, rollout: Rollout | None, *, actor: str, reason: str) -> None:
    row = session.get(PilotState, CANARY_KEY, with_for_update=True)
    old = Rollout.from_json(row.value) if row is not None and row.value else None
    if rollout is None:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(PilotState(key=CANARY_KEY, value=rollout.to_json()))
    else:
        row.value = rollout.to_json()
        row.updated_at = utcnow()
    subject = rollout if rollout is not None else old
    record_event(
        session,
        entity_type=EntityType.CANARY,
        entity_id=subject.version if subject is not None else "-",
        actor=actor,
        reason=reason,
        old=None if old is None else f"{old.share:.0%}",
        new=None if rollout is None else f"{rollout.share:.0%}",
    )
    session.flush()


def start_rollout(session: Session, settings: Settings, version: str, *, actor: str) -> Rollout | None:
    """Called right after ``version`` became champion. With canary off, clears any rollout and returns None."""
    if not settings.deploy.canary:
        if get_rollout(session) is not None:
            _write(session, None, actor=actor, reason=f"{version} promoted with canary off: all sessions")
        return None
    now = utcnow()
    rollout = Rollout(
        version=version,
        baseline=alias_target(session, PREVIOUS),
        share=canary_steps(settings)[0],
        started_at=now,
        stepped_at=now,
    )
    _write(session, rollout, actor=actor, reason=f"canary of {version} starts at {rollout.share:.0%} of sessions")
    return rollout


def end_rollout(session: Session, *, actor: str, reason: str) -> None:
    """Drop the rollout (a rollback, a manual promotion): every session gets the registry's champion."""
    if get_rollout(session) is not None:
        _write(session, None, actor=actor, reason=reason)


def pick_model(session: Session, settings: Settings, session_id: str) -> Route:
    """The model for ``session_id``: the canary's version for its share of sessions, else the champion."""
    return route_for(get_rollout(session), alias_target(session, CHAMPION), settings.training.base_model, session_id)


def route_for(rollout: Rollout | None, champion: str | None, base: str, session_id: str) -> Route:
    """``pick_model`` over already-read state (the gateway caches the rollout and champion between refreshes)."""
    if rollout is not None and rollout.version == champion and rollout.share < 1.0:
        on_new = bucket(session_id) < rollout.share
        version = rollout.version if on_new else rollout.baseline
        return Route(session_id, version or base, version, on_new, rollout.share)
    return Route(session_id, champion or base, champion, False, 1.0)


# ------------------------------------------------------------------------------------------ live windows


def promoted_at(session: Session, version: str) -> datetime | None:
    row = session.exec(
        select(AliasHistory)
        .where(AliasHistory.alias == CHAMPION, AliasHistory.new_version == version)
        .order_by(col(AliasHistory.id).desc())
    ).first()
    return as_utc(row.at) if row is not None else None


def live_stats(
    session: Session,
    version: str | None,
    *,
    since: datetime,
    base_model: str,
    ingested_since: datetime | None = None,
) -> LiveStats:
    """Success counts of records served by ``version`` (None: the base model) with ``ts >= since`` and, when
    given, ingested at or after ``ingested_since`` (the pilot's own clock: a producer's clock may be off)."""
    served = (
        col(ExecutionRecordRow.model_version) == version
        if version is not None
        else or_(col(ExecutionRecordRow.model_version).is_(None), col(ExecutionRecordRow.model_version) == base_model)
    )
    query = select(func.count(), func.coalesce(func.sum(cast(col(ExecutionRecordRow.success), Integer)), 0)).where(
        served, ExecutionRecordRow.ts >= since
    )
    if ingested_since is not None:
        query = query.where(ExecutionRecordRow.ingested_at >= ingested_since)
    total, successes = session.exec(query).one()
    return LiveStats(version=version or "base", successes=int(successes), total=int(total))


@dataclass(frozen=True)
class WatchResult:
    """One monitoring pass. ``action``: none (nothing to watch), hold (not enough evidence), step (canary share
    raised), complete (canary at 100%), healthy (no canary, quality holds), rollback (the caller rolls back)."""

    action: Literal["none", "hold", "step", "complete", "healthy", "rollback"]
    reason: str
    champion: str | None = None
    baseline: str | None = None
    verdict: Verdict | None = None
    share: float | None = None
    figures: dict[str, Any] | None = None


def watch(session: Session, settings: Settings, *, now: datetime | None = None, may_step: bool = True) -> WatchResult:
    """Compare the champion with its baseline over the monitoring window; step a healthy canary up.

    Writes only the canary share (and its event); a regression is returned for the caller to roll back.
    ``may_step`` False (the effect gate refused ``CANARY_STEP``: paused) holds the canary where it is.
    """
    now = now or utcnow()
    champion = alias_target(session, CHAMPION)
    if champion is None:
        return WatchResult("none", "no champion: the base model serves")
    rollout = get_rollout(session)
    if rollout is not None and rollout.version != champion:
        end_rollout(session, actor="system", reason=f"stale canary of {rollout.version}: {champion} is champion")
        rollout = None
    baseline = rollout.baseline if rollout is not None else alias_target(session, PREVIOUS)
    since_promotion = promoted_at(session, champion) or now
    m = settings.monitoring
    window = timedelta(hours=m.window_hours)
    base_model = settings.training.base_model
    # The champion's records arrived after its promotion (by the pilot's clock) and are inside the window; during
    # a canary only those that arrived since the last step count, so each step needs fresh evidence.
    since = max(since_promotion, rollout.stepped_at if rollout is not None else since_promotion)
    champ = live_stats(session, champion, since=now - window, base_model=base_model, ingested_since=since)
    prev = live_stats(session, baseline, since=since_promotion - window, base_model=base_model)
    verdict = compare_live(champ, prev, min_records=m.min_records, alpha=m.alpha, min_drop=m.min_drop)
    figures = {
        "champion": {"version": champion, "successes": champ.successes, "total": champ.total},
        "baseline": {"version": baseline, "successes": prev.successes, "total": prev.total},
        "p_value": verdict.p_value,
        "window_hours": m.window_hours,
        "promoted_at": since_promotion.isoformat(timespec="seconds"),
        "since": since.isoformat(timespec="seconds"),
    }
    share = rollout.share if rollout is not None else None
    if verdict.regressed:
        return WatchResult("rollback", verdict.reason, champion, baseline, verdict, share, figures)
    enough = champ.total >= m.min_records and prev.total >= m.min_records
    if rollout is None:
        return WatchResult("healthy" if enough else "hold", verdict.reason, champion, baseline, verdict, None, figures)
    if not enough:
        return WatchResult("hold", f"canary at {rollout.share:.0%}: {verdict.reason}", champion, baseline, verdict,
                           rollout.share, figures)  # fmt: skip
    if not may_step:
        return WatchResult("hold", f"canary held at {rollout.share:.0%} (paused): {verdict.reason}", champion,
                           baseline, verdict, rollout.share, figures)  # fmt: skip
    higher = [s for s in canary_steps(settings) if s > rollout.share]
    if not higher or higher[0] >= 1.0:
        end_rollout(session, actor="supervisor", reason=f"canary of {champion} complete: {verdict.reason}")
        return WatchResult("complete", f"canary complete, all sessions on {champion}: {verdict.reason}", champion,
                           baseline, verdict, 1.0, figures)  # fmt: skip
    stepped = Rollout(rollout.version, rollout.baseline, higher[0], rollout.started_at, now)
    _write(session, stepped, actor="supervisor", reason=f"canary of {champion} to {higher[0]:.0%}: {verdict.reason}")
    return WatchResult("step", f"canary {rollout.share:.0%} -> {higher[0]:.0%}: {verdict.reason}", champion,
                       baseline, verdict, higher[0], figures)  # fmt: skip
