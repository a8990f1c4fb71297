"""Budget caps under concurrency: >= 50 reservations launched at once, from threads and from processes, on
SQLite and PostgreSQL; the committed total never exceeds the cap. Plus the live-burn stop check."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func
from sqlmodel import select

from pilot.errors import BudgetError
from pilot.settings import BudgetSettings
from pilot.spend.costs import burn_exceeds_reservation
from pilot.spend.ledger import reserve
from pilot.store import Store
from pilot.store.models import SpendEntry, TrainingRun, utcnow

CAPS = BudgetSettings(per_run_usd=5.0, per_day_usd=10.0, per_month_usd=100.0, max_dph=3.0)
AMOUNT = 0.75  # 13 fit under the $10 daily cap, 50+ attempts do not


def _attempts(url: str, n: int, start_at: float) -> int:
    """``n`` threads, each one reservation, released together at ``start_at``; returns how many succeeded."""
    store = Store(url)
    ok = 0
    lock = threading.Lock()

    def attempt() -> None:
        nonlocal ok
        time.sleep(max(start_at - time.time(), 0))
        try:
            with store.session(write=True) as session:
                reserve(store, session, amount_usd=AMOUNT, caps=CAPS, run_id=None, note="race")
        except BudgetError:
            return
        with lock:
            ok += 1

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    store.close()
    return ok


def _committed(store: Store) -> float:
    with store.session() as session:
        return float(session.exec(select(func.coalesce(func.sum(SpendEntry.amount_usd), 0.0))).one())


def test_threads_never_exceed_the_daily_cap(store: Store) -> None:
    ok = _attempts(store.url, 60, time.time() + 0.2)
    assert ok == int(CAPS.per_day_usd // AMOUNT)  # exactly as many as fit: none lost, none extra
    assert _committed(store) <= CAPS.per_day_usd + 1e-9


def test_processes_never_exceed_the_daily_cap(store: Store) -> None:
    start_at = time.time() + 4.0  # time for the workers to spawn and import; then all go at once
    with ProcessPoolExecutor(max_workers=5, mp_context=multiprocessing.get_context("spawn")) as pool:
        oks = list(pool.map(_attempts, [store.url] * 5, [11] * 5, [start_at] * 5))
    assert sum(oks) == int(CAPS.per_day_usd // AMOUNT)
    assert _committed(store) <= CAPS.per_day_usd + 1e-9


@pytest.mark.parametrize(
    ("dph", "minutes", "reserved", "expected"),
    [
        (1.0, 30, 1.0, False),  # $0.50 burned of $1.00, $0.67 ten minutes from now
        (1.0, 61, 1.0, True),  # burned past the reservation
        (2.0, 55, 2.0, True),  # projected: $1.83 so far, $2.17 ten minutes from now
        (0.0, 600, 1.0, False),  # a free local machine never burns
    ],
)
def test_burn_exceeds_reservation(dph: float, minutes: float, reserved: float, expected: bool) -> None:
    now = utcnow()
    run = TrainingRun(
        id="run-1",
        decision_id="d",
        snapshot_id="s",
        status="running",
        provider="fake",
        label="x",
        dph=dph,
        estimated_cost_usd=reserved,
        started_at=now - timedelta(minutes=minutes),
    )
    assert burn_exceeds_reservation(run, now, horizon_s=600) is expected
