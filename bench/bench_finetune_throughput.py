"""Training throughput: jobs/finetune_lora.py's loop vs a stock HF Trainer + peft, and vs TRL's SFTTrainer (packing,
completion-only loss) when ``trl`` is installed (it is not a dependency: ``pip install -c constraints.txt trl``).

    python bench/bench_finetune_throughput.py [--model PATH|tiny|7b-shape] [--steps N] [--batch-size B]

All sides get the same base weights, LoRA config, examples, batch size and number of optimizer steps; the
figure is real (non-pad) input tokens per second of the training loop. ``tiny`` uses the cached tiny base
(CPU-sized); ``7b-shape`` builds a random-weight Llama-7B-shaped model (bf16, needs a GPU with ~40 GB);
a path loads a local model directory. Our loop runs twice, with padded batches (the job's default, against the
Trainer's padded batches) and with packing (against TRL's packing); prints the figures and the ratios.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from jobs import finetune_lora
from jobs.build_base_model import STYLES, WORDS, format_identifier
from jobs.common import choose_precision, load_base_model, load_tokenizer, pick_device, write_jsonl


def bench_examples(n: int, per_prompt: int, seed: int) -> list[dict[str, Any]]:
    """Demo-task-like examples; ``per_prompt`` identifiers per example make sequences longer for big models."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pairs = []
        for _ in range(per_prompt):
            words = rng.sample(WORDS, 3)
            src, dst = rng.sample(list(STYLES), 2)
            pairs.append((format_identifier(words, src), dst, format_identifier(words, dst)))
        prompt = " ".join(f"Rename the identifier `{s}` to {d}." for s, d, _ in pairs)
        answer = " ".join(a for _, _, a in pairs)
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        rows.append({"id": f"b{i}", "domain": "bench", "weight": 1.0, "messages": msgs})
    return rows


def make_7b_shape(tokenizer: Any, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model


def run_ours(base: Any, tok: Any, train_file: Path, out: Path, args: argparse.Namespace, *, packing: bool) -> float:
    cfg = finetune_lora.parse_config(
        {
            "base_model": "in-memory",
            "train_file": str(train_file),
            "output_dir": str(out),
            "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
            "seq_len": args.seq_len,
            "packing": packing,
            "batch_size": args.batch_size,
            "learning_rate": 1e-4,
            "max_steps": args.steps,
            "heartbeat_every_s": 60.0,
            "gradient_checkpointing": args.gradient_checkpointing,
        }
    )
    metrics, _ = finetune_lora.train(cfg, base=base, tokenizer=tok)
    return float(metrics["tokens_per_s"])


class _Tokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def _trainer_args(output_dir: str, args: argparse.Namespace, *, batch_size: int) -> dict[str, Any]:
    """The keyword arguments both HF-based sides share (TRL's SFTConfig extends TrainingArguments)."""
    device = pick_device()
    precision, _ = choose_precision("auto", device)
    return {
        "output_dir": output_dir,
        "max_steps": args.steps,
        "per_device_train_batch_size": batch_size,
        "learning_rate": 1e-4,
        "report_to": "none",
        "save_strategy": "no",
        "logging_strategy": "no",
        "use_cpu": device.type == "cpu",
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "gradient_checkpointing": args.gradient_checkpointing,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def run_trainer(base: Any, tok: Any, examples: list[finetune_lora.Example], args: argparse.Namespace) -> float:
    """Stock path: Trainer + peft, padded batches, answer-only labels (the usual SFT setup)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from jobs.common import quiet_peft_deprecations

    rows = [{"input_ids": e.ids, "labels": [-100] * e.n_prompt + e.ids[e.n_prompt :]} for e in examples]
    tokens_seen = 0

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        nonlocal tokens_seen
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
            tokens_seen += n
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    with quiet_peft_deprecations():
        model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(**_trainer_args(tmp, args, batch_size=args.batch_size))
        trainer = Trainer(model=model, args=targs, train_dataset=_Tokens(rows), data_collator=collate)
        started = time.monotonic()
        trainer.train()
        elapsed = time.monotonic() - started
    model.unload()  # give the base back without LoRA layers
    return tokens_seen / elapsed


def run_trl(base: Any, tok: Any, examples: list[finetune_lora.Example], args: argparse.Namespace) -> float | None:
    """TRL's SFTTrainer + peft on the same tokens: packed (TRL's default best-fit strategy, padding-free), loss on the
    answers only (the ``completion_mask`` of each example). None when trl is not installed.

    One packed row of ``seq_len`` tokens per step, as our loop packs one micro-batch into one row: with
    ``batch_size`` rows TRL's padding-free collator flattens them into a single row of batch x seq_len tokens, whose
    attention mask alone is quadratic in that (minutes per step on a CPU), and a step would see 30x our tokens."""
    try:
        from datasets import Dataset
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        return None
    rows = {
        "input_ids": [e.ids for e in examples],
        "completion_mask": [[0] * e.n_prompt + [1] * (len(e.ids) - e.n_prompt) for e in examples],
    }
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            **_trainer_args(tmp, args, batch_size=1),
            packing=True,
            completion_only_loss=True,
            max_length=args.seq_len,
        )
        trainer = SFTTrainer(
            model=base,
            args=config,
            train_dataset=Dataset.from_dict(rows),
            processing_class=tok,
            peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
        )
        packed = trainer.train_dataset
        consumed = [packed[i % len(packed)]["input_ids"] for i in range(args.steps)]
        started = time.monotonic()
        trainer.train()
        elapsed = time.monotonic() - started
    return sum(len(ids) for ids in consumed) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="PATH, 'tiny' or '7b-shape'")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--per-prompt", type=int, default=1, help="identifiers per example (longer sequences)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    from tests.helpers.tiny_model import tiny_base_model

    device = pick_device()
    _, dtype = choose_precision("auto", device)
    tiny = tiny_base_model()
    tok_source = str(tiny) if args.model in ("tiny", "7b-shape") else args.model
    tok = load_tokenizer(tok_source)

    def fresh_base() -> Any:
        if args.model == "7b-shape":
            torch.manual_seed(0)
            return make_7b_shape(tok, device, dtype)
        return load_base_model(tok_source, dtype=dtype, device=device)

    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.jsonl"
        write_jsonl(train_file, bench_examples(args.examples, args.per_prompt, seed=0))
        examples = finetune_lora.load_examples(str(train_file), tok, args.seq_len)
        n_tokens = sum(len(e.ids) for e in examples) / len(examples)
        print(f"model={args.model} device={device} dtype={dtype} steps={args.steps} batch={args.batch_size}")
        print(f"mean example length: {n_tokens:.1f} tokens")
        figures = {}
        for packing in (False, True):  # padded batches are the job's default; packing is its option
            base = fresh_base()
            figures[packing] = run_ours(base, tok, train_file, Path(tmp) / f"ours-{packing}", args, packing=packing)
            del base
            if device.type == "cuda":
                torch.cuda.empty_cache()
        theirs = run_trainer(fresh_base(), tok, examples, args)
        trl = run_trl(fresh_base(), tok, examples, args)
    ours, packed = figures[False], figures[True]
    print(f"finetune_lora loop, padded batches (the default): {ours:,.0f} tokens/s")
    print(f"HF Trainer + peft, padded batches:               {theirs:,.0f} tokens/s")
    print(f"ratio (ours / Trainer): {ours / theirs:.2f}x")
    print(f"finetune_lora loop, packing (one row per micro-batch): {packed:,.0f} tokens/s")
    if trl is None:
        print("TRL SFTTrainer: not measured (trl is not installed)")
    else:
        print(f"TRL SFTTrainer (packing, completion-only loss):        {trl:,.0f} tokens/s")
        print(f"ratio (ours packed / TRL SFTTrainer): {packed / trl:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
