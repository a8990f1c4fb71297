"""Offer requirements and ranking by expected total cost (tools/gpu/offers.py), on the realistic fixture."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.gpu.base import Offer
from tools.gpu.offers import (
    JobShape,
    TuneMethod,
    cheapest_per_hour,
    eligible,
    estimate_vram_gb,
    expected_cost,
    rank_offers,
    requirements_for,
)
from tools.gpu.vast import offer_from_row

FIXTURE = Path(__file__).parent.parent / "fixtures" / "vast_offers.json"
ROWS = json.loads(FIXTURE.read_text())["offers"]
OFFERS = [offer_from_row(r) for r in ROWS]


def make_offer(**overrides: object) -> Offer:
    base = Offer(
        id="1",
        gpu_name="RTX 4090",
        num_gpus=1,
        gpu_ram_gb=23.99,
        dph_total=0.40,
        storage_cost_per_gb_month=0.15,
        reliability=0.99,
        cuda_max_good=12.4,
        inet_down_mbps=1000,
        disk_gb=500,
        dlperf=60,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_fixture_is_a_realistic_offer_book() -> None:
    assert len(ROWS) >= 50
    names = {r["gpu_name"] for r in ROWS}
    assert {"RTX 4090", "RTX 3090", "A100 SXM4", "H100 SXM"} <= names
    for row in ROWS:
        assert row["dph_total"] == pytest.approx(row["dph_base"] + row["storage_cost"] * 5 / 720, rel=1e-4)
        assert 0.8 < row["reliability2"] < 1 and row["gpu_ram"] > 8000 and "hosting_type" in row
        assert row["geolocation"][-2:].isupper() and row["verification"] in ("verified", "unverified")
    assert {r["num_gpus"] for r in ROWS} >= {1, 2, 8}


def test_vram_estimate_is_plausible_and_monotone() -> None:
    seven_lora = estimate_vram_gb(7, TuneMethod.LORA, 2048, 4)
    seven_qlora = estimate_vram_gb(7, TuneMethod.QLORA, 2048, 4)
    assert 16 < seven_lora < 26  # bf16 7B weights alone are 13 GiB
    assert 6 < seven_qlora < 12
    assert estimate_vram_gb(13, "lora", 2048, 4) > seven_lora
    assert estimate_vram_gb(7, "lora", 4096, 4) > seven_lora
    assert estimate_vram_gb(7, "lora", 2048, 8) > seven_lora
    assert estimate_vram_gb(70, "qlora", 2048, 1) > 40
    with pytest.raises(ValueError):
        estimate_vram_gb(0, "lora", 2048, 4)


def test_requirements_for_a_job() -> None:
    job = JobShape(params_b=7, method=TuneMethod.QLORA, max_dph=2.0, min_reliability=0.95)
    req = requirements_for(job)
    assert req.min_gpu_ram_gb == pytest.approx(estimate_vram_gb(7, "qlora", 2048, 4), abs=0.1)
    assert req.min_disk_gb >= 7 * 2 + 20 and req.max_dph == 2.0 and req.min_reliability == 0.95
    assert req.min_cuda == 12.1 and req.verified


def test_expected_cost_components_follow_vast_billing() -> None:
    job = JobShape(params_b=1, dataset_tokens=20_000_000, disk_gb=40, download_gb=2, upload_gb=0)
    offer = make_offer(
        reliability=1.0, inet_down_cost_per_gb=0.01, raw={"dph_base": 0.40 - 0.15 * 40 / 720, "inet_up": 1000}
    )
    cost = expected_cost(offer, job)
    storage_rate = 0.15 * 40 / 720
    assert cost.bandwidth_usd == pytest.approx(0.02)
    assert cost.p_fail == 0 and cost.retry_usd == 0
    assert cost.storage_usd == pytest.approx(storage_rate * cost.hours)
    assert cost.compute_usd == pytest.approx((0.40 - storage_rate) * (cost.hours - 0.1))  # no GPU bill while booting
    assert cost.total_usd == pytest.approx(cost.compute_usd + cost.storage_usd + cost.bandwidth_usd)
    flaky = expected_cost(replace(offer, reliability=0.8), job)
    assert flaky.retry_usd > 0 and flaky.total_usd > cost.total_usd
    slow_host = expected_cost(replace(offer, dlperf=30), job)  # half the usual DLPerf for a 4090
    assert slow_host.hours > cost.hours


def test_ranking_is_by_total_cost_not_by_hourly_price() -> None:
    job = JobShape(params_b=7, dataset_tokens=200_000_000, min_reliability=0.9)
    cheap_slow = make_offer(id="3090", gpu_name="RTX 3090", gpu_ram_gb=24, dph_total=0.20, dlperf=24)
    pricey_fast = make_offer(id="h100", gpu_name="H100 SXM", gpu_ram_gb=79.6, dph_total=2.0, dlperf=200)
    too_small = make_offer(id="3060", gpu_name="RTX 3060", gpu_ram_gb=12, dph_total=0.05, dlperf=9)
    ranked = rank_offers([cheap_slow, pricey_fast, too_small], job)
    assert [o.id for o, _ in ranked] == ["h100", "3090"]
    assert cheapest_per_hour([cheap_slow, pricey_fast, too_small], job) == cheap_slow
    assert ranked[0][1].total_usd < ranked[1][1].total_usd


def test_ranking_on_the_fixture_beats_the_naive_choice() -> None:
    for job in (
        JobShape(params_b=1, dataset_tokens=5_000_000),
        JobShape(params_b=7, method=TuneMethod.QLORA, dataset_tokens=50_000_000),
        JobShape(params_b=8, dataset_tokens=200_000_000),
    ):
        ranked = rank_offers(OFFERS, job)
        naive = cheapest_per_hour(OFFERS, job)
        assert ranked and naive is not None
        requirements = requirements_for(job)
        assert all(eligible(o, requirements) for o, _ in ranked)
        assert ranked[0][1].total_usd <= expected_cost(naive, job).total_usd


@settings(max_examples=60, deadline=None)
@given(
    params_b=st.floats(0.5, 70),
    tokens=st.integers(100_000, 500_000_000),
    reliability=st.floats(0.5, 1.0),
    method=st.sampled_from(list(TuneMethod)),
)
def test_expected_cost_is_finite_positive_and_grows_with_data(
    params_b: float, tokens: int, reliability: float, method: TuneMethod
) -> None:
    job = JobShape(params_b=params_b, method=method, dataset_tokens=tokens)
    offer = make_offer(reliability=reliability)
    cost = expected_cost(offer, job)
    assert 0 < cost.total_usd < 1e6 and 0 <= cost.p_fail <= 0.95
    bigger = expected_cost(offer, replace(job, dataset_tokens=tokens * 2))
    assert bigger.total_usd > cost.total_usd
