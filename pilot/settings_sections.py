"""Settings sections kept apart from pilot/settings.py (which assembles every section into ``Settings``) so each
module stays readable: the surfaces people and products use directly (the web dashboard, the capture gateway) and
the reinforcement layer (rewards, preference methods; docs/reinforcement.md).
``Section`` is the base of every section: unknown keys are refused, values are frozen."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = ["DashboardSettings", "GatewaySettings", "ReinforcementSettings", "RewardSettings", "Section"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DashboardSettings(Section):
    enabled: bool = Field(
        True, description="The daemon serves the web dashboard at /dashboard/ on api.host:api.port (docs/dashboard.md)."
    )
    host: str = Field(
        "127.0.0.1", description="Bind address of `learning-pilot dashboard` (the read-only view without the daemon)."
    )
    port: int = Field(8080, ge=0, le=65535, description="Port of `learning-pilot dashboard`.")
    approvers: list[str] = Field(
        default_factory=list,
        description="Dashboard user ids (`learning-pilot dashboard-user create ID`) allowed to approve, reject and "
        "resume; any signed-in user may pull the kill switch.",
    )
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="How long a dashboard sign-in lasts.")
    poll_s: float = Field(
        1.5, gt=0, le=60, description="How often an open page's live stream checks the store for a change."
    )


class GatewaySettings(Section):
    """The OpenAI-compatible capture gateway (``learning-pilot gateway``, pilot/gateway/, docs/gateway.md)."""

    host: str = Field("127.0.0.1", description="Bind address of the gateway.")
    port: int = Field(8780, ge=0, le=65535)
    workers: int = Field(
        1, ge=1, le=64, description="Serving processes sharing the port (SO_REUSEPORT), each with its own spool."
    )
    upstream_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible base URL (vLLM, Ollama).")
    upstream_api_key: SecretStr | None = Field(
        None, description="Replaces the product's Authorization header upstream. Empty: the product's is passed on."
    )
    model_name: str = Field("agent", description="Logical model name the product asks for; rewritten to the adapter.")
    spool_dir: Path | None = Field(None, description="Local spool of calls not yet ingested. Empty: <data_dir>/spool.")
    spool_max_mb: float = Field(512.0, gt=0, description="Spool size over which new calls are dropped (counted).")
    fsync_interval_s: float = Field(0.2, gt=0, le=10, description="Spool fsync batch: what a kill -9 may lose.")
    ingest_batch: int = Field(5000, ge=1, description="Calls per store transaction when the spool is ingested.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Upstream connect timeout (then 502).")
    read_timeout_s: float = Field(120.0, gt=0, description="Upstream silence that ends a call (then 504).")
    max_body_mb: float = Field(8.0, gt=0, description="Largest request body accepted (then 413).")
    route_refresh_s: float = Field(1.0, gt=0, description="How often champion and canary are re-read from the store.")
    producer_auth: bool = Field(
        False,
        description="Require a producer token (live:write) on every proxied call. /v1/feedback always needs one "
        "(feedback:write).",
    )
    feedback_window_h: float = Field(
        24.0, gt=0, description="Feedback accepted this long after a call; later calls stay unlabelled traffic."
    )
    train_on_unlabelled: bool = Field(
        False,
        description="Turn calls with no feedback in the window into records (success = answered). Off: never. "
        "Needs producer_auth (anonymous calls never become training data).",
    )

    @model_validator(mode="after")
    def _unlabelled_needs_auth(self) -> GatewaySettings:
        if self.train_on_unlabelled and not self.producer_auth:
            raise ValueError(
                "gateway.train_on_unlabelled needs gateway.producer_auth = true: calls no producer token vouches "
                "for must never become training data"
            )
        return self


class RewardSettings(Section):
    """The reward of one execution (subagents/data/rewards.py); the defaults are the seed design's values."""

    success: float = Field(1.0, description="Reward of an execution that succeeded.")
    failure: float = Field(-1.0, description="Reward of an execution that failed (instead of success).")
    per_test_passed: float = Field(0.5, description="Added per test passed.")
    per_second: float = Field(-0.01, description="Added per second the execution took.")
    per_1k_tokens: float = Field(-0.05, description="Added per 1,000 tokens spent (the token-cost penalty).")
    performance_bonus: float = Field(0.2, description="Added to a success with all tests passed in <= fast_s.")
    fast_s: float = Field(5.0, ge=0, description="Duration at or under which a success earns the performance bonus.")
    concision_bonus: float = Field(0.1, description="Added to a success whose output is <= concise_chars long.")
    concise_chars: int = Field(400, ge=0, description="Output length at or under which the concision bonus applies.")
    per_rating_step: float = Field(0.5, description="Added per human rating step above 3 (subtracted below).")


class ReinforcementSettings(Section):
    """Which method a cycle trains with (subagents/training.py: choose_method) and the preference job's knobs."""

    enabled: bool = Field(True, description="Rewards per example; failures kept as preference data in snapshots.")
    choose_method: bool = Field(
        False,
        description="Let a cycle train GRPO, DPO or KTO when the data holds enough tests, pairs or failures "
        "(else: LoRA SFT).",
    )
    min_pairs: int = Field(50, ge=1, description="DPO pairs (two attempts at one task) in train needed for DPO.")
    min_undesirable: int = Field(50, ge=1, description="Failed attempts in train needed for KTO (when DPO is out).")
    min_pair_margin: float = Field(0.5, gt=0, description="Least reward difference between a pair's two answers.")
    max_pairs_per_cluster: int = Field(4, ge=1, description="Most DPO pairs from one task cluster.")
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference (base) model.")
    sft_weight: float = Field(1.0, ge=0, description="Weight of the NLL on good answers added to the loss.")
    cost_factor_dpo: float = Field(3.0, ge=1, description="GPU time per token of DPO relative to supervised.")
    cost_factor_kto: float = Field(4.0, ge=1, description="GPU time per token of KTO relative to supervised.")
    allow_rl: bool = Field(True, description="Let choose_method propose GRPO (tests as the reward) when it fits.")
    min_rl_prompts: int = Field(50, ge=1, description="Train prompts whose records carry tests needed for GRPO.")
    min_rl_failure_share: float = Field(
        0.2, ge=0, le=1, description="Least share of failed attempts at those tasks for GRPO (else no reward variance)."
    )
    grpo_num_generations: int = Field(4, ge=2, description="GRPO: completions sampled per prompt (k).")
    grpo_max_new_tokens: int = Field(128, ge=1, description="GRPO: most tokens per sampled completion.")
    grpo_temperature: float = Field(1.0, gt=0, description="GRPO: sampling temperature.")
    grpo_top_p: float = Field(1.0, gt=0, le=1, description="GRPO: nucleus sampling mass.")
    grpo_beta: float = Field(0.0, ge=0, description="GRPO: KL weight to the base (adapter disabled); 0 = none.")
    grpo_epsilon: float = Field(0.2, gt=0, lt=1, description="GRPO: the policy ratio's clip.")
    grpo_num_iterations: int = Field(
        1, ge=1, description="GRPO: optimiser updates per set of samples (mu); above 1 the clip binds."
    )
    grpo_test_timeout_s: float = Field(5.0, gt=0, description="GRPO: wall time of one completion's test run.")
    grpo_sandbox: Literal["auto", "bwrap", "process"] = Field(
        "auto", description="GRPO reward sandbox on the host: bwrap when it works (auto), or process isolation."
    )
    cost_factor_grpo: float | None = Field(
        None,
        ge=1,
        description="GPU time per token of GRPO relative to supervised. Empty: 2 + grpo_num_generations "
        "x grpo_num_iterations (k samples trained mu times, plus their generation and the old-policy forward).",
    )

    @property
    def grpo_cost_factor(self) -> float:
        """``cost_factor_grpo``, or its default 2 + k * mu (docs/reinforcement.md, Pricing)."""
        if self.cost_factor_grpo is not None:
            return self.cost_factor_grpo
        return 2.0 + self.grpo_num_generations * self.grpo_num_iterations

    def cost_factor(self, method: str) -> float:
        """GPU time per token of ``method`` relative to supervised: the budget reservation and approval use it."""
        factors = {"sft": 1.0, "dpo": self.cost_factor_dpo, "kto": self.cost_factor_kto, "grpo": self.grpo_cost_factor}
        if method not in factors:
            raise ValueError(f"unknown training method {method!r}; expected one of {', '.join(factors)}")
        return factors[method]
