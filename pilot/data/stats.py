"""The statistics the supervisor decides on: new curated data, success-rate trend per model version, task drift.

Invariants:
- Every query is bounded by an index range, never a full scan: new data reads rows past the training watermark
  (pilot.data.snapshots.new_data, which this module reuses rather than re-counts), the trend reads a ``ts`` window, and
  drift compares at most ``reference_size`` records on each side of the last snapshot's watermark. A decision's
  cost therefore grows with new records and the window, not with the store.
- Drift is descriptive, not a verdict: Jensen-Shannon divergence (base 2, in [0, 1]) of the domain mix, and,
  when an embedder is given, the cosine distance between the mean task embeddings of a recent sample of each
  side. Either is ``None`` when a side is empty.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import case, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from pilot.context import PilotContext
from pilot.data.snapshots import NewData, new_data, newest_record_pk
from pilot.store.models import DatasetSnapshot, ExecutionRecordRow, utcnow

if TYPE_CHECKING:  # the knowledge base (Qdrant, fastembed, onnxruntime) loads only when it is used
    from tools.knowledge import Embedder

REFERENCE_SIZE = 20_000
EMBED_SAMPLE = 256
MIN_PER_DAY = 5  # days with fewer records do not count towards the slope (too noisy)


# ------------------------------------------------------------------------------------------------------- trend


@dataclass(frozen=True)
class DayRate:
    day: str  # YYYY-MM-DD (UTC)
    records: int
    success_rate: float


@dataclass(frozen=True)
class VersionTrend:
    model_version: str | None  # None: records that named no version
    records: int
    successes: int
    success_rate: float
    first_ts: datetime
    last_ts: datetime
    daily: tuple[DayRate, ...]
    slope_per_day: float | None  # least-squares change of the daily rate per day; None with < 2 usable days

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "records": self.records,
            "success_rate": round(self.success_rate, 4),
            "first_ts": self.first_ts.isoformat(),
            "last_ts": self.last_ts.isoformat(),
            "slope_per_day": None if self.slope_per_day is None else round(self.slope_per_day, 5),
            "days": len(self.daily),
        }


def _slope(days: list[DayRate]) -> float | None:
    usable = [d for d in days if d.records >= MIN_PER_DAY]
    if len(usable) < 2:
        return None
    origin = datetime.fromisoformat(usable[0].day)
    xs = np.array([(datetime.fromisoformat(d.day) - origin).days for d in usable], dtype=float)
    ys = np.array([d.success_rate for d in usable], dtype=float)
    if float(np.ptp(xs)) == 0.0:
        return None
    return float(np.polyfit(xs, ys, 1)[0])


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def success_rate_trend(
    session: Session, *, since: datetime | None = None, window_days: float = 30.0
) -> list[VersionTrend]:
    """Per model version, over records with ``ts >= since`` (default: the last ``window_days``), oldest first."""
    start = since if since is not None else utcnow() - timedelta(days=window_days)
    t = ExecutionRecordRow
    wins = func.sum(case((col(t.success), 1), else_=0))
    day = func.date(t.ts)
    rows = session.execute(
        sa_select(col(t.model_version), day, func.count(), wins, func.min(t.ts), func.max(t.ts))
        .where(col(t.ts) >= start)
        .group_by(t.model_version, day)
    ).all()
    grouped: dict[str | None, list[tuple[str, int, int, datetime, datetime]]] = {}
    for version, d, n, ok, first, last in rows:
        grouped.setdefault(version, []).append(
            (str(d)[:10], int(n), int(ok or 0), _as_datetime(first), _as_datetime(last))
        )
    trends = []
    for version, parts in grouped.items():
        parts.sort()
        daily = [DayRate(d, n, ok / n) for d, n, ok, _, _ in parts]
        records = sum(n for _, n, _, _, _ in parts)
        successes = sum(ok for _, _, ok, _, _ in parts)
        trends.append(
            VersionTrend(
                model_version=version,
                records=records,
                successes=successes,
                success_rate=successes / records,
                first_ts=min(p[3] for p in parts),
                last_ts=max(p[4] for p in parts),
                daily=tuple(daily),
                slope_per_day=_slope(daily),
            )
        )
    trends.sort(key=lambda tr: tr.first_ts)
    return trends


# ------------------------------------------------------------------------------------------------------- drift


def js_divergence(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence (base 2) of two distributions given as counts or weights; 0 = same, 1 = disjoint."""
    keys = sorted(set(p) | set(q))
    a = np.array([max(float(p.get(k, 0.0)), 0.0) for k in keys])
    b = np.array([max(float(q.get(k, 0.0)), 0.0) for k in keys])
    if a.sum() == 0 or b.sum() == 0:
        raise ValueError("both distributions need some mass")
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: np.ndarray[Any, Any]) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    return min(max((kl(a) + kl(b)) / 2, 0.0), 1.0)


@dataclass(frozen=True)
class Drift:
    snapshot_id: str | None
    reference_records: int
    new_records: int
    js_divergence: float | None
    domain_shift: dict[str, tuple[float, float]] = field(default_factory=dict)  # domain -> (reference, new) share
    centroid_distance: float | None = None  # 1 - cosine of the mean task embeddings

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "reference_records": self.reference_records,
            "new_records": self.new_records,
            "js_divergence": None if self.js_divergence is None else round(self.js_divergence, 4),
            "centroid_distance": None if self.centroid_distance is None else round(self.centroid_distance, 4),
            "domain_shift": {k: [round(a, 4), round(b, 4)] for k, (a, b) in self.domain_shift.items()},
        }


def _domain_counts(session: Session, lo: int, hi: int) -> dict[str, int]:
    """Domain counts of records with ``lo < id <= hi`` (a primary-key range)."""
    t = ExecutionRecordRow
    rows = session.exec(select(t.domain, func.count()).where(col(t.id) > lo, col(t.id) <= hi).group_by(t.domain)).all()
    return {str(d): int(n) for d, n in rows}


def _recent_tasks(session: Session, lo: int, hi: int, limit: int) -> list[str]:
    t = ExecutionRecordRow
    payloads = session.exec(
        select(t.payload).where(col(t.id) > lo, col(t.id) <= hi).order_by(col(t.id).desc()).limit(limit)
    ).all()
    return [str(json.loads(p).get("task", "")) for p in payloads]


def _centroid_distance(embedder: Embedder, ref: list[str], new: list[str]) -> float | None:
    if not ref or not new:
        return None
    a = embedder.embed_documents(ref).mean(axis=0)
    b = embedder.embed_documents(new).mean(axis=0)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    if denom == 0.0:
        return None
    return float(min(max(1.0 - float(a @ b) / denom, 0.0), 2.0))


def last_snapshot(session: Session) -> DatasetSnapshot | None:
    return session.exec(
        select(DatasetSnapshot).order_by(col(DatasetSnapshot.created_at).desc(), col(DatasetSnapshot.id))
    ).first()


def task_drift(
    session: Session,
    *,
    embedder: Embedder | None = None,
    reference_size: int = REFERENCE_SIZE,
    sample: int = EMBED_SAMPLE,
) -> Drift:
    """New tasks (after the last snapshot's watermark) against the most recent ones that snapshot saw."""
    snap = last_snapshot(session)
    if snap is None:
        return Drift(snapshot_id=None, reference_records=0, new_records=0, js_divergence=None)
    cut = snap.max_record_pk
    newest = newest_record_pk(session)
    ref_lo = max(cut - reference_size, 0)
    new_hi = min(newest, cut + reference_size)
    ref = _domain_counts(session, ref_lo, cut)
    new = _domain_counts(session, cut, new_hi)
    n_ref, n_new = sum(ref.values()), sum(new.values())
    if not n_ref or not n_new:
        return Drift(snapshot_id=snap.id, reference_records=n_ref, new_records=n_new, js_divergence=None)
    shift = {d: (ref.get(d, 0) / n_ref, new.get(d, 0) / n_new) for d in sorted(set(ref) | set(new))}
    centroid = None
    if embedder is not None:
        centroid = _centroid_distance(
            embedder, _recent_tasks(session, ref_lo, cut, sample), _recent_tasks(session, cut, new_hi, sample)
        )
    return Drift(
        snapshot_id=snap.id,
        reference_records=n_ref,
        new_records=n_new,
        js_divergence=js_divergence(ref, new),
        domain_shift=shift,
        centroid_distance=centroid,
    )


# ----------------------------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class DecisionStats:
    new_data: NewData
    trend: list[VersionTrend]
    drift: Drift

    def to_figures(self) -> dict[str, Any]:
        """Flat JSON-able figures for the decision row and the LLM rationale."""
        return {
            "new_records": self.new_data.new_records,
            "new_examples": self.new_data.new_examples,
            "new_examples_per_domain": self.new_data.per_domain,
            "trend": [t.to_dict() for t in self.trend],
            "drift": self.drift.to_dict(),
        }


def decision_stats(ctx: PilotContext, *, embedder: Embedder | None = None, window_days: float = 30.0) -> DecisionStats:
    """Everything above in one call; the embedder (the knowledge base's) is optional."""
    fresh = new_data(ctx)
    with ctx.store.session() as session:
        trend = success_rate_trend(session, window_days=window_days)
        drift = task_drift(session, embedder=embedder)
    return DecisionStats(new_data=fresh, trend=trend, drift=drift)
