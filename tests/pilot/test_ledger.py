"""The ledger: reservations against caps, settlement, LLM spend on the same ledger."""

from __future__ import annotations

import pytest

from pilot.errors import BudgetError
from pilot.settings import BudgetSettings
from pilot.spend.ledger import record_spend, reserve, settle, spend_summary
from pilot.store import Store

CAPS = BudgetSettings(per_run_usd=5, per_day_usd=8, per_month_usd=20, max_dph=2)


def test_reservations_count_until_settled(store: Store) -> None:
    with store.session(write=True) as s:
        reserve(store, s, amount_usd=4, caps=CAPS, run_id="run-a")
    with store.session(write=True) as s:
        reserve(store, s, amount_usd=4, caps=CAPS, run_id="run-b")
    with pytest.raises(BudgetError, match="daily cap"), store.session(write=True) as s:
        reserve(store, s, amount_usd=0.5, caps=CAPS, run_id="run-c")
    with store.session(write=True) as s:
        settle(s, "run-a", 1.25)
    with store.session() as s:
        summary = spend_summary(s)
    assert summary.today_usd == pytest.approx(5.25)
    assert summary.reserved_usd == pytest.approx(4)
    with store.session(write=True) as s:
        reserve(store, s, amount_usd=2.5, caps=CAPS, run_id="run-c")


def test_per_run_cap(store: Store) -> None:
    with pytest.raises(BudgetError, match="per-run cap"), store.session(write=True) as s:
        reserve(store, s, amount_usd=5.01, caps=CAPS, run_id="run-a")
    with store.session() as s:
        assert spend_summary(s).today_usd == 0


def test_llm_spend_counts_against_the_same_caps(store: Store) -> None:
    with store.session(write=True) as s:
        record_spend(s, amount_usd=7.5, category="llm", note="decisions")
    with pytest.raises(BudgetError), store.session(write=True) as s:
        reserve(store, s, amount_usd=1, caps=CAPS, run_id="run-a")
