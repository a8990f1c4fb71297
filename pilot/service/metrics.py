"""Prometheus metrics for the daemon, on its own ``CollectorRegistry`` (never the process-global one).

Two kinds: what the store knows is read at scrape time (spend, runs by status, pending approvals, decisions,
paused), so a scrape is always the truth of the database and survives restarts; what only the process knows
(cycle duration, owned instances seen by the reconciler, orphans destroyed, leadership) is recorded by the
daemon's jobs on the instruments below. A store failure during a scrape is counted
(``learning_pilot_scrape_errors_total``) and never answered with a 500, so the alert on it can fire.

The dashboard (config/grafana/) and alert rules (config/prometheus/) may only reference names in
``METRIC_NAMES``; a test scrapes a real registry and checks both files against it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlmodel import col, select

from pilot.settings import Settings
from pilot.spend.ledger import spend_summary
from pilot.store import Store
from pilot.store.models import Approval, Decision, Event, TrainingRun, utcnow
from pilot.store.status import ApprovalStatus, DecisionAction, RunStatus
from pilot.store.writers import is_paused

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
IN_FLIGHT = [RunStatus.PENDING.value, RunStatus.PROVISIONING.value, RunStatus.RUNNING.value, RunStatus.COLLECTING.value]

METRIC_NAMES = frozenset(
    {
        "learning_pilot_cycle_duration_seconds",
        "learning_pilot_cycles_total",
        "learning_pilot_last_cycle_timestamp_seconds",
        "learning_pilot_decisions_total",
        "learning_pilot_spend_usd",
        "learning_pilot_budget_cap_usd",
        "learning_pilot_reserved_usd",
        "learning_pilot_runs",
        "learning_pilot_run_oldest_in_flight_seconds",
        "learning_pilot_pending_approvals",
        "learning_pilot_oldest_pending_approval_seconds",
        "learning_pilot_owned_instances",
        "learning_pilot_orphans_destroyed_total",
        "learning_pilot_kill_switch_engagements_total",
        "learning_pilot_paused",
        "learning_pilot_leader",
        "learning_pilot_scrape_errors_total",
        "learning_pilot_api_refusals_total",
    }
)


def _seconds_since(then: datetime | None, now: datetime) -> float:
    if then is None:
        return 0.0
    if then.tzinfo is None:  # SQLite hands back naive datetimes; they are stored as UTC
        then = then.replace(tzinfo=now.tzinfo)
    return max((now - then).total_seconds(), 0.0)


class StoreCollector(Collector):
    """Reads the store at scrape time."""

    def __init__(self, store: Store, settings: Settings, scrape_errors: Counter) -> None:
        self.store = store
        self.settings = settings
        self.scrape_errors = scrape_errors

    def collect(self) -> Iterator[Metric]:
        try:
            metrics = self._read()
        except Exception:  # a scrape must answer; the error counter is what alerts
            logger.exception("Metrics scrape could not read the store at %s", self.store.display_url)
            self.scrape_errors.inc()
            return iter(())
        return iter(metrics)

    def _read(self) -> list[Metric]:
        now = utcnow()
        caps = self.settings.budget
        with self.store.session() as session:
            spend = spend_summary(session, now)
            runs = dict(session.exec(select(TrainingRun.status, func.count()).group_by(TrainingRun.status)).all())
            oldest_run = session.exec(
                select(func.min(TrainingRun.created_at)).where(col(TrainingRun.status).in_(IN_FLIGHT))
            ).one()
            pending = session.exec(
                select(func.count(), func.min(Approval.requested_at)).where(Approval.status == ApprovalStatus.PENDING)
            ).one()
            decisions = dict(session.exec(select(Decision.action, func.count()).group_by(Decision.action)).all())
            kills = session.exec(
                select(func.count()).where(
                    Event.entity_type == "incident", Event.entity_id == "kill_switch", Event.new == "paused"
                )
            ).one()
            paused = is_paused(session)

        spend_g = GaugeMetricFamily(
            "learning_pilot_spend_usd", "Committed spend (actual + reserved)", labels=["period"]
        )
        spend_g.add_metric(["today"], spend.today_usd)
        spend_g.add_metric(["month"], spend.month_usd)
        caps_g = GaugeMetricFamily("learning_pilot_budget_cap_usd", "Budget caps from the settings", labels=["period"])
        caps_g.add_metric(["day"], caps.per_day_usd)
        caps_g.add_metric(["month"], caps.per_month_usd)
        caps_g.add_metric(["run"], caps.per_run_usd)
        reserved = GaugeMetricFamily(
            "learning_pilot_reserved_usd", "Active budget reservations", value=spend.reserved_usd
        )
        runs_g = GaugeMetricFamily("learning_pilot_runs", "Training runs by status", labels=["status"])
        for status in RunStatus:
            runs_g.add_metric([status.value], float(runs.get(status.value, 0)))
        oldest = GaugeMetricFamily(
            "learning_pilot_run_oldest_in_flight_seconds",
            "Age of the oldest run not yet finished (0: none)",
            value=_seconds_since(oldest_run, now),
        )
        pending_g = GaugeMetricFamily("learning_pilot_pending_approvals", "Approvals waiting", value=float(pending[0]))
        pending_age = GaugeMetricFamily(
            "learning_pilot_oldest_pending_approval_seconds",
            "Age of the oldest pending approval (0: none)",
            value=_seconds_since(pending[1], now),
        )
        decisions_c = CounterMetricFamily(
            "learning_pilot_decisions", "Supervisor decisions by action", labels=["action"]
        )
        for action in DecisionAction:
            decisions_c.add_metric([action.value], float(decisions.get(action.value, 0)))
        kills_c = CounterMetricFamily(
            "learning_pilot_kill_switch_engagements", "Times the kill switch was pulled", value=float(kills)
        )
        paused_g = GaugeMetricFamily(
            "learning_pilot_paused", "1 while the kill switch holds", value=1.0 if paused else 0.0
        )
        return [spend_g, caps_g, reserved, runs_g, oldest, pending_g, pending_age, decisions_c, kills_c, paused_g]


class PilotMetrics:
    """The daemon's registry and the instruments its jobs record on."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.cycle_duration = Histogram(
            "learning_pilot_cycle_duration_seconds",
            "Wall time of one supervisor cycle",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
            registry=self.registry,
        )
        self.cycles = Counter("learning_pilot_cycles", "Cycles run, by outcome", ["outcome"], registry=self.registry)
        for outcome in ("ok", "error", "skipped"):
            self.cycles.labels(outcome)
        self.last_cycle = Gauge(
            "learning_pilot_last_cycle_timestamp_seconds", "When the last cycle ended (unix)", registry=self.registry
        )
        self.owned_instances = Gauge(
            "learning_pilot_owned_instances", "Instances with our label the provider lists", registry=self.registry
        )
        self.orphans_destroyed = Counter(
            "learning_pilot_orphans_destroyed", "Orphan instances the reconciler destroyed", registry=self.registry
        )
        self.leader = Gauge("learning_pilot_leader", "1 when this daemon runs the cycle jobs", registry=self.registry)
        self.sandbox_degraded = Gauge(
            "learning_pilot_sandbox_degraded",
            "1 when the sandbox cannot isolate untrusted code here (it then runs none: code items are not evaluated "
            "and the gate asks a human); see the daemon's log for the reason",
            registry=self.registry,
        )
        self.api_refusals = Counter(
            "learning_pilot_api_refusals",
            "Requests the HTTP API refused (no or wrong credential, over the size limit...), by route and status; "
            "only a sample of them is written as events",
            ["route", "status"],
            registry=self.registry,
        )
        for route, status in (("/v1/records", "401"), ("/v1/records", "413"), ("/v1/kill", "401")):
            self.api_refusals.labels(route, status)  # exposed at 0 from the start, so rate() alerts work
        self.scrape_errors = Counter(
            "learning_pilot_scrape_errors", "Scrapes that could not read the store", registry=self.registry
        )
        self.registry.register(StoreCollector(store, settings, self.scrape_errors))

    def render(self) -> bytes:
        return generate_latest(self.registry)
