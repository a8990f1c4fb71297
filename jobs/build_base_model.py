"""Build the small local base model used by the demo and the tests, fully offline.

    python -m jobs.build_base_model --out DIR [--steps N] [--seed S]

What it builds (all deterministic for a given seed):
- a byte-level BPE tokenizer trained with ``tokenizers`` on generated text, special tokens <pad> <s> </s> <unk>,
  wrapped as PreTrainedTokenizerFast with a chat template "<s>User: ...\\nAssistant: ...</s>";
- a Llama-style model (hidden 128, 2 layers, 4 heads, FFN 512, untied embeddings, ~0.4M parameters),
  pre-trained briefly on *copy* instructions ("Repeat the identifier `x`." -> "x", in all five identifier
  styles and several phrasings). Copying from the prompt is the skill later LoRA fine-tuning builds on; the
  base never sees a style conversion, so it does not solve the demo task (exact match there is ~0).

Pre-training runs on ``BUILD_THREADS`` intra-op threads whatever OMP_NUM_THREADS says: the number of threads
changes how float sums are split (1 and 2 threads: 3.5e-6 apart after 30 steps, enough after 600 to move the
efficacy tests' figures), and the tests cache the base by the hash of this code alone.

DIR receives model.safetensors + config.json, the tokenizer files and build_info.json. The output directory
is written in a temporary sibling and renamed into place, so DIR is complete or absent.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python jobs/build_base_model.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from jobs.common import JobConfigError, render_chat, run_main, write_json_atomic

# The demo task's vocabulary: short words common in code identifiers.
WORDS: tuple[str, ...] = (
    "user", "id", "map", "count", "cache", "file", "path", "name", "list", "item", "index", "token",
    "request", "response", "buffer", "config", "key", "value", "error", "retry", "timeout", "max", "min",
    "size", "data", "node", "tree", "queue", "stack", "event", "handler", "client", "server", "session",
    "port", "host", "url", "query", "result", "status", "state", "input", "output", "line", "text", "byte",
    "page", "total", "limit", "offset", "start", "end", "time", "date", "log", "level", "mode", "flag",
    "type", "group", "rate", "job", "task", "hash",
)  # fmt: skip

# style name as written in prompts -> domain of the demo task
STYLES: dict[str, str] = {
    "snake_case": "python-naming",
    "camelCase": "js-naming",
    "PascalCase": "classes",
    "kebab-case": "cli-flags",
    "UPPER_SNAKE_CASE": "constants",
}

COPY_PROMPTS: tuple[str, ...] = (
    "Repeat the identifier `{x}`.",
    "Repeat the {style} identifier `{x}`.",
    "Copy the identifier `{x}` exactly.",
    "Write the identifier `{x}` again.",
    "Echo `{x}`.",
    "Return the identifier `{x}` unchanged.",
)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}Assistant: {{ m['content'] }}{{ eos_token }}"
    "{% else %}User: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)

DEFAULT_STEPS = 600
DEFAULT_SEED = 0
BUILD_THREADS = 2  # intra-op threads of the pre-training, fixed so the built weights do not depend on the host
VOCAB_SIZE = 320
BATCH_SIZE = 32
LEARNING_RATE = 3e-3


def format_identifier(words: Sequence[str], style: str) -> str:
    match style:
        case "snake_case":
            return "_".join(words)
        case "camelCase":
            return words[0] + "".join(w.capitalize() for w in words[1:])
        case "PascalCase":
            return "".join(w.capitalize() for w in words)
        case "kebab-case":
            return "-".join(words)
        case "UPPER_SNAKE_CASE":
            return "_".join(words).upper()
    raise ValueError(f"unknown style {style!r}")


def random_words(rng: random.Random) -> list[str]:
    return rng.sample(WORDS, rng.choice((2, 3)))


def copy_example(rng: random.Random) -> list[dict[str, str]]:
    style = rng.choice(list(STYLES))
    x = format_identifier(random_words(rng), style)
    prompt = rng.choice(COPY_PROMPTS).format(x=x, style=style)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": x}]


def _tokenizer_corpus(rng: random.Random, n: int) -> list[str]:
    """Text for the BPE merges only (the model never trains on the rename lines)."""
    lines = []
    for _ in range(n):
        m = copy_example(rng)
        lines.append(f"User: {m[0]['content']}\nAssistant: {m[1]['content']}")
        words = random_words(rng)
        src, dst = rng.sample(list(STYLES), 2)
        lines.append(f"User: Rename the identifier `{format_identifier(words, src)}` to {dst}.\nAssistant:")
    return lines


def build_tokenizer(seed: int) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(random.Random(seed + 1), 2000), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, tokenizer: object) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
    )
    return LlamaForCausalLM(config)


def pretrain(model: torch.nn.Module, tokenizer: object, *, steps: int, seed: int) -> list[float]:
    """Full-sequence LM loss on copy dialogues, padded batches, AdamW with warmup + linear decay."""
    rng = random.Random(seed + 2)
    pad = tokenizer.pad_token_id  # type: ignore[attr-defined]
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    warmup = max(1, steps // 10)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        seqs = []
        for _ in range(BATCH_SIZE):
            r = render_chat(tokenizer, copy_example(rng), add_generation_prompt=False)
            seqs.append(r.prompt_ids + r.answer_ids)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        lr_scale = (step + 1) / warmup if step < warmup else max(0.0, (steps - step) / max(1, steps - warmup))
        for group in opt.param_groups:
            group["lr"] = LEARNING_RATE * lr_scale
        out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
    model.eval()
    return losses


def build(out_dir: Path, *, steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED) -> dict[str, object]:
    """Build the base model into ``out_dir`` (replaced atomically) and return the build info."""
    if steps < 0:
        raise JobConfigError("--steps must be >= 0")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.monotonic()
    random.seed(seed)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(seed)
    model = build_model(len(tokenizer), tokenizer)  # type: ignore[arg-type]
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        losses = pretrain(model, tokenizer, steps=steps, seed=seed)
    finally:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)  # type: ignore[attr-defined]
    info: dict[str, object] = {
        "kind": "tiny-llama-copy-pretrained",
        "seed": seed,
        "pretrain_steps": steps,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "vocab_size": len(tokenizer),  # type: ignore[arg-type]
        "parameters": sum(p.numel() for p in model.parameters()),
        "first_loss": losses[0] if losses else None,
        "final_loss": (sum(losses[-10:]) / len(losses[-10:])) if losses else None,
        "duration_s": round(time.monotonic() - started, 2),
        "threads": BUILD_THREADS,
        "torch": torch.__version__,
    }
    write_json_atomic(tmp / "build_info.json", info)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory (replaced)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="pre-training steps")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    info = build(args.out, steps=args.steps, seed=args.seed)
    print(f"built {args.out} in {info['duration_s']} s (final loss {info['final_loss']})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
