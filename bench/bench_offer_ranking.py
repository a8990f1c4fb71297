"""Expected $ per run: ranking by expected total cost vs the naive "cheapest $/h with enough VRAM".

Both pick from the same eligible offers of tests/fixtures/vast_offers.json (same hard requirements); both picks are
then costed with the same model (tools/gpu/offers.py). Target: ranked / naive <= 0.8.

    python bench/bench_offer_ranking.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.gpu.offers import (  # noqa: E402
    JobShape,
    TuneMethod,
    cheapest_per_hour,
    expected_cost,
    rank_offers,
)
from tools.gpu.vast import offer_from_row  # noqa: E402

JOBS = {
    "1B LoRA, 5M tokens": JobShape(params_b=1, dataset_tokens=5_000_000),
    "3B LoRA, 30M tokens": JobShape(params_b=3, dataset_tokens=30_000_000),
    "7B QLoRA, 50M tokens": JobShape(params_b=7, method=TuneMethod.QLORA, dataset_tokens=50_000_000),
    "8B LoRA, 200M tokens": JobShape(params_b=8, dataset_tokens=200_000_000),
    "13B QLoRA, 100M tokens": JobShape(params_b=13, method=TuneMethod.QLORA, dataset_tokens=100_000_000),
}


def main() -> int:
    rows = json.loads((ROOT / "tests" / "fixtures" / "vast_offers.json").read_text())["offers"]
    offers = [offer_from_row(r) for r in rows]
    print(f"{len(offers)} offers; expected $ per run (retries included)\n")
    header = (
        f"{'job':<24}{'naive pick':<26}{'naive $':>9}  {'ranked pick':<28}{'ranked $':>10}{'ratio':>8}{'rank ms':>9}"
    )
    print(header)
    print("-" * len(header))
    ratios = []
    for name, job in JOBS.items():
        started = time.perf_counter()
        ranked = rank_offers(offers, job)
        elapsed_ms = (time.perf_counter() - started) * 1000
        naive = cheapest_per_hour(offers, job)
        if not ranked or naive is None:
            print(f"{name:<24}no eligible offer")
            continue
        best, best_cost = ranked[0]
        naive_cost = expected_cost(naive, job)
        ratio = best_cost.total_usd / naive_cost.total_usd
        ratios.append(ratio)
        naive_label = f" {naive.gpu_name} ${naive.dph_total:.2f}/h"
        best_label = f"  {best.num_gpus}x {best.gpu_name} ${best.dph_total:.2f}/h"
        print(
            f"{name:<24}{naive_label:<26}{naive_cost.total_usd:>9.2f}  {best_label:<28}"
            f"{best_cost.total_usd:>10.2f}{ratio:>8.2f}{elapsed_ms:>9.2f}"
        )
    if ratios:
        mean = sum(ratios) / len(ratios)
        print(f"\nmean ratio ranked/naive: {mean:.2f} (target <= 0.80); worst {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
