"""Shared code for the GPU-host jobs: config and JSONL I/O, chat rendering, model/adapter loading.

Invariants:
- jobs/ is self-contained: stdlib + torch + transformers + peft + safetensors + tokenizers only. It never imports
  pilot/, subagents/ or tools/, because it ships alone to rented, untrusted hosts.
- Weights are read and written as safetensors only. An adapter directory that holds any pickled weight file
  (.bin/.pt/.pth/.pkl) or lacks adapter_model.safetensors is refused before anything is loaded from it.
- Training and generation tokenise a conversation the same way (``render_chat``): the prompt text (with the
  generation prompt) is tokenised on its own, and the answer is the rest of the fully rendered text, tokenised
  separately. So the ids the model is trained to emit after a prompt are the ids generation starts from.
- A bad config is a ``JobConfigError``; ``run_main`` turns it into one ``error: ...`` line on stderr and exit 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EXIT_BAD_CONFIG = 2
EXIT_SIGTERM = 143

# Used when a tokenizer ships no chat template; same shape as the tiny base model's template.
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}Assistant: {{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


class JobError(Exception):
    """Root of the jobs' own errors (jobs/ cannot import tools.errors)."""


class JobConfigError(JobError):
    """The job's config file or arguments are invalid; the message is one line for a human."""


class UnsafeAdapterError(JobError):
    """An adapter directory is missing safetensors weights or contains pickled weight files."""


# ---------------------------------------------------------------- files


def read_json(path: str | Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as exc:
        raise JobConfigError(f"file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise JobConfigError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON so that a reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise JobConfigError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
                if not isinstance(row, dict):
                    raise JobConfigError(f"{path}:{lineno}: expected a JSON object")
                rows.append(row)
    except FileNotFoundError as exc:
        raise JobConfigError(f"file not found: {path}") from exc
    return rows


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- config validation


def require_keys(
    cfg: Any, *, required: Sequence[str], optional: Mapping[str, Any], where: str = "config"
) -> dict[str, Any]:
    """Return ``cfg`` with defaults filled in; unknown or missing keys are a JobConfigError."""
    if not isinstance(cfg, dict):
        raise JobConfigError(f"{where} must be a JSON object")
    unknown = sorted(set(cfg) - set(required) - set(optional))
    if unknown:
        raise JobConfigError(f"{where}: unknown key(s): {', '.join(unknown)}")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise JobConfigError(f"{where}: missing required key(s): {', '.join(missing)}")
    out = dict(optional)
    out.update(cfg)
    return out


def check_type(where: str, value: Any, types: type | tuple[type, ...], *, nullable: bool = False) -> Any:
    if value is None and nullable:
        return value
    # bool is an int subclass; a flag given where a number is expected is a mistake, not a 1.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise JobConfigError(f"{where} must be {_type_names(types)}, got {value!r}")
    if not isinstance(value, types):
        raise JobConfigError(f"{where} must be {_type_names(types)}, got {value!r}")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in ts)


def run_main(fn: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a job's main; a JobError becomes one line on stderr and a non-zero exit code."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars would bury the one error line in the host's log
    try:
        return fn(argv)
    except JobConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------- chat rendering


@dataclass(frozen=True)
class ChatTokens:
    """A rendered conversation: ``prompt_ids`` is everything up to and including the generation prompt;
    ``answer_ids`` is the final assistant turn (with its end-of-turn token), empty when only prompting."""

    prompt_ids: list[int]
    answer_ids: list[int]


def validate_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise JobConfigError(f"{where}: 'messages' must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise JobConfigError(f"{where}: each message needs string 'role' and 'content'")
    return messages


def _chat_text(tokenizer: Any, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
    template = getattr(tokenizer, "chat_template", None) or FALLBACK_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(
        list(messages), chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert isinstance(text, str)
    return text


def _encode(tokenizer: Any, text: str) -> list[int]:
    # The template already holds the special tokens; the tokenizer must not add a second BOS.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_chat(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool) -> ChatTokens:
    """Tokenise a conversation with the tokenizer's chat template (a fallback template if it has none).

    ``add_generation_prompt=True``: every message is prompt; the result ends with the assistant cue and
    ``answer_ids`` is empty (used to generate). ``False``: the last message must be the assistant's answer;
    ``prompt_ids`` is the rest rendered with the generation prompt and ``answer_ids`` the answer tokens, so a
    loss can be taken on the answer only.
    """
    if add_generation_prompt:
        return ChatTokens(_encode(tokenizer, _chat_text(tokenizer, messages, True)), [])
    if not messages or messages[-1].get("role") != "assistant":
        raise JobConfigError("the last message of a training example must have role 'assistant'")
    prompt_text = _chat_text(tokenizer, messages[:-1], True)
    full_text = _chat_text(tokenizer, messages, False)
    if not full_text.startswith(prompt_text):
        raise JobError("the chat template does not render the prompt as a prefix of the conversation")
    answer_text = full_text[len(prompt_text) :]
    answer_ids = _encode(tokenizer, answer_text)
    eos = tokenizer.eos_token_id
    # Some templates end an assistant turn without EOS; the model must still learn where to stop.
    if eos is not None and eos not in answer_ids:
        answer_ids.append(eos)
    return ChatTokens(_encode(tokenizer, prompt_text), answer_ids)


# ---------------------------------------------------------------- devices, models, adapters


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def choose_precision(requested: str, device: torch.device) -> tuple[str, torch.dtype]:
    """``auto``: bf16 on CUDA with bf16 support, else fp16 on CUDA, else fp32 (CPU)."""
    if requested == "auto":
        requested = "fp32"
        if device.type == "cuda":
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if requested not in table:
        raise JobConfigError(f"precision must be one of auto, fp32, bf16, fp16; got {requested!r}")
    if requested == "fp16" and device.type != "cuda":
        raise JobConfigError("precision fp16 needs a CUDA device")
    return requested, table[requested]


def load_tokenizer(base_model: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base_model)
    except OSError as exc:
        raise JobConfigError(f"cannot load tokenizer for base_model {base_model!r}: {exc}") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(base_model: str, *, dtype: torch.dtype, device: torch.device) -> Any:
    """Load a causal LM from a hub id or a local directory, safetensors only (HF_HUB_OFFLINE is honoured)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype, use_safetensors=True)
    except OSError as exc:
        raise JobConfigError(f"cannot load base_model {base_model!r}: {exc}") from exc
    return model.to(device)


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    """Refuse an adapter directory unless it holds adapter_model.safetensors and no pickled weight file."""
    path = Path(adapter_dir)
    if not path.is_dir():
        raise UnsafeAdapterError(f"adapter directory not found: {path}")
    pickled = sorted(p.name for p in path.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise UnsafeAdapterError(f"refusing adapter {path}: pickled weight file(s) {', '.join(pickled)}")
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise UnsafeAdapterError(f"refusing adapter {path}: no {ADAPTER_WEIGHTS}")
    if not (path / "adapter_config.json").is_file():
        raise UnsafeAdapterError(f"refusing adapter {path}: no adapter_config.json")
    return path


@contextlib.contextmanager
def quiet_peft_deprecations() -> Any:
    """peft 0.21 reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates with a
    FutureWarning; it is not ours to fix, and tests run with warnings as errors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_adapter(model: Any, adapter_dir: str | Path, *, is_trainable: bool = False) -> Any:
    """Wrap ``model`` with the LoRA adapter in ``adapter_dir`` after ``check_adapter_dir``."""
    from peft import PeftModel

    path = check_adapter_dir(adapter_dir)
    with quiet_peft_deprecations():
        return PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def answer_token_nll(
    model: Any,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL (fp32) of every labelled token, computing logits only where a label follows.

    ``labels`` is aligned with ``input_ids`` (-100 = no loss). Returns ``(nll, keep)``: ``nll`` is 1-D over the
    labelled tokens in row-major order, ``keep`` the (batch, seq) bool mask of the positions that predict them.
    Skipping the vocabulary projection on prompt and padding positions is most of the speed-up over a stock
    causal-LM loss when the vocabulary is large.
    """
    next_labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    keep = next_labels != -100
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
    nll = torch.nn.functional.cross_entropy(logits, next_labels[keep], reduction="none")
    return nll, keep
