"""Metrics read the store at scrape time; the dashboard and alert rules reference only metrics that exist."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from pilot.service.metrics import METRIC_NAMES, PilotMetrics
from pilot.settings import Settings
from pilot.spend.ledger import reserve
from pilot.store import Store
from pilot.store.models import utcnow
from pilot.store.status import RunStatus
from pilot.store.writers import set_paused
from tests import factories

ROOT = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"\blearning_pilot_[a-z0-9_]+")
_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def _samples(metrics: PilotMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return next(v for lbl, v in samples[name] if all(lbl.get(k) == val for k, val in labels.items()))


def test_scrape_reflects_the_store(store: Store, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    metrics = PilotMetrics(store, settings)
    with store.session(write=True) as session:
        factories.run(session, id="run-1", status=RunStatus.RUNNING, created_at=utcnow() - timedelta(hours=2))
        factories.run(session, id="run-2", status=RunStatus.FAILED)
        reserve(store, session, amount_usd=3.5, caps=settings.budget, run_id="run-1")
        set_paused(session, True, actor="human:t", reason="test")
    metrics.cycle_duration.observe(12.0)
    metrics.cycles.labels("ok").inc()
    s = _samples(metrics)
    assert _value(s, "learning_pilot_spend_usd", period="today") == 3.5
    assert _value(s, "learning_pilot_reserved_usd") == 3.5
    assert _value(s, "learning_pilot_budget_cap_usd", period="day") == settings.budget.per_day_usd
    assert _value(s, "learning_pilot_runs", status="running") == 1
    assert _value(s, "learning_pilot_runs", status="failed") == 1
    assert _value(s, "learning_pilot_runs", status="succeeded") == 0
    assert 7100 < _value(s, "learning_pilot_run_oldest_in_flight_seconds") < 7300
    assert _value(s, "learning_pilot_paused") == 1
    assert _value(s, "learning_pilot_decisions_total", action="finetune") == 2  # each factory run has a decision
    assert _value(s, "learning_pilot_cycle_duration_seconds_count") == 1
    assert _value(s, "learning_pilot_cycles_total", outcome="ok") == 1


def test_an_unreadable_store_counts_a_scrape_error(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    broken = Store(f"sqlite:///{tmp_path / 'never-migrated.db'}")
    try:
        metrics = PilotMetrics(broken, make_settings())
        assert _value(_samples(metrics), "learning_pilot_scrape_errors_total") == 1
    finally:
        broken.close()


def _exposed(store: Store, settings: Settings) -> set[str]:
    names = set(_samples(PilotMetrics(store, settings)))
    return {n[: -len(s)] if n.endswith(s) else n for n in names for s in ("", *_SUFFIXES) if n.endswith(s)} | names


def test_metric_names_list_matches_what_is_exposed(store: Store, make_settings: Callable[..., Settings]) -> None:
    exposed = _exposed(store, make_settings())
    assert exposed >= METRIC_NAMES, METRIC_NAMES - exposed


def test_dashboard_and_alerts_reference_only_existing_metrics(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    exposed = _exposed(store, make_settings())
    dashboard = json.loads((ROOT / "config/grafana/learning-pilot.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((ROOT / "config/prometheus/alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    exprs += list(alerts.values())
    referenced = {m for e in exprs for m in _NAME.findall(str(e))}
    assert referenced and referenced <= exposed, referenced - exposed
    covered = " ".join(alerts.values())
    for needed in (  # the alerts: spend near cap, run stuck, orphan found, approval waiting, kill switch
        "learning_pilot_spend_usd",
        "learning_pilot_run_oldest_in_flight_seconds",
        "learning_pilot_orphans_destroyed_total",
        "learning_pilot_oldest_pending_approval_seconds",
        "learning_pilot_paused",
    ):
        assert needed in covered
