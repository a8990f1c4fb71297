"""Training cost per method: supervised LoRA (jobs/finetune_lora.py) vs DPO and KTO (jobs/preference.py) and GRPO
(jobs/grpo.py).

    python bench/bench_methods.py [--model PATH|tiny] [--steps N] [--batch-size B] [--price-per-hour USD]

All three get the same base weights, LoRA config, tasks, batch size (examples or pairs per step) and number of
optimizer steps. The data comes from one set of tasks: supervised trains on the right answers; DPO on
(right, wrong) pairs, the wrong answer being the source identifier copied unchanged (the failed records'
answer); KTO on the right answers (desirable) and the wrong ones (undesirable), two lines per task.

Figures per method: tokens/s (real, non-pad answer+prompt tokens the loop scored, as each job reports it: DPO
scores both answers of a pair, KTO also scores the mismatched pairs of its KL estimate but counts only its own
lines), seconds per optimizer step, and $ for the run = loop time x ``--price-per-hour``. The ratio of seconds
per step to supervised is what ``reinforcement.cost_factor_dpo`` / ``cost_factor_kto`` price a plan with.
On CPU (``tiny``) the figures are CPU figures: they show the ratio, not a GPU's throughput.

GRPO gets the same prompts with ``--generations`` (4) samples each and ``batch_size / generations`` prompts per
step, so a step trains on as many sequences as a supervised step; its s/step includes sampling
(``--max-new-tokens``, 32) and the sandboxed test runs (the host sandbox's "auto" kind, 2 at a time). Its tests
score the completion's text (length mod 2 and mod 3): the tiny base never solves the task, and all-zero rewards
would leave every group without variance, i.e. nothing to train on. Its tokens/s counts the prompt and
completion tokens trained on (zero-variance groups are skipped), so compare s/step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_finetune_throughput import bench_examples
from jobs import finetune_lora, grpo, preference
from jobs.common import choose_precision, load_base_model, load_tokenizer, pick_device, write_jsonl

METHODS = ("sft", "dpo", "kto", "grpo")
TEXT_TESTS = (
    "import sys\nsrc = open(sys.path[0] + '/solution.py').read()\n"
    "def test_even():\n    assert len(src) % 2 == 0\n"
    "def test_third():\n    assert len(src) % 3 == 0\n"
)


def method_files(rows: list[dict[str, Any]], d: Path) -> dict[str, Path]:
    sft, dpo, kto, rl = [], [], [], []
    for r in rows:
        prompt, answer = r["messages"][:1], r["messages"][1]["content"]
        copied = prompt[0]["content"].split("`")[1]  # the characteristic failure: the source unchanged
        sft.append(r)
        dpo.append({"id": r["id"], "prompt": prompt, "chosen": answer, "rejected": copied})
        kto.append({"id": r["id"], "prompt": prompt, "completion": answer, "label": True})
        kto.append({"id": r["id"] + "-bad", "prompt": prompt, "completion": copied, "label": False})
        rl.append({"prompt": prompt, "tests": TEXT_TESTS, "task_id": r["id"]})
    files = {m: d / f"{m}.jsonl" for m in METHODS}
    for name, lines in (("sft", sft), ("dpo", dpo), ("kto", kto), ("grpo", rl)):
        write_jsonl(files[name], lines)
    return files


def run(method: str, base: Any, tok: Any, train_file: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "base_model": "in-memory",
        "train_file": str(train_file),
        "output_dir": str(out),
        "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "learning_rate": 1e-4,
        "max_steps": args.steps,
        "heartbeat_every_s": 60.0,
    }
    if method == "sft":
        metrics, _ = finetune_lora.train(finetune_lora.parse_config(cfg), base=base, tokenizer=tok)
    elif method == "grpo":
        k = args.generations
        rl = {**cfg, "method": "grpo", "batch_size": max(1, args.batch_size // k), "num_generations": k,
              "max_new_tokens": args.max_new_tokens}  # fmt: skip
        metrics, _ = grpo.train(grpo.parse_config(rl), base=base, tokenizer=tok)
    else:
        metrics, _ = preference.train(preference.parse_config({**cfg, "method": method}), base=base, tokenizer=tok)
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="PATH or 'tiny'")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--generations", type=int, default=4, help="GRPO samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="GRPO sample length")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset (sft first)")
    parser.add_argument("--price-per-hour", type=float, default=2.0, help="USD per hour of the machine")
    args = parser.parse_args()

    from tests.helpers.tiny_model import tiny_base_model

    device = pick_device()
    _, dtype = choose_precision("auto", device)
    source = str(tiny_base_model()) if args.model == "tiny" else args.model
    tok = load_tokenizer(source)
    print(f"model={args.model} device={device} dtype={dtype} steps={args.steps} batch={args.batch_size} "
          f"examples={args.examples} price=${args.price_per_hour:.2f}/h")  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = method_files(bench_examples(args.examples, 1, seed=0), Path(tmp))
        for method in args.methods.split(","):
            base = load_base_model(source, dtype=dtype, device=device)
            m = run(method, base, tok, files[method], Path(tmp) / method, args)
            loop_s = m["train_tokens"] / m["tokens_per_s"] if m["tokens_per_s"] else m["duration_s"]
            results[method] = {"tokens_per_s": m["tokens_per_s"], "s_per_step": loop_s / m["steps"], "loop_s": loop_s}
    sft_step = results["sft"]["s_per_step"]
    print(f"{'method':<7}{'tokens/s':>12}{'s/step':>10}{'x sft':>8}{'$ per run':>12}")
    for method, r in results.items():
        usd = r["loop_s"] * args.price_per_hour / 3600
        print(f"{method:<7}{r['tokens_per_s']:>12,.0f}{r['s_per_step']:>10.3f}{r['s_per_step'] / sft_step:>8.2f}"
              f"{usd:>12.6f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
