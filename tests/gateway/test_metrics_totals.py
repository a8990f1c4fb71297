"""``/metrics`` with several workers on one port: the totals over every worker, which a replacement worker carries
on from its predecessor's last figures (state gauges apart), so Prometheus never sees a counter go down."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pilot.gateway.metrics import GatewayMetrics, WorkerTotals

OK = 'learning_pilot_gateway_calls_total{endpoint="chat",outcome="ok"}'


def value(text: bytes, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text.decode(), re.MULTILINE)
    assert match, f"{name} not in\n{text.decode()}"
    return float(match.group(1))


def worker(directory: Path, index: int, *, calls: int, pending: float = 0.0) -> tuple[GatewayMetrics, WorkerTotals]:
    metrics = GatewayMetrics()
    metrics.gauge("learning_pilot_gateway_spool_pending", "Calls in memory, not yet written.", lambda: pending)
    metrics.gauge("learning_pilot_gateway_worker", "Index of the process that answered.", lambda: index)
    for _ in range(calls):
        metrics.observe("chat", "ok", 30.0)
    return metrics, WorkerTotals(directory, index, metrics)


def test_the_totals_sum_every_workers_figures(tmp_path: Path) -> None:
    _, zero = worker(tmp_path, 0, calls=3, pending=2)
    one_metrics, one = worker(tmp_path, 1, calls=4, pending=5)
    one.snapshot()
    text = zero.render()
    assert value(text, OK) == 7
    assert value(text, 'learning_pilot_gateway_call_seconds_count{endpoint="chat"}') == 7
    assert value(text, 'learning_pilot_gateway_call_seconds_bucket{endpoint="chat",le="0.05"}') == 7
    assert value(text, "learning_pilot_gateway_spool_pending") == 7  # the port's calls in memory, all workers
    assert value(text, "learning_pilot_gateway_workers") == 2
    assert "learning_pilot_gateway_worker " not in text.decode()  # one process's index means nothing summed
    assert "_created" not in text.decode()
    assert [f.name for f in text_string_to_metric_families(text.decode())]  # valid exposition text
    one_metrics.observe("chat", "ok", 30.0)  # worker 1's next call shows once it writes (within SNAPSHOT_S) ...
    assert value(zero.render(), OK) == 7
    assert value(one.render(), OK) == 8  # ... or at once when it answers the scrape itself


def test_a_replacement_carries_on_from_its_predecessors_counts(tmp_path: Path) -> None:
    _, zero = worker(tmp_path, 0, calls=3)
    _, dead = worker(tmp_path, 1, calls=10, pending=4)
    dead.snapshot()  # its last write; then kill -9
    before = value(zero.render(), OK)
    _, replacement = worker(tmp_path, 1, calls=1, pending=1)
    after = replacement.render()
    assert before == 13 and value(after, OK) == 14  # not 4: a drop would read as a counter reset
    assert value(after, 'learning_pilot_gateway_call_seconds_sum{endpoint="chat"}') == pytest.approx(14 * 0.03)
    assert value(after, "learning_pilot_gateway_spool_pending") == 1  # the dead one's present state is not carried
    _, second = worker(tmp_path, 1, calls=2)  # and the replacement's replacement carries both
    assert value(second.render(), OK) == 3 + 10 + 1 + 2


def test_an_unreadable_file_starts_that_worker_from_zero_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "worker-1.json").write_text('{"learning_pilot_gateway_calls": {"type": "counter"')  # torn
    _, zero = worker(tmp_path, 0, calls=2)
    assert value(zero.render(), OK) == 2  # the torn file is skipped, the scrape still answers
    assert value(zero.render(), "learning_pilot_gateway_workers") == 1
    with caplog.at_level(logging.WARNING):
        _, one = worker(tmp_path, 1, calls=1)
    assert "Unreadable metrics file" in caplog.text
    assert value(one.render(), OK) == 3
