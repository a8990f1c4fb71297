"""Generation job: greedy predictions and reference NLL for every item of a snapshot file.

    python -m jobs.generate --config CONFIG.json

Config: {base_model, adapter (dir or null), input_file, output_file, max_new_tokens, batch_size}.

Invariants:
- The last assistant message of each item is the reference; the prompt is every message before it, rendered
  with the generation prompt exactly as the fine-tuning job renders it (jobs.common.render_chat).
- An item whose messages end with a user turn is a prompt alone (what a rented evaluation host gets: it never
  sees references, pilot/evaluation/remote.py): it gets a prediction and ``loss: null``.
- Decoding is greedy over left-padded batches, so a prediction does not depend on its batch neighbours beyond
  floating-point noise. A prediction is the new tokens up to the first EOS, decoded and stripped.
- ``loss`` is the teacher-forced mean NLL per reference token (answer tokens incl. the end-of-turn token).
- This job reports outputs only; scoring (exact match, gates) is the daemon's job. The adapter is loaded only
  through jobs.common.check_adapter_dir (safetensors only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python jobs/generate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from jobs.common import (
    JobConfigError,
    answer_token_nll,
    check_adapter_dir,
    check_type,
    choose_precision,
    load_adapter,
    load_base_model,
    load_tokenizer,
    pick_device,
    read_json,
    read_jsonl,
    render_chat,
    require_keys,
    run_main,
    validate_messages,
    write_json_atomic,
    write_jsonl,
)

_OPTIONAL = {"adapter": None, "max_new_tokens": 32, "batch_size": 16}


def parse_config(raw: Any) -> dict[str, Any]:
    c = require_keys(raw, required=("base_model", "input_file", "output_file"), optional=_OPTIONAL)
    for key in ("base_model", "input_file", "output_file"):
        check_type(key, c[key], str)
    check_type("adapter", c["adapter"], str, nullable=True)
    for key in ("max_new_tokens", "batch_size"):
        check_type(key, c[key], int)
        if c[key] <= 0:
            raise JobConfigError(f"{key} must be > 0, got {c[key]}")
    return c


def split_item(row: dict[str, Any], index: int) -> tuple[str, list[dict[str, str]], list[dict[str, str]] | None]:
    """(id, prompt messages, prompt + reference messages or None for a prompt alone) of one snapshot item."""
    item_id = str(row.get("id", index))
    messages = validate_messages(row.get("messages"), f"item {item_id}")
    if messages and messages[-1]["role"] == "user":
        return item_id, messages, None
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        raise JobConfigError(f"item {item_id}: needs a prompt and an assistant reference message, or a prompt alone")
    return item_id, messages[:last], messages[: last + 1]


@torch.no_grad()
def generate_batch(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every prompt ends at the same column
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
    )
    preds = []
    for row in out[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        preds.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return preds


@torch.no_grad()
def reference_losses(model: Any, tokenizer: Any, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
    device = next(model.parameters()).device
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (p, a) in enumerate(pairs):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
        mask[i, : len(p) + len(a)] = 1
    nll, keep = answer_token_nll(model, ids.to(device), labels.to(device), attention_mask=mask.to(device))
    counts = keep.sum(dim=1).tolist()
    losses, start = [], 0
    for n in counts:
        losses.append(float(nll[start : start + n].mean()) if n else float("nan"))
        start += n
    return losses


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    device = pick_device()
    _, dtype = choose_precision("auto", device)
    tokenizer = load_tokenizer(cfg["base_model"])
    rows = read_jsonl(cfg["input_file"])
    items = [split_item(row, i) for i, row in enumerate(rows)]
    if cfg["adapter"] is not None:
        check_adapter_dir(cfg["adapter"])  # refuse before spending time on the base model
    model = load_base_model(cfg["base_model"], dtype=dtype, device=device)
    if cfg["adapter"] is not None:
        model = load_adapter(model, cfg["adapter"])
    model.eval()
    results = []
    bs = cfg["batch_size"]
    for start in range(0, len(items), bs):
        chunk = items[start : start + bs]
        prompts = [render_chat(tokenizer, p, add_generation_prompt=True).prompt_ids for _, p, _ in chunk]
        preds = generate_batch(model, tokenizer, prompts, cfg["max_new_tokens"])
        with_reference = [(i, f) for i, (_, _, f) in enumerate(chunk) if f is not None]
        full = [render_chat(tokenizer, f, add_generation_prompt=False) for _, f in with_reference]
        losses: list[float | None] = [None] * len(chunk)
        if full:
            computed = reference_losses(model, tokenizer, [(r.prompt_ids, r.answer_ids) for r in full])
            for (i, _), loss in zip(with_reference, computed, strict=True):
                losses[i] = loss
        for (item_id, _, _), pred, item_loss in zip(chunk, preds, losses, strict=True):
            results.append({"id": item_id, "prediction": pred, "loss": item_loss})
    write_jsonl(cfg["output_file"], results)
    known = [r["loss"] for r in results if r["loss"] is not None]
    summary = {
        "items": len(results),
        "eval_loss": sum(known) / len(known) if known else None,
        "duration_s": round(time.monotonic() - started, 2),
        "adapter": cfg["adapter"],
    }
    write_json_atomic(f"{cfg['output_file']}.summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="greedy generation + reference NLL")
    parser.add_argument("--config", required=True, help="path to the JSON config")
    args = parser.parse_args(argv)
    run(parse_config(read_json(args.config)))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
