"""The gateway's Prometheus metrics, on its own registry: calls, latency, refusals, the spool and the ingester.

Dropped records (a full spool, a disk that refused a write) are counters here and a warning in the log; they are
never a failed request. ``learning_pilot_gateway_spool_pending`` and ``..._spool_bytes`` show a store outage
building up before anything is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        r = self.registry
        self.calls = Counter(
            "learning_pilot_gateway_calls",
            "Proxied calls by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "learning_pilot_gateway_call_seconds",
            "Time from request to the end of the answer, gateway included.",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.refused = Counter(
            "learning_pilot_gateway_refused", "Requests refused by the gateway itself, by status.", ["status"],
            registry=r,
        )  # fmt: skip
        self.rerouted = Counter(
            "learning_pilot_gateway_rerouted",
            "Calls sent again with the session's new route after the upstream did not know the adapter (404).",
            registry=r,
        )
        self.feedback = Counter(
            "learning_pilot_gateway_feedback", "Outcomes reported, by result.", ["result"], registry=r
        )

    def observe(self, endpoint: str, outcome: str, latency_ms: float) -> None:
        children = self._children.get((endpoint, outcome))
        if children is None:  # a handful of label pairs: looked up once each, not per call
            children = self._children[(endpoint, outcome)] = (
                self.calls.labels(endpoint, outcome),
                self.latency.labels(endpoint),
            )
        children[0].inc()
        children[1].observe(latency_ms / 1000)

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A figure read at scrape time (the spool's and the ingester's counters)."""
        Gauge(name, doc, registry=self.registry).set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
