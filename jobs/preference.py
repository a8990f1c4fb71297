"""Preference fine-tuning job: DPO or KTO with a LoRA adapter, on the supervised job's loop machinery.

    python -m jobs.preference --config CONFIG.json

The config is jobs/finetune_lora.py's (same keys, same checks; ``train_file`` holds preference lines) plus
``method`` ("dpo" | "kto"), ``beta`` (0.1), ``sft_weight`` (1.0), ``desirable_weight`` and
``undesirable_weight`` (1.0, KTO). Lines (subagents/data/preference.py writes them):
DPO ``{"prompt": [messages], "chosen": str, "rejected": str}``, KTO ``{"prompt": [messages], "completion": str,
"label": bool, "weight"?: float}``.

Invariants:
- The reference model is the base with the adapter disabled (``model.disable_adapter()``), not a second copy:
  one set of base weights in memory, and the reference is exactly what the adapter started from.
- Losses, per example, with log-ratios r = log pi(y|x) - log pi_ref(y|x) summed over the answer tokens:
  DPO ``-log sigmoid(beta * (r_chosen - r_rejected))`` (TRL's "sigmoid" loss); KTO, with z the detached,
  clamped-at-0 batch estimate of KL(pi || pi_ref) from mismatched prompt/completion pairs (the completion of
  the next example in the batch), ``desirable_weight * (1 - sigmoid(beta * (r - z)))`` for a desirable example
  and ``undesirable_weight * (1 - sigmoid(beta * (z - r)))`` for an undesirable one (TRL's KTO loss). With
  ``sft_weight`` > 0 the mean answer-token NLL of the chosen / desirable answers is added (TRL's ``rpo_alpha``
  for DPO): the adapter learns the good answers and, from the failures, what to move away from.
- Why not TRL's DPOTrainer/KTOTrainer (docs/reinforcement.md): their checkpoints are HF Trainer checkpoints
  (optimizer.pt, scheduler.pt, rng_state.pth: pickles) and their resume skips batches its own way; this job keeps
  the supervised job's guarantees unchanged for every method: checkpoints in safetensors with COMPLETE last,
  the same files (so remote_entry uploads and restores them), data order a pure function of (seed, step),
  SIGTERM finishing the step and checkpointing (exit 143), a heartbeat thread. The losses are TRL's formulas
  (TRL computes them inside its trainers, not as functions we could call).
- Padded batches (no packing): a pair's two answers are scored in one forward of 2B rows.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python jobs/preference.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from jobs.common import (
    EXIT_SIGTERM,
    JobConfigError,
    JobError,
    answer_token_nll,
    check_type,
    choose_precision,
    load_base_model,
    load_tokenizer,
    peak_memory_mb,
    pick_device,
    read_json,
    read_jsonl,
    render_chat,
    run_main,
    validate_messages,
    write_json_atomic,
)
from jobs.finetune_lora import (
    BatchPlan,
    Example,
    FinetuneConfig,
    Heartbeat,
    StopFlag,
    build_peft_model,
    collate,
    device_name,
    lr_factor,
    resolve_resume,
    restore_checkpoint,
    save_adapter,
    save_checkpoint,
)
from jobs.finetune_lora import parse_config as parse_finetune_config

METHODS = ("dpo", "kto")
_PREF_DEFAULTS: dict[str, Any] = {
    "method": "dpo",
    "beta": 0.1,
    "sft_weight": 1.0,
    "desirable_weight": 1.0,
    "undesirable_weight": 1.0,
}


@dataclass(frozen=True)
class PreferenceConfig:
    base: FinetuneConfig
    method: str = "dpo"
    beta: float = 0.1
    sft_weight: float = 1.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


def parse_config(raw: Any) -> PreferenceConfig:
    """The supervised job's checks on the shared keys, then the preference keys; a JobConfigError otherwise."""
    if not isinstance(raw, dict):
        raise JobConfigError("config must be a JSON object")
    pref = {k: raw.get(k, v) for k, v in _PREF_DEFAULTS.items()}
    shared = {k: v for k, v in raw.items() if k not in _PREF_DEFAULTS}
    if pref["method"] not in METHODS:
        raise JobConfigError(f"method must be one of {', '.join(METHODS)}; got {pref['method']!r}")
    for key in ("beta", "sft_weight", "desirable_weight", "undesirable_weight"):
        check_type(key, pref[key], (int, float))
    if pref["beta"] <= 0:
        raise JobConfigError("beta must be > 0")
    for key in ("sft_weight", "desirable_weight", "undesirable_weight"):
        if pref[key] < 0:
            raise JobConfigError(f"{key} must be >= 0")
    base = parse_finetune_config(shared)
    if base.eval_file is not None:
        raise JobConfigError("eval_file is not used by preference methods; the gate evaluates the candidate")
    if base.packing:
        raise JobConfigError("packing is not supported by preference methods (pairs are scored in padded rows)")
    return PreferenceConfig(base=base, **{k: float(v) if k != "method" else v for k, v in pref.items()})


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class PrefItem:
    """A DPO pair (``good`` and ``bad`` both set) or a KTO example (one of them set by ``label``)."""

    good: Example | None
    bad: Example | None
    weight: float


def _tokenise(tokenizer: Any, prompt: list[dict[str, str]], answer: str, seq_len: int) -> Example:
    r = render_chat(tokenizer, [*prompt, {"role": "assistant", "content": answer}], add_generation_prompt=False)
    ids, n_prompt = r.prompt_ids + r.answer_ids, len(r.prompt_ids)
    if len(ids) > seq_len:  # keep the answer (what is scored); drop the start of the prompt
        cut = len(ids) - seq_len
        ids, n_prompt = ids[cut:], max(0, n_prompt - cut)
    return Example(ids, n_prompt, 1.0)


def load_items(path: str, method: str, tokenizer: Any, seq_len: int) -> list[PrefItem]:
    rows = read_jsonl(path)
    if not rows:
        raise JobConfigError(f"{path} holds no examples")
    items: list[PrefItem] = []
    for i, row in enumerate(rows):
        where = f"{path} example {row.get('id', i)}"
        prompt = validate_messages(row.get("prompt"), f"{where}: prompt")
        weight = row.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise JobConfigError(f"{where}: weight must be a number >= 0")
        if method == "dpo":
            chosen, rejected = row.get("chosen"), row.get("rejected")
            if not isinstance(chosen, str) or not isinstance(rejected, str):
                raise JobConfigError(f"{where}: a DPO line needs string 'chosen' and 'rejected'")
            if chosen == rejected:
                raise JobConfigError(f"{where}: 'chosen' and 'rejected' are the same answer")
            good, bad = _tokenise(tokenizer, prompt, chosen, seq_len), _tokenise(tokenizer, prompt, rejected, seq_len)
            items.append(PrefItem(good, bad, float(weight)))
        else:
            completion, label = row.get("completion"), row.get("label")
            if not isinstance(completion, str) or not isinstance(label, bool):
                raise JobConfigError(f"{where}: a KTO line needs a string 'completion' and a boolean 'label'")
            ex = _tokenise(tokenizer, prompt, completion, seq_len)
            items.append(PrefItem(ex if label else None, None if label else ex, float(weight)))
    if method == "kto" and not any(it.good for it in items):
        raise JobConfigError(f"{path}: KTO needs at least one desirable example (label true)")
    if method == "kto" and not any(it.bad for it in items):
        raise JobConfigError(f"{path}: KTO needs at least one undesirable example (label false)")
    return items


def _mismatched(a: Example, b: Example) -> Example:
    """b's answer after a's prompt: a sample from the product of marginals, for KTO's KL estimate."""
    return Example(a.ids[: a.n_prompt] + b.ids[b.n_prompt :], a.n_prompt, 1.0)


# ---------------------------------------------------------------- losses


def sequence_logps(model: Any, examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token log-probs per example, answer tokens per example), in one padded forward."""
    mb = collate(examples, packing=False, pad_id=pad_id)
    device = next(model.parameters()).device
    nll, keep = answer_token_nll(
        model, mb.input_ids.to(device), mb.labels.to(device), attention_mask=mb.attention_mask.to(device)
    )
    rows = keep.nonzero()[:, 0]
    logp = torch.zeros(len(examples), device=nll.device).index_add(0, rows, -nll)
    count = torch.zeros(len(examples), device=nll.device).index_add(0, rows, torch.ones_like(nll))
    return logp, count


def dpo_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair DPO (sigmoid) loss from policy/reference log-probs of chosen and rejected answers."""
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


def kto_loss(
    ratio: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, beta: float, w_good: float, w_bad: float
) -> torch.Tensor:
    """Per-example KTO loss; ``ratio`` = policy - reference log-prob, ``kl`` the detached batch estimate."""
    good = w_good * (1 - torch.sigmoid(beta * (ratio - kl)))
    bad = w_bad * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(desirable, good, bad)


@dataclass
class StepStats:
    loss: float
    margin: float  # mean beta * (r_good - r_bad) (DPO) or beta * (r_good mean - r_bad mean) (KTO)
    accuracy: float | None  # DPO: share of pairs with r_chosen > r_rejected
    tokens: int


def preference_step(model: Any, items: list[PrefItem], cfg: PreferenceConfig, pad_id: int) -> StepStats:
    """Forward + backward of one micro-batch; the loss is the weighted mean over its items."""
    weights = torch.tensor([it.weight for it in items], device=next(model.parameters()).device)
    denom = max(float(weights.sum()), 1e-8)
    if cfg.method == "dpo":
        seqs = [it.good for it in items if it.good] + [it.bad for it in items if it.bad]
        n = len(items)
        with torch.no_grad(), model.disable_adapter():
            ref, _ = sequence_logps(model, seqs, pad_id)
        pol, count = sequence_logps(model, seqs, pad_id)
        per = dpo_loss(pol[:n], pol[n:], ref[:n], ref[n:], cfg.beta)
        sft = (-pol[:n] / count[:n].clamp(min=1)) if cfg.sft_weight else torch.zeros_like(per)
        loss = ((per + cfg.sft_weight * sft) * weights).sum() / denom
        diff = cfg.beta * ((pol[:n] - ref[:n]) - (pol[n:] - ref[n:])).detach()
        margin, accuracy = float(diff.mean()), float((diff > 0).float().mean())
    else:
        seqs = [it.good or it.bad for it in items]
        assert all(s is not None for s in seqs)
        exs = [s for s in seqs if s is not None]
        kl_exs = [_mismatched(exs[i], exs[(i + 1) % len(exs)]) for i in range(len(exs))]
        desirable = torch.tensor([it.good is not None for it in items], device=weights.device)
        with torch.no_grad():
            with model.disable_adapter():
                ref, _ = sequence_logps(model, exs + kl_exs, pad_id)
            pol_kl, _ = sequence_logps(model, kl_exs, pad_id)
        n = len(exs)
        kl = (pol_kl - ref[n:]).mean().clamp(min=0)
        pol, count = sequence_logps(model, exs, pad_id)
        ratio = pol - ref[:n]
        per = kto_loss(ratio, desirable, kl, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
        sft = torch.where(desirable, -pol / count.clamp(min=1), torch.zeros_like(pol))
        loss = ((per + cfg.sft_weight * sft) * weights).sum() / denom
        r = ratio.detach()
        good, bad = r[desirable], r[~desirable]
        both = len(good) and len(bad)
        margin = float(cfg.beta * (good.mean() - bad.mean())) if both else 0.0
        accuracy = None
    loss.backward()
    return StepStats(float(loss.detach()), margin, accuracy, sum(len(s.ids) for s in seqs if s))


# ---------------------------------------------------------------- the loop


def train(cfg: PreferenceConfig, *, base: Any = None, tokenizer: Any = None) -> tuple[dict[str, Any], int]:
    """Run the job; returns (metrics, exit code). ``base``/``tokenizer`` may be passed in (benchmarks)."""
    started = time.monotonic()
    b = cfg.base
    out = Path(b.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    precision, dtype = choose_precision(b.precision, device)
    if dtype == torch.float16:
        raise JobConfigError("precision fp16 is not supported by preference methods (use bf16 or fp32)")
    torch.manual_seed(b.seed)
    if tokenizer is None:
        tokenizer = load_tokenizer(b.base_model)
    items = load_items(b.train_file, cfg.method, tokenizer, b.seq_len)
    ckpt = resolve_resume(b)
    if base is None:
        base = load_base_model(b.base_model, dtype=dtype, device=device)
    model = build_peft_model(base, b)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=b.learning_rate, weight_decay=0.0)
    plan = BatchPlan(len(items), batch_size=b.batch_size, grad_accum=b.grad_accum, seed=b.seed)
    total_steps = b.max_steps or max(1, math.ceil(b.epochs * plan.steps_per_epoch))
    warmup = math.ceil(b.warmup_ratio * total_steps)
    pad_id = tokenizer.pad_token_id

    start_step = 0
    if ckpt is not None:
        method = read_json(ckpt / "trainer_state.json").get("method", cfg.method)
        if method != cfg.method:
            raise JobConfigError(f"checkpoint {ckpt} was written by method {method!r}, not {cfg.method!r}")
        start_step = int(restore_checkpoint(model, opt, ckpt, device)["step"])

    def state(step: int) -> dict[str, Any]:
        return {"step": step, "max_steps": total_steps, "seed": b.seed, "method": cfg.method}

    losses: list[float] = []
    margins: list[float] = []
    accuracies: list[float] = []
    tokens, step = 0, start_step
    loop_started = time.monotonic()
    with StopFlag() as stop, Heartbeat(out / "heartbeat.json", b.heartbeat_every_s, total_steps) as hb:
        hb.update(step, float("nan"))
        while step < total_steps and not stop.requested:
            for group in opt.param_groups:
                group["lr"] = b.learning_rate * lr_factor(step, total_steps, warmup, b.lr_schedule)
            micro = plan.micro_batches(step)
            step_loss = 0.0
            for idx in micro:
                with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
                    stats = preference_step(model, [items[i] for i in idx], cfg, pad_id)
                step_loss += stats.loss / len(micro)
                tokens += stats.tokens
                margins.append(stats.margin)
                if stats.accuracy is not None:
                    accuracies.append(stats.accuracy)
            if len(micro) > 1:
                for p in params:
                    if p.grad is not None:
                        p.grad /= len(micro)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(step_loss):
                raise JobError(f"training diverged at step {step + 1} (loss {step_loss})")
            step += 1
            losses.append(step_loss)
            hb.update(step, step_loss)
            if b.save_steps and step % b.save_steps == 0 and step < total_steps:
                save_checkpoint(model, opt, b.output_dir, state(step))
        loop_s = time.monotonic() - loop_started
        if stop.requested:
            save_checkpoint(model, opt, b.output_dir, state(step))
            return {"step": step, "stopped_by": "SIGTERM"}, EXIT_SIGTERM

    save_adapter(model, out)
    tail = losses[-10:]
    metrics = {
        "method": cfg.method,
        "train_loss": sum(tail) / len(tail) if tail else None,
        "eval_loss": None,
        "reward_margin": round(sum(margins[-10:]) / len(margins[-10:]), 4) if margins else None,
        "reward_accuracy": round(sum(accuracies[-10:]) / len(accuracies[-10:]), 4) if accuracies else None,
        "steps": step,
        "epochs": round(step * plan.per_step / len(items), 4),
        "train_examples": len(items),
        "train_tokens": tokens,
        "tokens_per_s": round(tokens / loop_s, 1) if loop_s > 0 else None,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "duration_s": round(time.monotonic() - started, 2),
        "precision": precision,
        "device": device_name(device),
        "resumed_from_step": start_step if ckpt is not None else None,
    }
    write_json_atomic(out / "metrics.json", metrics)
    return metrics, 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Preference (DPO / KTO) LoRA fine-tuning job")
    parser.add_argument("--config", required=True, help="path to the JSON config")
    args = parser.parse_args(argv)
    _, code = train(parse_config(read_json(args.config)))
    return code


if __name__ == "__main__":
    sys.exit(run_main(main))
