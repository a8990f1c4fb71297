"""LoRA fine-tuning job: a lean custom torch loop (no HF Trainer).

    python -m jobs.finetune_lora --config CONFIG.json

Invariants:
- Loss is taken on assistant answer tokens only, each token weighted by its example's ``weight``; the step
  loss is sum(weight * nll) / (answer tokens in the step), so weight 0 drops an example and 2 counts it twice.
- With ``packing`` a micro-batch is one padding-free row: examples are concatenated and ``position_ids``
  restart at 0 for each, which makes transformers apply a block-diagonal causal mask (no cross-example
  attention, no pad tokens).
- The data order is a pure function of (seed, step): epoch e uses a permutation seeded with (seed, e). A
  resumed run therefore sees exactly the batches the uninterrupted run would have seen.
- Checkpoints: output_dir/checkpoints/step-N/ holds the adapter (safetensors), optimizer.safetensors,
  rng_state.safetensors and trainer_state.json; the file COMPLETE is written last and only a directory with it
  is resumed from. Nothing is pickled. The optimizer (AdamW) state is restored too, so resuming continues the
  same trajectory (up to floating-point nondeterminism).
- SIGTERM: the current step finishes, a checkpoint is written (COMPLETE last), and the process exits 143.
- heartbeat.json is rewritten atomically by a background thread every heartbeat_every_s, so a slow step does
  not look like a dead host.
- With an eval_file, the adapter saved to output_dir/adapter is the one with the best eval loss.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as `python jobs/finetune_lora.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

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
    quiet_peft_deprecations,
    read_json,
    read_jsonl,
    render_chat,
    require_keys,
    run_main,
    validate_messages,
    write_json_atomic,
)

LR_SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# ---------------------------------------------------------------- config


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    modules_to_save: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FinetuneConfig:
    base_model: str
    train_file: str
    output_dir: str
    eval_file: str | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)
    seq_len: int = 512
    packing: bool = False
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.03
    lr_schedule: str = "linear"
    max_steps: int | None = None
    epochs: float = 1.0
    eval_every: int | None = None  # steps between evals; null = only at the end
    early_stopping_patience: int | None = None
    save_steps: int | None = None  # steps between checkpoints; null = no periodic checkpoints
    resume_from: str | None = None
    seed: int = 0
    precision: str = "auto"
    gradient_checkpointing: bool = False
    heartbeat_every_s: float = 30.0


_LORA_DEFAULTS = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear", "modules_to_save": []}
_DEFAULTS: dict[str, Any] = {
    "eval_file": None,
    "lora": {},
    "seq_len": 512,
    "packing": False,
    "batch_size": 8,
    "grad_accum": 1,
    "learning_rate": 2e-4,
    "warmup_ratio": 0.03,
    "lr_schedule": "linear",
    "max_steps": None,
    "epochs": 1.0,
    "eval_every": None,
    "early_stopping_patience": None,
    "save_steps": None,
    "resume_from": None,
    "seed": 0,
    "precision": "auto",
    "gradient_checkpointing": False,
    "heartbeat_every_s": 30.0,
}


def _positive_int(name: str, value: Any, *, nullable: bool = False, zero_ok: bool = False) -> Any:
    check_type(name, value, int, nullable=nullable)
    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise JobConfigError(f"{name} must be {'>= 0' if zero_ok else '> 0'}, got {value}")
    return value


def parse_config(raw: Any) -> FinetuneConfig:
    """Validate a config mapping; any problem is a JobConfigError with a one-line message."""
    c = require_keys(raw, required=("base_model", "train_file", "output_dir"), optional=_DEFAULTS)
    lora = require_keys(c["lora"], required=(), optional=_LORA_DEFAULTS, where="lora")
    _positive_int("lora.r", lora["r"])
    check_type("lora.alpha", lora["alpha"], (int, float))
    check_type("lora.dropout", lora["dropout"], (int, float))
    if not 0 <= lora["dropout"] < 1:
        raise JobConfigError("lora.dropout must be in [0, 1)")
    tm = lora["target_modules"]
    if not (tm == "all-linear" or (isinstance(tm, list) and tm and all(isinstance(m, str) for m in tm))):
        raise JobConfigError('lora.target_modules must be "all-linear" or a non-empty list of module names')
    mts = lora["modules_to_save"]
    if not (isinstance(mts, list) and all(isinstance(m, str) for m in mts)):
        raise JobConfigError("lora.modules_to_save must be a list of module names")
    for key in ("base_model", "train_file", "output_dir"):
        check_type(key, c[key], str)
    check_type("eval_file", c["eval_file"], str, nullable=True)
    check_type("resume_from", c["resume_from"], str, nullable=True)
    _positive_int("seq_len", c["seq_len"])
    _positive_int("batch_size", c["batch_size"])
    _positive_int("grad_accum", c["grad_accum"])
    _positive_int("max_steps", c["max_steps"], nullable=True)
    _positive_int("eval_every", c["eval_every"], nullable=True)
    _positive_int("early_stopping_patience", c["early_stopping_patience"], nullable=True)
    _positive_int("save_steps", c["save_steps"], nullable=True)
    check_type("seed", c["seed"], int)
    check_type("packing", c["packing"], bool)
    check_type("gradient_checkpointing", c["gradient_checkpointing"], bool)
    for key in ("learning_rate", "warmup_ratio", "epochs", "heartbeat_every_s"):
        check_type(key, c[key], (int, float))
    if c["learning_rate"] <= 0:
        raise JobConfigError("learning_rate must be > 0")
    if not 0 <= c["warmup_ratio"] < 1:
        raise JobConfigError("warmup_ratio must be in [0, 1)")
    if c["max_steps"] is None and c["epochs"] <= 0:
        raise JobConfigError("epochs must be > 0 when max_steps is null")
    if c["heartbeat_every_s"] <= 0:
        raise JobConfigError("heartbeat_every_s must be > 0")
    if c["lr_schedule"] not in LR_SCHEDULES:
        raise JobConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {c['lr_schedule']!r}")
    if c["precision"] not in PRECISIONS:
        raise JobConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {c['precision']!r}")
    if c["early_stopping_patience"] is not None and c["eval_file"] is None:
        raise JobConfigError("early_stopping_patience needs an eval_file")
    return FinetuneConfig(
        **{k: v for k, v in c.items() if k != "lora"},
        lora=LoraSettings(
            r=lora["r"],
            alpha=lora["alpha"],
            dropout=float(lora["dropout"]),
            target_modules=tm,
            modules_to_save=list(mts),
        ),
    )


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    ids: list[int]
    n_prompt: int  # the first n_prompt ids carry no loss
    weight: float


def load_examples(path: str, tokenizer: Any, seq_len: int) -> list[Example]:
    rows = read_jsonl(path)
    if not rows:
        raise JobConfigError(f"{path} holds no examples")
    out = []
    for i, row in enumerate(rows):
        where = f"{path} example {row.get('id', i)}"
        messages = validate_messages(row.get("messages"), where)
        weight = row.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise JobConfigError(f"{where}: weight must be a number >= 0")
        r = render_chat(tokenizer, messages, add_generation_prompt=False)
        ids = r.prompt_ids + r.answer_ids
        n_prompt = len(r.prompt_ids)
        if len(ids) > seq_len:  # keep the answer (the supervised part); drop the start of the prompt
            cut = len(ids) - seq_len
            ids, n_prompt = ids[cut:], max(0, n_prompt - cut)
        out.append(Example(ids, n_prompt, float(weight)))
    return out


@dataclass
class MicroBatch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor  # per position, aligned with labels
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    n_tokens: int  # real (non-pad) input tokens
    n_answer: int  # tokens with a loss

    def to(self, device: torch.device) -> MicroBatch:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return MicroBatch(
            self.input_ids.to(device),
            self.labels.to(device),
            self.weights.to(device),
            mv(self.attention_mask),
            mv(self.position_ids),
            self.n_tokens,
            self.n_answer,
        )


def collate(examples: list[Example], *, packing: bool, pad_id: int) -> MicroBatch:
    def labels_of(e: Example) -> list[int]:
        return [-100] * e.n_prompt + e.ids[e.n_prompt :]

    n_tokens = sum(len(e.ids) for e in examples)
    n_answer = sum(len(e.ids) - e.n_prompt for e in examples)
    if packing:
        ids = [t for e in examples for t in e.ids]
        labels = [t for e in examples for t in labels_of(e)]
        pos = [p for e in examples for p in range(len(e.ids))]
        w = [e.weight for e in examples for _ in e.ids]
        return MicroBatch(
            torch.tensor([ids]),
            torch.tensor([labels]),
            torch.tensor([w], dtype=torch.float32),
            None,
            torch.tensor([pos]),
            n_tokens,
            n_answer,
        )
    width = max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels_t = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    weights = torch.zeros((len(examples), width), dtype=torch.float32)
    for i, e in enumerate(examples):
        n = len(e.ids)
        input_ids[i, :n] = torch.tensor(e.ids)
        labels_t[i, :n] = torch.tensor(labels_of(e))
        mask[i, :n] = 1
        weights[i, :n] = e.weight
    return MicroBatch(input_ids, labels_t, weights, mask, None, n_tokens, n_answer)


class BatchPlan:
    """Which examples each optimizer step uses: a pure function of (seed, step)."""

    def __init__(self, n_examples: int, *, batch_size: int, grad_accum: int, seed: int) -> None:
        self.n = n_examples
        self.batch_size = batch_size
        self.per_step = batch_size * grad_accum
        self.steps_per_epoch = math.ceil(n_examples / self.per_step)
        self.seed = seed
        self._perm_epoch = -1
        self._perm: list[int] = []

    def micro_batches(self, step: int) -> list[list[int]]:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        idx = self._perm[k * self.per_step : (k + 1) * self.per_step]
        return [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for 0-based ``step``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1.0 - progress)


# ---------------------------------------------------------------- heartbeat, signals, checkpoints


class Heartbeat:
    """Rewrites heartbeat.json every ``every_s`` from a daemon thread with the latest step and loss."""

    def __init__(self, path: Path, every_s: float, max_steps: int) -> None:
        self.path, self.every_s, self.max_steps = path, every_s, max_steps
        self._lock = threading.Lock()
        self._step, self._loss = 0, float("nan")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def update(self, step: int, loss: float) -> None:
        with self._lock:
            self._step, self._loss = step, loss

    def write(self) -> None:
        with self._lock:
            loss = None if math.isnan(self._loss) else self._loss
            payload = {"step": self._step, "max_steps": self.max_steps, "loss": loss, "time": time.time()}
        write_json_atomic(self.path, payload)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write()

    def __enter__(self) -> Heartbeat:
        self.write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.write()


class StopFlag:
    """Set by SIGTERM; the loop checks it between steps so a step is never cut in half."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    found = []
    for d in checkpoints_dir(output_dir).glob("step-*"):
        if (d / "COMPLETE").is_file() and d.name[5:].isdigit():
            found.append((int(d.name[5:]), d))
    return max(found)[1] if found else None


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {}
    for idx, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = t.detach().cpu().contiguous()
    return tensors


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(model: Any, opt: torch.optim.Optimizer, output_dir: str, state: dict[str, Any]) -> Path:
    step = state["step"]
    d = checkpoints_dir(output_dir) / f"step-{step}"
    if d.exists():  # a leftover without COMPLETE (or a re-save of the same step)
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model.save_pretrained(str(d), safe_serialization=True)
    save_file(_optimizer_tensors(opt), str(d / "optimizer.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(d / "rng_state.safetensors"))
    write_json_atomic(d / "trainer_state.json", state)
    with open(d / "COMPLETE", "w") as fh:
        fh.write(f"{step}\n")
    return d


def resolve_resume(cfg: FinetuneConfig) -> Path | None:
    if cfg.resume_from is None:
        return None
    if cfg.resume_from == "auto":
        return latest_complete_checkpoint(cfg.output_dir)
    d = Path(cfg.resume_from)
    if not (d / "COMPLETE").is_file():
        raise JobConfigError(f"resume_from {d} is not a complete checkpoint (no COMPLETE file)")
    return d


# ---------------------------------------------------------------- model


def build_peft_model(base: Any, cfg: FinetuneConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        modules_to_save=cfg.lora.modules_to_save or None,
        task_type="CAUSAL_LM",
    )
    try:
        with quiet_peft_deprecations():
            model = get_peft_model(base, lora)
    except ValueError as exc:
        raise JobConfigError(f"lora: {exc}".splitlines()[0]) from exc
    # Trainable weights stay fp32 under bf16/fp16 autocast: optimizer updates are too small for half precision.
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_adapter_weights(model: Any, ckpt: Path) -> None:
    from peft import set_peft_model_state_dict

    weights = load_file(str(ckpt / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:
        raise JobConfigError(f"checkpoint {ckpt} does not match the lora config (unexpected weights)")


INIT_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
_INIT_LORA_KEYS = ("r", "lora_alpha", "target_modules", "modules_to_save")


def load_init_adapter(model: Any, adapter_dir: str | Path) -> None:
    """Start ``model``'s adapter from a trained one (``init_adapter``: the champion's, to improve it rather than
    train a fresh adapter on the raw base). The directory holds ``adapter_model.safetensors`` and
    ``adapter_config.json``; refused (JobConfigError, nothing loaded) when a file is missing or unreadable, when
    its r / lora_alpha / target_modules / modules_to_save differ from the model's LoRA config, or when its weights
    are not exactly the model's adapter weights (same names, same shapes)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    d = Path(adapter_dir)
    missing = [name for name in INIT_ADAPTER_FILES if not (d / name).is_file()]
    if missing:
        raise JobConfigError(f"init_adapter {d}: missing {', '.join(missing)}")
    try:
        saved = json.loads((d / "adapter_config.json").read_text())
        weights = load_file(str(d / "adapter_model.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise JobConfigError(f"init_adapter {d}: unreadable: {str(exc).splitlines()[0][:200]}") from exc
    if not isinstance(saved, dict):
        raise JobConfigError(f"init_adapter {d}: adapter_config.json is not a JSON object")
    ours = model.peft_config["default"]

    def norm(key: str, value: Any) -> Any:
        if key in ("target_modules", "modules_to_save"):
            return sorted(value or []) if not isinstance(value, str) else value
        return value

    for key in _INIT_LORA_KEYS:
        theirs, mine = norm(key, saved.get(key)), norm(key, getattr(ours, key))
        if theirs != mine:
            raise JobConfigError(f"init_adapter {d}: its {key} {theirs!r} differs from this job's lora {mine!r}")
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != got:
        extra, absent = sorted(got.keys() - expected.keys()), sorted(expected.keys() - got.keys())
        shapes = sorted(k for k in got.keys() & expected.keys() if got[k] != expected[k])
        raise JobConfigError(
            f"init_adapter {d}: weights do not match this job's adapter (unexpected {extra[:3]}, missing "
            f"{absent[:3]}, other shapes {shapes[:3]})"
        )
    set_peft_model_state_dict(model, weights)


def restore_checkpoint(model: Any, opt: torch.optim.Optimizer, ckpt: Path, device: torch.device) -> dict[str, Any]:
    """Adapter, optimizer and RNG state back from a complete checkpoint; returns its trainer_state.json."""
    state: dict[str, Any] = read_json(ckpt / "trainer_state.json")
    load_adapter_weights(model, ckpt)
    restore_optimizer(opt, load_file(str(ckpt / "optimizer.safetensors")))
    rng = load_file(str(ckpt / "rng_state.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])
    return state


def save_adapter(model: Any, out: Path) -> None:
    """The final adapter, safetensors only, in out/adapter (replacing any earlier one)."""
    adapter_dir = out / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    model.save_pretrained(str(adapter_dir), safe_serialization=True)


def device_name(device: torch.device) -> str:
    return device.type if device.type != "cuda" else f"cuda:{torch.cuda.get_device_name(device)}"


def _trainable_snapshot(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _restore_trainable(model: Any, snap: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in snap:
                p.copy_(snap[n])


# ---------------------------------------------------------------- the loop


@dataclass
class _Run:
    cfg: FinetuneConfig
    model: Any
    device: torch.device
    dtype: torch.dtype
    scaler: torch.amp.GradScaler | None

    def autocast(self) -> Any:
        enabled = self.dtype != torch.float32
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=enabled)

    def step_loss(self, mbs: list[MicroBatch], *, train: bool) -> tuple[float, float]:
        """Forward (+ backward when ``train``) over micro-batches; returns (weighted loss, plain token NLL)."""
        denom = max(1, sum(mb.n_answer for mb in mbs))
        total_w, total_plain = 0.0, 0.0
        for mb in mbs:
            mb = mb.to(self.device)
            with self.autocast():
                nll, keep = answer_token_nll(
                    self.model,
                    mb.input_ids,
                    mb.labels,
                    attention_mask=mb.attention_mask,
                    position_ids=mb.position_ids,
                )
            next_w = torch.cat([mb.weights[:, 1:], torch.zeros_like(mb.weights[:, :1])], dim=1)[keep]
            loss = (nll * next_w).sum() / denom
            if train:
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total_w += float(loss.detach())
            total_plain += float(nll.detach().sum()) / denom
        return total_w, total_plain


def evaluate(run: _Run, examples: list[Example], pad_id: int) -> float:
    """Mean NLL per answer token over ``examples`` (weights ignored)."""
    run.model.eval()
    total, count = 0.0, 0
    bs = run.cfg.batch_size
    with torch.no_grad():
        for i in range(0, len(examples), bs):
            mb = collate(examples[i : i + bs], packing=run.cfg.packing, pad_id=pad_id)
            _, plain = run.step_loss([mb], train=False)
            total += plain * max(1, mb.n_answer)
            count += mb.n_answer
    run.model.train()
    return total / max(1, count)


def loss_curve(losses: list[float], *, first_step: int = 0, points: int = 200) -> list[list[float]]:
    """[step, train loss] pairs, at most ``points`` of them (each the mean of its stretch of steps), for charts."""
    if not losses:
        return []
    size = max(1, math.ceil(len(losses) / points))
    return [
        [first_step + min(i + size, len(losses)), round(sum(losses[i : i + size]) / len(losses[i : i + size]), 5)]
        for i in range(0, len(losses), size)
    ]


def train(cfg: FinetuneConfig, *, base: Any = None, tokenizer: Any = None) -> tuple[dict[str, Any], int]:
    """Run the job; returns (metrics, exit code). ``base``/``tokenizer`` may be passed in (benchmarks)."""
    started = time.monotonic()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    precision, dtype = choose_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.base_model)
    train_ex = load_examples(cfg.train_file, tokenizer, cfg.seq_len)
    eval_ex = load_examples(cfg.eval_file, tokenizer, cfg.seq_len) if cfg.eval_file else None
    ckpt = resolve_resume(cfg)
    if base is None:
        base = load_base_model(cfg.base_model, dtype=dtype, device=device)
    model = build_peft_model(base, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    run = _Run(cfg, model, device, dtype, scaler)

    plan = BatchPlan(len(train_ex), batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, seed=cfg.seed)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * plan.steps_per_epoch))
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    pad_id = tokenizer.pad_token_id

    start_step, best_eval, best_step, bad_evals = 0, math.inf, None, 0
    if ckpt is not None:
        st = restore_checkpoint(model, opt, ckpt, device)
        start_step = int(st["step"])
        best_eval = st.get("best_eval_loss") if st.get("best_eval_loss") is not None else math.inf
        best_step, bad_evals = st.get("best_step"), int(st.get("evals_without_improvement", 0))
    best_weights = _trainable_snapshot(model) if eval_ex is not None else None

    def state(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "max_steps": total_steps,
            "seed": cfg.seed,
            "best_eval_loss": None if math.isinf(best_eval) else best_eval,
            "best_step": best_step,
            "evals_without_improvement": bad_evals,
        }

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses: list[float] = []
    eval_curve: list[list[float]] = []  # [step, eval loss] at every evaluation (the dashboard's loss chart)
    tokens, step, stopped_early, eval_loss = 0, start_step, False, None
    loop_started = time.monotonic()
    with StopFlag() as stop, Heartbeat(out / "heartbeat.json", cfg.heartbeat_every_s, total_steps) as hb:
        hb.update(step, float("nan"))
        while step < total_steps and not stop.requested:
            for group in opt.param_groups:
                group["lr"] = cfg.learning_rate * lr_factor(step, total_steps, warmup, cfg.lr_schedule)
            mbs = [
                collate([train_ex[i] for i in idx], packing=cfg.packing, pad_id=pad_id)
                for idx in plan.micro_batches(step)
            ]
            loss, _ = run.step_loss(mbs, train=True)
            if scaler is not None:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(loss):
                raise JobError(f"training diverged at step {step + 1} (loss {loss})")
            step += 1
            tokens += sum(mb.n_tokens for mb in mbs)
            losses.append(loss)
            hb.update(step, loss)
            if eval_ex is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps):
                eval_loss = evaluate(run, eval_ex, pad_id)
                eval_curve.append([step, round(eval_loss, 5)])
                if eval_loss < best_eval:
                    best_eval, best_step, bad_evals = eval_loss, step, 0
                    best_weights = _trainable_snapshot(model)
                else:
                    bad_evals += 1
                    patience = cfg.early_stopping_patience
                    if patience is not None and bad_evals >= patience:
                        stopped_early = True
                        break
            if cfg.save_steps and step % cfg.save_steps == 0 and step < total_steps:
                save_checkpoint(model, opt, cfg.output_dir, state(step))
        loop_s = time.monotonic() - loop_started
        if stop.requested:
            save_checkpoint(model, opt, cfg.output_dir, state(step))
            return {"step": step, "stopped_by": "SIGTERM"}, EXIT_SIGTERM

    if best_weights is not None:
        _restore_trainable(model, best_weights)
        eval_loss = None if math.isinf(best_eval) else best_eval
    save_adapter(model, out)
    tail = losses[-10:]
    metrics = {
        "train_loss": sum(tail) / len(tail) if tail else None,
        "eval_loss": eval_loss,
        "best_step": best_step,
        "steps": step,
        "epochs": round(step * plan.per_step / len(train_ex), 4),
        "train_examples": len(train_ex),
        "train_tokens": tokens,
        "tokens_per_s": round(tokens / loop_s, 1) if loop_s > 0 else None,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "duration_s": round(time.monotonic() - started, 2),
        "precision": precision,
        "device": device_name(device),
        "stopped_early": stopped_early,
        "resumed_from_step": start_step if ckpt is not None else None,
        "loss_curve": loss_curve(losses, first_step=start_step),
        "eval_curve": eval_curve,
    }
    write_json_atomic(out / "metrics.json", metrics)
    return metrics, 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="LoRA fine-tuning job")
    parser.add_argument("--config", required=True, help="path to the JSON config")
    args = parser.parse_args(argv)
    cfg = parse_config(read_json(args.config))
    _, code = train(cfg)
    return code


if __name__ == "__main__":
    sys.exit(run_main(main))
