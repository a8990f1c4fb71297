"""GRPO with verifiable rewards: a LoRA adapter trained on k sampled completions per prompt, rewarded by tests.

    python -m jobs.grpo --config CONFIG.json

The config is jobs/finetune_lora.py's (same keys and checks; ``batch_size`` = prompts per micro-batch) plus
``method`` ("grpo"), ``num_generations`` (k, 4, >= 2), ``max_new_tokens`` (128), ``temperature`` (1.0),
``top_p`` (1.0), ``beta`` (0.0), ``epsilon`` (0.2), ``num_iterations`` (1), ``test_timeout_s`` (5.0), ``sandbox``
("auto" | "bwrap" | "process"), ``sft_weight`` (0.0) and ``init_adapter`` (null: a directory with
``adapter_model.safetensors`` and ``adapter_config.json``, the champion's adapter, to improve the current policy
rather than a fresh adapter on the raw base). Lines (the control plane's snapshot writes them):
``{"prompt": [messages], "tests": "<python test file>", "task_id": "<cluster id>"}``.

Invariants:
- Per step, for each prompt of the step (the order a pure function of (seed, step), jobs.finetune_lora.BatchPlan)
  k completions are sampled from the policy (adapter on) with a torch.Generator seeded from (seed, step, micro
  batch): a resumed run regenerates exactly the samples of the uninterrupted one.
- Initial policy: with ``init_adapter`` its weights are loaded into the fresh adapter before step 0
  (jobs.finetune_lora.load_init_adapter: refused unless its r / lora_alpha / target_modules / modules_to_save and
  weight names and shapes are this job's); a resume from a checkpoint skips it (the checkpoint already holds the
  continued adapter). With ``beta`` > 0 the KL reference stays the base with the adapter disabled, not the
  champion: the penalty keeps the policy near the raw base.
- Reward of a completion = fraction of the line's tests passed in jobs.host_sandbox (0 when it does not
  compile, import, finish or times out). The completion's code is its first fenced block when it has one,
  else the whole text stripped.
- Advantage = (r - group mean) / (group std + 1e-4), std unbiased (TRL's GRPO scaling). A group whose k rewards
  are all equal has advantage 0 everywhere: it gets no policy-gradient term, is left out of the forward when
  nothing else needs it, and is counted (``zero_variance_groups``).
- Loss per completion token t: -min(rho_t A, clip(rho_t, 1-eps, 1+eps) A) with rho_t = pi(t)/pi_old(t), pi_old
  the policy that sampled the step. A step is ``num_iterations`` (mu, TRL's name) optimiser updates on the one
  set of samples: the first update has rho = 1 (pi_old is its own detached log-probabilities, kept for the
  later ones; the gradient is A * grad log pi), later updates move rho, and the clip stops a token's gradient
  once its ratio left [1-eps, 1+eps] in the direction A pushes (``clip_fraction``: the share of such tokens
  over updates 2..mu). The learning rate is the step's for all mu updates; checkpoints fall between steps, so a
  resumed run regenerates the samples and repeats the same mu updates. Plus ``beta`` * k3 = exp(ref - logp) -
  (ref - logp) - 1 against the base with the adapter disabled (no second copy) when beta > 0, plus
  ``sft_weight`` * NLL of the completions that passed every test (rejection-sampling SFT, off by default).
  Token-level mean over the micro-batch's completion tokens (the DAPO / TRL "dapo" normalisation: long
  completions are not down-weighted per token).
- Checkpoints, resume, heartbeat, SIGTERM (finish the step, checkpoint, exit 143), output ``adapter/`` and
  ``metrics.json``: jobs.finetune_lora's functions, unchanged, so remote_entry needs nothing new.
- Why not TRL's GRPOTrainer: the same reasons as for DPO/KTO (docs/reinforcement.md: pickled checkpoints, its
  own resume), and its reward functions run in-process; here the reward is a sandboxed test run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python jobs/grpo.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

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
    load_init_adapter,
    loss_curve,
    lr_factor,
    resolve_resume,
    restore_checkpoint,
    save_adapter,
    save_checkpoint,
)
from jobs.finetune_lora import parse_config as parse_finetune_config
from jobs.host_sandbox import KINDS, HostSandbox, Limits, count_tests

logger = logging.getLogger(__name__)

ADV_EPS = 1e-4
_GRPO_DEFAULTS: dict[str, Any] = {
    "method": "grpo",
    "num_generations": 4,
    "max_new_tokens": 128,
    "temperature": 1.0,
    "top_p": 1.0,
    "beta": 0.0,
    "epsilon": 0.2,
    "num_iterations": 1,
    "test_timeout_s": 5.0,
    "sandbox": "auto",
    "sft_weight": 0.0,
    "init_adapter": None,
}


@dataclass(frozen=True)
class GRPOConfig:
    base: FinetuneConfig
    num_generations: int = 4
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0
    epsilon: float = 0.2
    num_iterations: int = 1
    test_timeout_s: float = 5.0
    sandbox: str = "auto"
    sft_weight: float = 0.0
    init_adapter: str | None = None


def parse_config(raw: Any) -> GRPOConfig:
    """The supervised job's checks on the shared keys, then GRPO's; a JobConfigError otherwise."""
    if not isinstance(raw, dict):
        raise JobConfigError("config must be a JSON object")
    g = {k: raw.get(k, v) for k, v in _GRPO_DEFAULTS.items()}
    shared = {k: v for k, v in raw.items() if k not in _GRPO_DEFAULTS}
    if g["method"] != "grpo":
        raise JobConfigError(f"method must be grpo for jobs.grpo; got {g['method']!r}")
    for key in ("num_generations", "max_new_tokens", "num_iterations"):
        check_type(key, g[key], int)
    if g["num_generations"] < 2:
        raise JobConfigError("num_generations must be >= 2 (advantages compare samples of one prompt)")
    if g["max_new_tokens"] <= 0:
        raise JobConfigError("max_new_tokens must be > 0")
    if g["num_iterations"] < 1:
        raise JobConfigError("num_iterations must be >= 1 (optimiser updates per set of samples)")
    for key in ("temperature", "top_p", "beta", "epsilon", "test_timeout_s", "sft_weight"):
        check_type(key, g[key], (int, float))
    if g["temperature"] <= 0:
        raise JobConfigError("temperature must be > 0 (GRPO samples)")
    if not 0 < g["top_p"] <= 1:
        raise JobConfigError("top_p must be in (0, 1]")
    if g["beta"] < 0 or g["sft_weight"] < 0:
        raise JobConfigError(f"{'beta' if g['beta'] < 0 else 'sft_weight'} must be >= 0")
    if not 0 < g["epsilon"] < 1:
        raise JobConfigError("epsilon must be in (0, 1)")
    if g["test_timeout_s"] <= 0:
        raise JobConfigError("test_timeout_s must be > 0")
    check_type("init_adapter", g["init_adapter"], str, nullable=True)
    if g["sandbox"] not in KINDS:
        raise JobConfigError(f"sandbox must be one of {', '.join(KINDS)}; got {g['sandbox']!r}")
    base = parse_finetune_config(shared)
    if base.eval_file is not None:
        raise JobConfigError("eval_file is not used by grpo; the gate evaluates the candidate")
    if base.packing:
        raise JobConfigError("packing is not supported by grpo (completions are scored in padded rows)")
    if base.seq_len <= g["max_new_tokens"]:
        raise JobConfigError(f"seq_len ({base.seq_len}) must exceed max_new_tokens ({g['max_new_tokens']})")
    return GRPOConfig(
        base=base,
        num_generations=g["num_generations"],
        max_new_tokens=g["max_new_tokens"],
        temperature=float(g["temperature"]),
        top_p=float(g["top_p"]),
        beta=float(g["beta"]),
        epsilon=float(g["epsilon"]),
        num_iterations=g["num_iterations"],
        test_timeout_s=float(g["test_timeout_s"]),
        sandbox=g["sandbox"],
        sft_weight=float(g["sft_weight"]),
        init_adapter=g["init_adapter"],
    )


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Task:
    prompt_ids: list[int]
    tests: str
    task_id: str


def load_tasks(path: str, tokenizer: Any, max_prompt: int) -> list[Task]:
    """Train lines -> prompts (the last ``max_prompt`` tokens) and tests; a bad line names its line number."""
    tasks: list[Task] = []
    if not Path(path).is_file():
        raise JobConfigError(f"file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JobConfigError(f"{where}: invalid JSON: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise JobConfigError(f"{where}: expected a JSON object")
            prompt = validate_messages(row.get("prompt"), f"{where}: prompt")
            tests, task_id = row.get("tests"), row.get("task_id", str(lineno))
            if not isinstance(tests, str) or not tests.strip():
                raise JobConfigError(f"{where}: a GRPO line needs non-empty 'tests' (a Python test file)")
            if not isinstance(task_id, str):
                raise JobConfigError(f"{where}: 'task_id' must be a string")
            try:
                n_tests = count_tests(tests)
            except SyntaxError as exc:
                raise JobConfigError(f"{where}: 'tests' is not valid Python: {exc.msg} (line {exc.lineno})") from exc
            if n_tests == 0:
                raise JobConfigError(f"{where}: 'tests' holds no top-level assert and no test* function")
            ids = render_chat(tokenizer, prompt, add_generation_prompt=True).prompt_ids[-max_prompt:]
            tasks.append(Task(ids, tests, task_id))
    if not tasks:
        raise JobConfigError(f"{path} holds no examples")
    return tasks


_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|\Z)", re.S)


def completion_code(text: str) -> str:
    """The code a completion proposes: its first fenced block if it has one, else the whole text, stripped (as
    jobs/generate.py strips a prediction: a decoded completion often starts with a space)."""
    m = _FENCE.search(text)
    return m.group(1) if m else text.strip()


# ---------------------------------------------------------------- sampling


def step_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 1_009 + micro)


@torch.no_grad()
def sample(
    model: Any, prompts: list[list[int]], cfg: GRPOConfig, *, eos: int, pad: int, generator: torch.Generator
) -> list[list[int]]:
    """k completions per prompt (rows grouped by prompt), each up to and including its first EOS.

    A plain KV-cache loop rather than ``model.generate``: the sampling draws from ``generator`` alone, so the
    samples are a function of (weights, seed, step)."""
    device = next(model.parameters()).device
    rows = [p for p in prompts for _ in range(cfg.num_generations)]
    width = max(len(p) for p in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, p in enumerate(rows):  # left padding: every prompt ends at the same column
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    was_training = model.training
    model.eval()
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    generated: list[torch.Tensor] = []
    for _ in range(cfg.max_new_tokens):
        probs = torch.softmax(out.logits[:, -1].float() / cfg.temperature, dim=-1)
        if cfg.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p  # keep the smallest head with mass >= top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        generated.append(nxt)
        done |= nxt == eos
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        out = model(
            input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=out.past_key_values,
            use_cache=True,
        )  # fmt: skip
    model.train(was_training)
    completions = []
    for row in torch.stack(generated, dim=1).tolist():
        completions.append(row[: row.index(eos) + 1] if eos in row else row)
    return completions


# ---------------------------------------------------------------- advantages and loss


def group_advantages(rewards: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """(per-completion advantages, number of zero-variance groups) for rewards laid out as groups of k."""
    groups = rewards.view(-1, k)
    mean, std = groups.mean(dim=1, keepdim=True), groups.std(dim=1, keepdim=True)
    adv = (groups - mean) / (std + ADV_EPS)
    zero = std.squeeze(1) == 0
    adv[zero] = 0.0
    return adv.view(-1), int(zero.sum())


def grpo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    epsilon: float,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
) -> torch.Tensor:
    """Per-token clipped surrogate (negated) plus beta * k3(KL) when ``ref_logp`` is given; inputs are per token."""
    ratio = torch.exp(logp - old_logp)
    per = -torch.min(ratio * adv, ratio.clamp(1 - epsilon, 1 + epsilon) * adv)
    if ref_logp is not None and beta > 0:
        d = ref_logp - logp
        per = per + beta * (torch.exp(d) - d - 1)
    return per


def clipped(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Tokens whose surrogate is the clipped one (no policy gradient): ratio past 1 + eps with A > 0, or below
    1 - eps with A < 0."""
    ratio = torch.exp(logp - old_logp)
    return ((ratio > 1 + epsilon) & (adv > 0)) | ((ratio < 1 - epsilon) & (adv < 0))


@dataclass
class Rollout:
    """One micro-batch's samples, scored: what each of the step's ``num_iterations`` updates trains on."""

    stats: StepStats
    input_ids: torch.Tensor | None = None  # None: no completion of the micro-batch is in the loss
    labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    sel: torch.Tensor | None = None  # per loss row: its completion's index
    adv: torch.Tensor | None = None  # per completion
    full: torch.Tensor | None = None  # per completion: passed every test
    ref_logp: torch.Tensor | None = None  # per loss token, beta > 0 only
    old_logp: torch.Tensor | None = None  # per loss token, set by the first update


@dataclass
class StepStats:
    loss: float
    reward_mean: float
    pass_rate: float  # share of completions that passed every test
    zero_variance_groups: int
    groups: int
    trained_tokens: int  # prompt + completion tokens in the loss forwards (num_iterations per step)
    generated_tokens: int
    generation_s: float
    reward_s: float


def rollout(model: Any, tasks: list[Task], cfg: GRPOConfig, sandbox: HostSandbox, tok: Any,
            gen: torch.Generator) -> Rollout:  # fmt: skip
    """Sample k completions per prompt of one micro-batch, reward them in the sandbox, and collate the ones the
    loss uses (the groups with a reward spread, and with ``sft_weight`` the ones that passed)."""
    k, eos, pad = cfg.num_generations, tok.eos_token_id, tok.pad_token_id
    t0 = time.monotonic()
    with torch.no_grad():
        comps = sample(model, [t.prompt_ids for t in tasks], cfg, eos=eos, pad=pad, generator=gen)
    t1 = time.monotonic()
    texts = [tok.decode([i for i in c if i != eos], skip_special_tokens=True) for c in comps]
    runs = sandbox.run_many([(completion_code(text), tasks[j // k].tests) for j, text in enumerate(texts)])
    t2 = time.monotonic()
    rewards = torch.tensor([r.reward for r in runs])
    adv, zero = group_advantages(rewards, k)
    full = rewards == 1.0
    live = {j // k for j in range(len(comps)) if adv[j] != 0}  # the groups with a reward spread
    use = [j for j in range(len(comps)) if j // k in live or (cfg.sft_weight > 0 and bool(full[j]))]
    stats = StepStats(
        0.0, float(rewards.mean()), float(full.float().mean()), zero, len(tasks), 0,
        sum(len(c) for c in comps), t1 - t0, t2 - t1,
    )  # fmt: skip
    if not use:
        return Rollout(stats)
    exs = [Example(tasks[j // k].prompt_ids + comps[j], len(tasks[j // k].prompt_ids), 1.0) for j in use]
    mb = collate(exs, packing=False, pad_id=pad)
    device = next(model.parameters()).device
    assert mb.attention_mask is not None  # padded rows, never packed
    ids, labels, mask = mb.input_ids.to(device), mb.labels.to(device), mb.attention_mask.to(device)
    r = Rollout(stats, ids, labels, mask, sel=torch.tensor(use), adv=adv, full=full)
    r.stats.trained_tokens = mb.n_tokens * cfg.num_iterations  # each update forwards them again
    if cfg.beta > 0:
        with torch.no_grad(), model.disable_adapter():
            r.ref_logp = -answer_token_nll(model, ids, labels, attention_mask=mask)[0]
    return r


def policy_update(model: Any, r: Rollout, cfg: GRPOConfig, scale: float) -> tuple[float, int, int]:
    """Backward one micro-batch's loss (scaled by ``scale``) under the current policy; returns (loss, loss tokens,
    clipped tokens). The first call stores pi_old, the log-probabilities of the policy that sampled."""
    if r.input_ids is None:
        return 0.0, 0, 0
    assert r.labels is not None and r.sel is not None and r.adv is not None and r.full is not None
    nll, keep = answer_token_nll(model, r.input_ids, r.labels, attention_mask=r.mask)
    logp = -nll
    if r.old_logp is None:
        r.old_logp = logp.detach()
    rows = r.sel[keep.nonzero()[:, 0].cpu()]
    tok_adv = r.adv[rows].to(logp.device)
    per = grpo_token_loss(logp, r.old_logp, tok_adv, cfg.epsilon, r.ref_logp, cfg.beta)
    if cfg.sft_weight > 0:
        per = per + cfg.sft_weight * r.full[rows].to(logp.device).float() * nll
    loss = per.mean()
    (loss * scale).backward()
    n_clipped = int(clipped(logp.detach(), r.old_logp, tok_adv, cfg.epsilon).sum())
    return float(loss.detach()), int(logp.numel()), n_clipped


# ---------------------------------------------------------------- the loop


def policy_model(base: Any, cfg: GRPOConfig, *, resuming: bool) -> Any:
    """The trained policy before step 0: a fresh LoRA adapter on ``base``, holding ``init_adapter``'s weights when
    one is given and the run does not resume (a checkpoint's adapter replaces it anyway)."""
    model = build_peft_model(base, cfg.base)
    if cfg.init_adapter is not None and not resuming:
        load_init_adapter(model, cfg.init_adapter)
    return model


def train(
    cfg: GRPOConfig, *, base: Any = None, tokenizer: Any = None, sandbox: HostSandbox | None = None
) -> tuple[dict[str, Any], int]:
    """Run the job; returns (metrics, exit code). ``base``/``tokenizer``/``sandbox`` may be passed in."""
    started = time.monotonic()
    b = cfg.base
    out = Path(b.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    precision, dtype = choose_precision(b.precision, device)
    if dtype == torch.float16:
        raise JobConfigError("precision fp16 is not supported by grpo (use bf16 or fp32)")
    torch.manual_seed(b.seed)
    if tokenizer is None:
        tokenizer = load_tokenizer(b.base_model)
    tasks = load_tasks(b.train_file, tokenizer, b.seq_len - cfg.max_new_tokens)
    if sandbox is None:
        limits = Limits(wall_s=cfg.test_timeout_s, cpu_s=max(1, math.ceil(cfg.test_timeout_s)))
        sandbox = HostSandbox(cfg.sandbox, limits=limits)
    if sandbox.fallback_reason:
        logger.warning("grpo: bwrap unusable (%s); rewards run in the process sandbox", sandbox.fallback_reason)
    print(f"grpo: rewards run in the {sandbox.kind} sandbox", file=sys.stderr)
    ckpt = resolve_resume(b)
    if base is None:
        base = load_base_model(b.base_model, dtype=dtype, device=device)
    model = policy_model(base, cfg, resuming=ckpt is not None)
    if cfg.init_adapter is not None and ckpt is None:
        print(f"grpo: the policy starts from the adapter in {cfg.init_adapter}", file=sys.stderr)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=b.learning_rate, weight_decay=0.0)
    plan = BatchPlan(len(tasks), batch_size=b.batch_size, grad_accum=b.grad_accum, seed=b.seed)
    total_steps = b.max_steps or max(1, math.ceil(b.epochs * plan.steps_per_epoch))
    warmup = math.ceil(b.warmup_ratio * total_steps)

    start_step = 0
    if ckpt is not None:
        method = read_json(ckpt / "trainer_state.json").get("method", "grpo")
        if method != "grpo":
            raise JobConfigError(f"checkpoint {ckpt} was written by method {method!r}, not 'grpo'")
        start_step = int(restore_checkpoint(model, opt, ckpt, device)["step"])

    def state(step: int) -> dict[str, Any]:
        return {"step": step, "max_steps": total_steps, "seed": b.seed, "method": "grpo"}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, rewards, pass_rates = [], [], []
    tokens = generated = zero_groups = groups = later_tokens = later_clipped = 0
    gen_s = reward_s = 0.0
    step = start_step
    loop_started = time.monotonic()
    with StopFlag() as stop, Heartbeat(out / "heartbeat.json", b.heartbeat_every_s, total_steps) as hb:
        hb.update(step, float("nan"))
        while step < total_steps and not stop.requested:
            for group in opt.param_groups:
                group["lr"] = b.learning_rate * lr_factor(step, total_steps, warmup, b.lr_schedule)
            micro = plan.micro_batches(step)
            autocast = torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)
            rolls = []
            for m, idx in enumerate(micro):
                with autocast:
                    rolls.append(rollout(model, [tasks[i] for i in idx], cfg, sandbox, tokenizer,
                                         step_generator(b.seed, step, m, device)))  # fmt: skip
            step_stats = [r.stats for r in rolls]
            for it in range(cfg.num_iterations):
                for r in rolls:
                    with autocast:
                        value, n_tok, n_clip = policy_update(model, r, cfg, 1 / len(micro))
                    if it == 0:
                        r.stats.loss = value  # the loss at the sampling policy, as with one update per step
                    else:
                        later_tokens, later_clipped = later_tokens + n_tok, later_clipped + n_clip
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            loss = sum(s.loss for s in step_stats) / len(step_stats)
            if not math.isfinite(loss):
                raise JobError(f"training diverged at step {step + 1} (loss {loss})")
            step += 1
            losses.append(loss)
            rewards.append(sum(s.reward_mean for s in step_stats) / len(step_stats))
            pass_rates.append(sum(s.pass_rate for s in step_stats) / len(step_stats))
            zero_groups += sum(s.zero_variance_groups for s in step_stats)
            groups += sum(s.groups for s in step_stats)
            tokens += sum(s.trained_tokens for s in step_stats)
            generated += sum(s.generated_tokens for s in step_stats)
            gen_s += sum(s.generation_s for s in step_stats)
            reward_s += sum(s.reward_s for s in step_stats)
            hb.update(step, loss)
            if b.save_steps and step % b.save_steps == 0 and step < total_steps:
                save_checkpoint(model, opt, b.output_dir, state(step))
        loop_s = time.monotonic() - loop_started
        if stop.requested:
            save_checkpoint(model, opt, b.output_dir, state(step))
            return {"step": step, "stopped_by": "SIGTERM"}, EXIT_SIGTERM

    save_adapter(model, out)
    completions = groups * cfg.num_generations
    metrics = {
        "method": "grpo",
        "train_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "eval_loss": None,
        "steps": step,
        "epochs": round(step * plan.per_step / len(tasks), 4),
        "train_examples": len(tasks),
        "train_tokens": tokens,
        "generated_tokens": generated,
        "tokens_per_s": round(tokens / loop_s, 1) if loop_s > 0 else None,
        "reward_mean_first": rewards[0] if rewards else None,
        "reward_mean_last": rewards[-1] if rewards else None,
        "pass_rate_first": pass_rates[0] if pass_rates else None,
        "pass_rate_last": pass_rates[-1] if pass_rates else None,
        "reward_curve": loss_curve(rewards, first_step=start_step),
        "pass_rate_curve": loss_curve(pass_rates, first_step=start_step),
        "zero_variance_groups": zero_groups,
        "num_iterations": cfg.num_iterations,
        "clip_fraction": round(later_clipped / later_tokens, 4) if later_tokens else 0.0,
        "groups": groups,
        "completions": completions,
        "generation_s": round(gen_s, 3),
        "reward_s": round(reward_s, 3),
        "reward_s_per_completion": round(reward_s / completions, 4) if completions else None,
        "sandbox": sandbox.kind,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "duration_s": round(time.monotonic() - started, 2),
        "precision": precision,
        "device": device_name(device),
        "resumed_from_step": start_step if ckpt is not None else None,
        "init_adapter": cfg.init_adapter,
        "loss_curve": loss_curve(losses, first_step=start_step),
    }
    write_json_atomic(out / "metrics.json", metrics)
    return metrics, 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GRPO (verifiable rewards) LoRA fine-tuning job")
    parser.add_argument("--config", required=True, help="path to the JSON config")
    args = parser.parse_args(argv)
    _, code = train(parse_config(read_json(args.config)))
    return code


if __name__ == "__main__":
    sys.exit(run_main(main))
