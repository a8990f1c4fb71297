"""Decision statistics on a real store: success-rate trend per version, drift against the last snapshot."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import func, select

from pilot.context import build_context
from pilot.data.ingest import ingest_lines
from pilot.data.stats import decision_stats, js_divergence, success_rate_trend, task_drift
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import DatasetSnapshot, ExecutionRecordRow
from tools.knowledge import HashingEmbedder

DAY0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def rec(
    n: int, *, day: int = 0, domain: str = "python", success: bool = True, version: str | None = "v1", task: str = ""
) -> dict[str, Any]:
    return {
        "record_id": f"r{n}",
        "timestamp": (DAY0 + timedelta(days=day, minutes=n % 600)).isoformat(),
        "session_id": "s",
        "domain": domain,
        "task": task or f"rename variable number {n} in module {n % 13}",
        "prompt": f"rename variable number {n} in module {n % 13} to snake case please, item {n * 31}",
        "output": f"value_{n} = compute_{n}()",
        "success": success,
        "model_version": version,
    }


def put(store: Store, records: list[dict[str, Any]]) -> int:
    report = ingest_lines(store, [json.dumps(r) for r in records], source="test")
    assert report.dead_lettered == 0, report.reasons
    with store.session() as s:
        return int(s.exec(select(func.max(ExecutionRecordRow.id))).one() or 0)


def snapshot_at(store: Store, pk: int, name: str = "snap-1") -> None:
    with store.session(write=True) as s:
        s.add(DatasetSnapshot(id=name, content_hash=name, path="/nowhere", max_record_pk=pk))


@pytest.mark.parametrize(
    ("p", "q", "expected"),
    [
        ({"a": 1, "b": 1}, {"a": 5, "b": 5}, 0.0),
        ({"a": 1}, {"b": 3}, 1.0),
        ({"a": 1, "b": 1}, {"a": 1}, 0.31127812445913283),  # H(3/4, 1/4) - 1/2
    ],
)
def test_js_divergence(p: dict[str, float], q: dict[str, float], expected: float) -> None:
    assert js_divergence(p, q) == pytest.approx(expected, abs=1e-9)
    assert js_divergence(q, p) == pytest.approx(expected, abs=1e-9)


def test_js_divergence_needs_mass() -> None:
    with pytest.raises(ValueError):
        js_divergence({}, {"a": 1})


def test_success_rate_trend_per_version(store: Store) -> None:
    records = []
    n = 0
    for day, wins in enumerate([10, 8, 6, 4]):  # v1 gets worse: 100%, 80%, 60%, 40% of 10 a day
        for i in range(10):
            records.append(rec(n, day=day, success=i < wins))
            n += 1
    for i in range(6):  # v2 on day 3 only
        records.append(rec(n, day=3, version="v2", success=i != 0))
        n += 1
    records.append(rec(n, day=3, version=None))
    records.append(rec(n + 1, day=-40))  # outside the window
    put(store, records)
    with store.session() as s:
        trend = success_rate_trend(s, since=DAY0)
    by_version = {t.model_version: t for t in trend}
    assert set(by_version) == {"v1", "v2", None}
    v1 = by_version["v1"]
    assert (v1.records, v1.successes) == (40, 28) and v1.success_rate == pytest.approx(0.7)
    assert [d.success_rate for d in v1.daily] == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert v1.daily[0].day == "2025-03-01"
    assert v1.slope_per_day == pytest.approx(-0.2)
    assert v1.first_ts.date().isoformat() == "2025-03-01"
    v2 = by_version["v2"]
    assert v2.success_rate == pytest.approx(5 / 6) and v2.slope_per_day is None  # one day: no trend
    assert trend[0].model_version == "v1"  # oldest first
    assert v1.to_dict()["slope_per_day"] == pytest.approx(-0.2)


def test_drift_against_the_last_snapshot(store: Store) -> None:
    with store.session() as s:
        assert task_drift(s).js_divergence is None  # no snapshot yet
    old = [rec(n, domain="python") for n in range(30)] + [rec(n, domain="sql") for n in range(30, 40)]
    cut = put(store, old)
    snapshot_at(store, cut)
    with store.session() as s:
        nothing_new = task_drift(s)
    assert nothing_new.snapshot_id == "snap-1" and nothing_new.new_records == 0 and nothing_new.js_divergence is None

    same_mix = [rec(n, domain="python") for n in range(100, 130)] + [rec(n, domain="sql") for n in range(130, 140)]
    put(store, same_mix)
    emb = HashingEmbedder(256)
    with store.session() as s:
        same = task_drift(s, embedder=emb)
    assert same.reference_records == 40 and same.new_records == 40
    assert same.js_divergence == pytest.approx(0.0, abs=1e-12)
    assert same.domain_shift["sql"] == pytest.approx((0.25, 0.25))

    shifted = [
        rec(n, domain="frontend", task=f"center the css flexbox layout of widget {n} in the react page")
        for n in range(200, 280)
    ]
    put(store, shifted)
    with store.session() as s:
        moved = task_drift(s, embedder=emb)
    assert moved.new_records == 120
    assert moved.js_divergence is not None and moved.js_divergence > 0.3
    assert moved.domain_shift["frontend"] == pytest.approx((0.0, 80 / 120))
    assert same.centroid_distance is not None and moved.centroid_distance is not None
    assert moved.centroid_distance > same.centroid_distance + 0.05
    assert moved.to_dict()["snapshot_id"] == "snap-1"


def test_drift_reference_is_bounded(store: Store) -> None:
    cut = put(store, [rec(n, domain="python" if n < 50 else "sql") for n in range(60)])
    snapshot_at(store, cut)
    put(store, [rec(n, domain="sql") for n in range(100, 110)])
    with store.session() as s:
        drift = task_drift(s, reference_size=10)  # only the 10 newest before the cut: all sql
    assert drift.reference_records == 10 and drift.new_records == 10
    assert drift.js_divergence == pytest.approx(0.0, abs=1e-12)


def test_decision_stats_combines_new_data_trend_and_drift(store: Store, make_settings: Callable[..., Settings]) -> None:
    ctx = build_context(make_settings(), store=store)
    now = datetime.now(UTC)
    records = [rec(n, domain="python" if n % 3 else "sql") for n in range(30)]
    for r in records:
        r["timestamp"] = now.isoformat()
    put(store, records)
    stats = decision_stats(ctx, embedder=HashingEmbedder(64))
    assert stats.new_data.new_records == 30
    assert stats.new_data.new_examples == sum(stats.new_data.per_domain.values()) > 0
    assert [t.model_version for t in stats.trend] == ["v1"] and stats.trend[0].records == 30
    assert stats.drift.snapshot_id is None
    figures = stats.to_figures()
    assert figures["new_records"] == 30 and figures["trend"][0]["records"] == 30
    json.dumps(figures)  # JSON-able for the decision row
