"""The training subagent's judgement: what job to run, on which offer, what it should cost, how it ended.

Pure functions over plain values (it never touches the store): ``pilot/runs/lifecycle.py`` turns these plans into rented
instances and status changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from subagents.lengths import TruncationReport
from tools.gpu.base import Instance, InstanceState, Offer, OfferRequirements
from tools.gpu.offers import JobShape, rank_offers
from tools.gpu.offers import requirements_for as offer_requirements

CHARS_PER_TOKEN = 4.0  # a conservative average for code and English
# Training methods: supervised LoRA on successes, a preference method on what the failures add, or GRPO with the
# records' tests as a verifiable reward.
METHODS = ("sft", "dpo", "kto", "grpo")
# The snapshot file each method trains on, and the jobs/ module that runs it.
METHOD_FILES = {"sft": "train.jsonl", "dpo": "dpo.jsonl", "kto": "kto.jsonl", "grpo": "grpo.jsonl"}
METHOD_MODULES = {"sft": "jobs.finetune_lora", "dpo": "jobs.preference", "kto": "jobs.preference", "grpo": "jobs.grpo"}
STARTUP_HOURS_REMOTE = 0.15  # image pull + dependency install on a fresh host, billed


@dataclass(frozen=True)
class TrainingParams:
    base_model: str
    base_model_params_b: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: list[str]
    modules_to_save: list[str]
    seq_len: int
    batch_size: int
    grad_accum: int
    learning_rate: float
    max_steps: int | None
    epochs: float
    warmup_ratio: float
    seed: int
    tokens_per_second_estimate: float


@dataclass(frozen=True)
class TrainingPlan:
    offer: Offer
    train_examples: int
    train_tokens: int
    expected_hours: float
    estimated_cost_usd: float
    figures: dict[str, Any] = field(default_factory=dict)


def count_tokens(jsonl: Path) -> tuple[int, int]:
    """(examples, estimated tokens) of a snapshot split or preference file, from its text: messages, or a
    prompt with its chosen and rejected answers (DPO: both are scored) or its completion (KTO)."""
    examples = chars = 0
    with jsonl.open() as fh:
        for line in fh:
            if not line.strip():
                continue
            examples += 1
            row = json.loads(line)
            messages = row.get("messages") or row.get("prompt") or []
            chars += sum(len(m.get("content", "")) for m in messages)
            chars += sum(len(str(row.get(k, ""))) for k in ("chosen", "rejected", "completion"))
    return examples, int(chars / CHARS_PER_TOKEN) + examples * 8  # + template tokens


@dataclass(frozen=True)
class MethodChoice:
    """Which method a cycle trains with, why (one line with the figures), and those figures."""

    method: str
    reason: str
    figures: dict[str, Any]


def choose_method(
    preference: dict[str, Any],
    *,
    train_examples: int,
    enabled: bool,
    min_pairs: int,
    min_undesirable: int,
    allow_rl: bool = True,
    min_rl_prompts: int = 50,
    min_rl_failure_share: float = 0.2,
) -> MethodChoice:
    """From what the snapshot holds (``Manifest.preference``: desirable, undesirable, pairs, pair sources, and
    ``grpo``: prompts with tests and the failure share of the attempts at those tasks):

    - GRPO (``allow_rl``) when there are at least ``min_rl_prompts`` prompts with tests and at least
      ``min_rl_failure_share`` of the attempts at those tasks failed: a verifiable reward (the record's own tests)
      beats a preference, and a task the agent always passes gives GRPO no reward variance;
    - else DPO when there are at least ``min_pairs`` pairs (two attempts at one task with different rewards): the
      sharpest signal, the same prompt with a better and a worse answer;
    - else KTO when there are at least ``min_undesirable`` failed attempts (and some successes): unpaired, it
      still learns what the failures did wrong;
    - else supervised LoRA on the successes (also whenever the reinforcement layer is off or the snapshot has no
      preference data).
    """
    pairs = int(preference.get("pairs", 0))
    bad = int(preference.get("undesirable", 0))
    good = int(preference.get("desirable", 0))
    figures = {
        "train_examples": train_examples,
        "pairs": pairs,
        "pair_sources": preference.get("pair_sources", {}),
        "desirable": good,
        "undesirable": bad,
        "clusters_with_both_outcomes": preference.get("clusters_with_both_outcomes", 0),
        "min_pairs": min_pairs,
        "min_undesirable": min_undesirable,
    }
    rl = dict(preference.get("grpo") or {})
    prompts, share = int(rl.get("prompts_with_tests", 0)), float(rl.get("failure_share", 0.0))
    figures.update(
        prompts_with_tests=prompts,
        rl_clusters=int(rl.get("clusters", 0)),
        rl_attempts=int(rl.get("attempts", 0)),
        rl_failures=int(rl.get("failures", 0)),
        rl_failure_share=share,
        min_rl_prompts=min_rl_prompts,
        min_rl_failure_share=min_rl_failure_share,
    )
    if not enabled or not preference:
        why = "preference methods are off" if not enabled else "the snapshot holds no preference data"
        return MethodChoice("sft", f"supervised: {train_examples} successful examples; {why}", figures)
    if allow_rl and prompts >= min_rl_prompts and share >= min_rl_failure_share:
        return MethodChoice(
            "grpo",
            f"GRPO: {prompts} prompts with tests (>= {min_rl_prompts}), {share:.0%} of their "
            f"{figures['rl_attempts']} attempts failed (>= {min_rl_failure_share:.0%})",
            figures,
        )
    rl_out = _why_not_rl(allow_rl, prompts, share, min_rl_prompts, min_rl_failure_share)
    if pairs >= min_pairs:
        return MethodChoice(
            "dpo",
            f"DPO: {pairs} pairs (>= {min_pairs}) of two attempts at one task with different rewards "
            f"{figures['pair_sources']}, from {good} successes and {bad} failed attempts{rl_out}",
            figures,
        )
    if bad >= min_undesirable and good > 0:
        return MethodChoice(
            "kto",
            f"KTO: {bad} failed attempts (>= {min_undesirable}) and {good} successes; only {pairs} pairs "
            f"(< {min_pairs}) for DPO{rl_out}",
            figures,
        )
    return MethodChoice(
        "sft",
        f"supervised: {train_examples} successful examples; {pairs} pairs (< {min_pairs}) and {bad} failures "
        f"(< {min_undesirable}) are too few for a preference method{rl_out}",
        figures,
    )


def _why_not_rl(allow: bool, prompts: int, share: float, min_prompts: int, min_share: float) -> str:
    """The rationale's note on GRPO when another method is chosen ("" when no record carries tests)."""
    if not allow:
        return "; GRPO is off (reinforcement.allow_rl)" if prompts else ""
    if prompts == 0:
        return ""
    if prompts < min_prompts:
        return f"; only {prompts} prompts with tests (< {min_prompts}) for GRPO"
    return f"; GRPO: {share:.0%} of the attempts at the {prompts} prompts with tests failed (< {min_share:.0%})"


def job_shape(
    params: TrainingParams, train_tokens: int, *, max_dph: float | None = None, cost_factor: float = 1.0
) -> JobShape:
    """The job as the offer model sees it (tools/gpu/offers.py): size, sequence, batch, tokens to process.
    ``cost_factor``: GPU time per token of the method relative to supervised (a preference step runs a
    reference forward and scores two answers), applied as supervised-equivalent tokens."""
    if params.max_steps is not None:
        tokens, epochs = int(params.max_steps * params.batch_size * params.grad_accum * params.seq_len / 2), 1.0
    else:
        tokens, epochs = train_tokens, params.epochs
    tokens = int(tokens * cost_factor)
    return JobShape(
        params_b=params.base_model_params_b,
        seq_len=params.seq_len,
        batch_size=params.batch_size,
        dataset_tokens=max(tokens, 1),
        epochs=epochs,
        lora_rank=params.lora_r,
        max_dph=max_dph,
    )


def requirements_for(params: TrainingParams, *, max_dph: float) -> OfferRequirements:
    if params.base_model_params_b < 0.5:  # a small model runs anywhere, this machine's CPU included
        return OfferRequirements(min_gpu_ram_gb=0.0, max_dph=max_dph, min_reliability=0.95)
    return offer_requirements(job_shape(params, 1, max_dph=max_dph))


def expected_hours(params: TrainingParams, train_tokens: int, *, remote: bool, cost_factor: float = 1.0) -> float:
    if params.max_steps is not None:
        tokens = params.max_steps * params.batch_size * params.grad_accum * params.seq_len / 2
    else:
        tokens = train_tokens * params.epochs
    hours = tokens * cost_factor / params.tokens_per_second_estimate / 3600
    return hours + (STARTUP_HOURS_REMOTE if remote else 0.0)


def plan_training(
    params: TrainingParams,
    offers: list[Offer],
    *,
    train_examples: int,
    train_tokens: int,
    remote: bool,
    truncation: TruncationReport | None = None,
    method: MethodChoice | None = None,
    cost_factor: float = 1.0,
) -> TrainingPlan | None:
    """The offer with the lowest expected TOTAL cost of the job (not the lowest $/h). None when there is none.

    Rented offers are ranked by tools/gpu/offers.py's model: hours from the dataset's tokens and each offer's
    throughput, plus storage, bandwidth and the expected cost of retries. The local machine has one offer, priced
    from the configured throughput estimate.

    ``truncation`` (``subagents.lengths.truncation_report`` of the train split at ``params.seq_len``) goes into
    the figures as ``truncation``, with its one-line message, so the decision says how many examples the
    configured ``seq_len`` cuts and proposes the length that fits: no silent truncation.
    """
    if not offers:
        return None
    figures: dict[str, Any] = {"train_examples": train_examples, "train_tokens": train_tokens}
    if truncation is not None:
        figures["truncation"] = truncation.to_dict()
    if method is not None:  # priced per method: cost_factor x the supervised GPU time per token
        figures.update(method=method.method, method_reason=method.reason, method_figures=method.figures)
        figures["cost_factor"] = cost_factor
    shape = job_shape(params, train_tokens, cost_factor=cost_factor)
    if remote:
        ranked = [(o, c) for o, c in rank_offers(offers, shape) if c.total_usd < float("inf")]
        if not ranked:
            return None
        best, estimate = ranked[0]
        hours, cost = estimate.hours, round(estimate.total_usd, 4)
        cheapest = min(offers, key=lambda o: o.dph_total)
        figures.update(
            compute_usd=round(estimate.compute_usd, 4),
            storage_usd=round(estimate.storage_usd, 4),
            bandwidth_usd=round(estimate.bandwidth_usd, 4),
            retry_usd=round(estimate.retry_usd, 4),
            tokens_per_s=round(estimate.tokens_per_s, 1),
            cheapest_dph_offer=cheapest.id,
            cheapest_dph=cheapest.dph_total,
            offers_ranked=len(ranked),
        )
    else:
        hours = expected_hours(params, train_tokens, remote=False, cost_factor=cost_factor)
        best = min(offers, key=lambda o: o.dph_total)
        cost = round(best.dph_total * hours, 4)
    figures.update(
        offer=best.id,
        gpu=best.gpu_name,
        dph=best.dph_total,
        expected_hours=round(hours, 4),
        estimated_cost_usd=cost,
    )
    return TrainingPlan(
        offer=best,
        train_examples=train_examples,
        train_tokens=train_tokens,
        expected_hours=round(hours, 4),
        estimated_cost_usd=cost,
        figures=figures,
    )


@dataclass(frozen=True)
class PreferenceParams:
    method: str  # "dpo" | "kto"
    beta: float = 0.1
    sft_weight: float = 1.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


@dataclass(frozen=True)
class GrpoParams:
    """What jobs/grpo.py reads besides the supervised job's keys (its defaults, docs/reinforcement.md)."""

    method: str = "grpo"
    num_generations: int = 4  # k completions sampled per prompt
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0  # KL to the base (adapter disabled); 0: none, as DAPO / Dr. GRPO
    epsilon: float = 0.2  # the PPO clip
    num_iterations: int = 1  # optimiser updates per set of samples (mu)
    test_timeout_s: float = 5.0  # per sandboxed test run of one completion
    sandbox: str = "auto"  # "auto" | "bwrap" | "process" (jobs/host_sandbox.py)


def kto_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """KTO's class weights: desirable_weight * desirable / (undesirable_weight * undesirable) kept in [1, 4/3],
    the band the KTO paper recommends, by up-weighting the rarer side."""
    if desirable <= 0 or undesirable <= 0:
        return 1.0, 1.0
    ratio = desirable / undesirable
    if ratio < 1.0:
        return round(1.0 / ratio, 4), 1.0
    if ratio > 4 / 3:
        return 1.0, round(ratio / (4 / 3), 4)
    return 1.0, 1.0


def job_config(
    params: TrainingParams,
    *,
    train_file: Path,
    eval_file: Path | None,
    output_dir: Path,
    preference: PreferenceParams | GrpoParams | None = None,
    init_adapter: Path | None = None,
) -> dict[str, Any]:
    """The JSON config ``jobs/finetune_lora.py`` reads; with ``preference``, ``jobs/preference.py``'s or (GRPO)
    ``jobs/grpo.py``'s: the same keys, no eval file and no packing, plus the method's. ``init_adapter`` (GRPO
    only, else a ValueError): the directory holding the champion's adapter the policy starts from."""
    config = _sft_config(params, train_file=train_file, eval_file=eval_file, output_dir=output_dir)
    if preference is not None:
        config.update(asdict(preference), eval_file=None)
    if init_adapter is not None:
        if not isinstance(preference, GrpoParams):
            raise ValueError("init_adapter is read by the grpo job only")
        config["init_adapter"] = str(init_adapter)
    return config


# What a GRPO run starts from (``plan.figures["init"]``): the champion's adapter when it was trained on the same
# base with the same LoRA shape (RL improves the current policy; a fresh adapter on the raw base rarely passes a
# test, so its groups have no reward variance), else a fresh adapter on the base, with the reason.
INIT_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
INIT_DIR = "init_adapter"  # where the job finds those files: under the run's work directory or the host's
_LORA_SHAPE = ("base_model", "lora_r", "lora_alpha", "target_modules", "modules_to_save")


@dataclass(frozen=True)
class ChampionAdapter:
    """The champion as GRPO's init sees it: its version, base, the training params its run recorded (None when
    unknown) and its stored adapter files (``ModelVersion.adapter_files``)."""

    version: str
    base_model: str
    params: dict[str, Any] | None
    adapter_files: dict[str, Any]


def choose_init(params: TrainingParams, champion: ChampionAdapter | None) -> dict[str, Any]:
    """``{"from": "champion", "version", "adapter_files": {name: {key, sha256}}, "summary"}`` when the champion's
    adapter fits this run (same base model, LoRA r / alpha / target modules / modules to save, both files stored),
    else ``{"from": "base", "version", "summary"}`` with the reason in the summary."""
    if champion is None:
        return {"from": "base", "version": None, "summary": "base (no champion)"}
    v = champion.version

    def base(why: str) -> dict[str, Any]:
        return {"from": "base", "version": v, "summary": f"base ({why})"}

    if champion.params is None:
        return base(f"champion {v}'s training params are not recorded")
    theirs = {**champion.params, "base_model": champion.base_model}
    ours = asdict(params)
    differ = [f"{k} {theirs.get(k)!r} != {ours[k]!r}" for k in _LORA_SHAPE if _norm(theirs.get(k)) != _norm(ours[k])]
    if differ:
        return base(f"champion {v}'s LoRA differs: {', '.join(differ)}")
    missing = [name for name in INIT_ADAPTER_FILES if name not in champion.adapter_files]
    if missing:
        return base(f"champion {v} has no stored {', '.join(missing)}")
    files = {
        name: {"key": str(champion.adapter_files[name]["key"]), "sha256": str(champion.adapter_files[name]["sha256"])}
        for name in INIT_ADAPTER_FILES
    }
    return {"from": "champion", "version": v, "adapter_files": files, "summary": f"champion {v}"}


def _norm(value: Any) -> Any:
    return sorted(value) if isinstance(value, list) else value


def init_adapter_files(figures: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The champion adapter files a GRPO plan starts from (name -> {key, sha256}); empty when it starts from base."""
    init = figures.get("init") or {}
    if figures.get("method") != "grpo" or init.get("from") != "champion":
        return {}
    return {str(n): {"key": str(r["key"]), "sha256": str(r["sha256"])} for n, r in init["adapter_files"].items()}


def preference_params(figures: dict[str, Any]) -> PreferenceParams | None:
    """The preference job's parameters a plan's figures carry (``figures["preference"]``), None for supervised."""
    raw = figures.get("preference")
    if figures.get("method", "sft") not in ("dpo", "kto") or not raw:
        return None
    return PreferenceParams(**raw)


def method_params(figures: dict[str, Any]) -> PreferenceParams | GrpoParams | None:
    """The job's method parameters a plan's figures carry: DPO/KTO's (``figures["preference"]``), GRPO's
    (``figures["grpo"]``), None for supervised. A GRPO plan without its parameters is refused (ValueError)."""
    if figures.get("method") == "grpo":
        raw = figures.get("grpo")
        if not isinstance(raw, dict):
            raise ValueError("a grpo plan carries no grpo parameters (figures['grpo'])")
        return GrpoParams(**raw)
    return preference_params(figures)


def _sft_config(
    params: TrainingParams, *, train_file: Path, eval_file: Path | None, output_dir: Path
) -> dict[str, Any]:
    p = asdict(params)
    return {
        "base_model": p["base_model"],
        "train_file": str(train_file),
        "eval_file": str(eval_file) if eval_file else None,
        "output_dir": str(output_dir),
        "lora": {
            "r": p["lora_r"],
            "alpha": p["lora_alpha"],
            "dropout": p["lora_dropout"],
            "target_modules": p["target_modules"],
            "modules_to_save": p["modules_to_save"],
        },
        "seq_len": p["seq_len"],
        "batch_size": p["batch_size"],
        "grad_accum": p["grad_accum"],
        "learning_rate": p["learning_rate"],
        "max_steps": p["max_steps"],
        "epochs": p["epochs"],
        "warmup_ratio": p["warmup_ratio"],
        "seed": p["seed"],
        "save_steps": 100,
        "heartbeat_every_s": 10,
        "resume_from": "auto",
    }


@dataclass(frozen=True)
class Outcome:
    """How an instance ended, for the run's status: ``ok`` means outputs should be collected."""

    ok: bool
    reason: str
    termination: str | None = None  # a RunTerminationReason value when not ok


def classify_exit(instance: Instance, log_tail: str = "") -> Outcome:
    tail = log_tail.strip().splitlines()[-1:] if log_tail else []
    last = f": {tail[0][:300]}" if tail else ""
    match instance.state:
        case InstanceState.EXITED if instance.exit_code == 0:
            return Outcome(True, "the job exited 0")
        case InstanceState.EXITED:
            return Outcome(False, f"the job exited with code {instance.exit_code}{last}", "job_failed")
        case InstanceState.STOPPED:
            return Outcome(
                False, f"the instance was stopped ({instance.detail or 'by the provider'})", "instance_vanished"
            )
        case InstanceState.GONE:
            return Outcome(False, "the instance disappeared", "instance_vanished")
        case _:
            return Outcome(False, f"the instance is still {instance.state}", None)
