"""The training plan ranks rented offers by the expected total cost of the job, not by $/h."""

from __future__ import annotations

import json
from pathlib import Path

from subagents.training import TrainingParams, plan_training, requirements_for
from tools.gpu.offers import JobShape, expected_cost
from tools.gpu.vast import offer_from_row

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vast_offers.json"


def params(**overrides: object) -> TrainingParams:
    base: dict[str, object] = dict(
        base_model="meta-llama/Llama-3.1-8B-Instruct",
        base_model_params_b=8.0,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=["q_proj", "v_proj"],
        modules_to_save=[],
        seq_len=1024,
        batch_size=8,
        grad_accum=1,
        learning_rate=2e-4,
        max_steps=None,
        epochs=2.0,
        warmup_ratio=0.05,
        seed=0,
        tokens_per_second_estimate=2500.0,
    )
    base.update(overrides)
    return TrainingParams(**base)  # type: ignore[arg-type]


def offers() -> list:  # type: ignore[type-arg]
    data = json.loads(FIXTURE.read_text())
    rows = data["offers"] if isinstance(data, dict) else data
    return [offer_from_row(row) for row in rows]


def test_remote_plan_picks_the_lowest_expected_total_not_the_lowest_dph() -> None:
    p = params()
    book = [o for o in offers() if o.gpu_ram_gb >= requirements_for(p, max_dph=10).min_gpu_ram_gb]
    plan = plan_training(p, book, train_examples=50_000, train_tokens=40_000_000, remote=True)
    assert plan is not None
    job = JobShape(params_b=8.0, seq_len=1024, batch_size=8, dataset_tokens=40_000_000, epochs=2.0, lora_rank=16)
    totals = [expected_cost(o, job).total_usd for o in book]
    assert plan.estimated_cost_usd == round(min(totals), 4)
    cheapest_dph = min(book, key=lambda o: o.dph_total)
    assert plan.estimated_cost_usd <= round(expected_cost(cheapest_dph, job).total_usd, 4)
    assert {"compute_usd", "storage_usd", "bandwidth_usd", "retry_usd", "cheapest_dph"} <= set(plan.figures)


def test_small_models_run_anywhere_and_local_plans_use_the_throughput_estimate() -> None:
    p = params(base_model_params_b=0.001, max_steps=100, batch_size=32, seq_len=64)
    assert requirements_for(p, max_dph=1).min_gpu_ram_gb == 0
    from tools.gpu.base import Offer

    local = Offer(id="local", gpu_name="local", num_gpus=1, gpu_ram_gb=0, dph_total=0.0)
    plan = plan_training(p, [local], train_examples=800, train_tokens=20_000, remote=False)
    assert plan is not None and plan.estimated_cost_usd == 0 and plan.offer.id == "local"
