"""The gateway's Prometheus metrics, on its own registry: calls, latency, refusals, the spool and the ingester.

Dropped records (a full spool, a disk that refused a write) are counters here and a warning in the log; they are
never a failed request. ``learning_pilot_gateway_spool_pending`` and ``..._spool_bytes`` show a store outage
building up before anything is dropped.

With several workers on one port (pilot/gateway/workers.py) a scrape reaches whichever worker the kernel hands the
connection, so ``/metrics`` there answers with the totals over every worker (``WorkerTotals``): each worker writes
its figures to ``<spool_dir>/<port>-metrics/worker-<i>.json`` once a second and before it answers a scrape, and
the answer sums those files. A replacement worker starts from what its predecessor last wrote, so the totals never
go down while the supervisor runs (a drop would read as a counter reset to Prometheus' ``rate()``): the only
figures lost are a killed worker's since its last write, and those were never shown. ``/metrics?scope=worker`` is
the answering process's own figures, as a single process's ``/metrics`` is.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

logger = logging.getLogger(__name__)


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


# Figures that are a worker's present state, not a running count: a replacement does not inherit them.
STATE = frozenset({"learning_pilot_gateway_spool_pending", "learning_pilot_gateway_spool_bytes"})
OWN = frozenset({"learning_pilot_gateway_worker"})  # meaningful for one process only: left out of the totals
SNAPSHOT_S = 1.0  # how often a worker writes its figures for the totals

Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


class _Figures:
    """Families (name -> type, help) and sample values, as read from a registry or a worker's file."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str]] = {}
        self.samples: dict[str, dict[Key, float]] = {}

    @classmethod
    def of(cls, registry: CollectorRegistry) -> _Figures:
        figures = cls()
        for family in registry.collect():
            if family.name in OWN:
                continue
            figures.families[family.name] = (family.type, family.documentation)
            values = figures.samples.setdefault(family.name, {})
            for sample in family.samples:
                if not sample.name.endswith("_created"):  # a start time, not a figure to sum
                    values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return figures

    @classmethod
    def load(cls, path: Path) -> _Figures:
        figures = cls()
        raw = json.loads(path.read_text())
        for name, family in raw.items():
            figures.families[name] = (family["type"], family["help"])
            figures.samples[name] = {
                (s, tuple((k, v) for k, v in labels)): value for s, labels, value in family["samples"]
            }
        return figures

    def dump(self) -> str:
        out = {}
        for name, (kind, doc) in self.families.items():
            samples = [[s, [list(kv) for kv in labels], value] for (s, labels), value in self.samples[name].items()]
            out[name] = {"type": kind, "help": doc, "samples": samples}
        return json.dumps(out)

    def add(self, other: _Figures, *, state: bool = True) -> None:
        for name, family in other.families.items():
            if not state and name in STATE:
                continue
            self.families.setdefault(name, family)
            values = self.samples.setdefault(name, {})
            for key, value in other.samples[name].items():
                values[key] = values.get(key, 0.0) + value

    def collect(self) -> Iterator[Metric]:
        for name, (kind, doc) in self.families.items():
            metric = Metric(name, doc, kind)
            for (sample, labels), value in self.samples[name].items():
                metric.add_sample(sample, dict(labels), value)
            yield metric


class WorkerTotals:
    """One worker's share of the totals on its port, and the totals themselves (see the module docstring)."""

    def __init__(self, directory: Path, index: int, metrics: GatewayMetrics) -> None:
        self.directory = directory
        self.path = directory / f"worker-{index}.json"
        self.metrics = metrics
        self.base = _Figures()  # what this worker's predecessors counted
        try:
            self.base.add(_Figures.load(self.path), state=False)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError):  # a torn or foreign file: start from zero, say so
            logger.warning("Unreadable metrics file %s: this worker's totals start from zero", self.path)

    def snapshot(self) -> None:
        figures = _Figures()
        figures.add(self.base)
        figures.add(_Figures.of(self.metrics.registry))
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(figures.dump())
        os.replace(tmp, self.path)  # a reader sees the old file or the new one, never half of one

    def render(self) -> bytes:
        self.snapshot()  # this worker's part is as fresh as its own figures
        totals, workers = _Figures(), 0
        for path in sorted(self.directory.glob("worker-*.json")):
            try:
                totals.add(_Figures.load(path))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being replaced this instant, or not ours: the next scrape has it
            workers += 1
        registry = CollectorRegistry()
        registry.register(totals)  # a collector is anything with collect()
        Gauge("learning_pilot_gateway_workers", "Workers whose figures these totals sum.", registry=registry).set(
            workers
        )
        return generate_latest(registry)
