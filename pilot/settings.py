"""One typed settings object, built once at start-up and passed in (no module-level getenv elsewhere).

Sources, highest priority first: keyword arguments, environment variables ``LEARNING_PILOT_<SECTION>__<KEY>``
(for example ``LEARNING_PILOT_BUDGET__PER_DAY_USD=20``), systemd credentials (files in
``$CREDENTIALS_DIRECTORY`` named after the key path, for secrets), the TOML file, then the defaults below.
Unknown keys in the file are errors: a typo must not silently fall back to a default that spends money.

The TOML file is ``--config PATH`` or, when not given, the first that exists of: ``$LEARNING_PILOT_CONFIG``,
``./learning-pilot.toml``, ``~/.config/learning-pilot/pilot.toml``, ``/etc/learning-pilot/pilot.toml``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from pilot.errors import ConfigError
from pilot.settings_sections import DashboardSettings, GatewaySettings, ReinforcementSettings, RewardSettings
from pilot.settings_sections import Section as _Section

DEFAULT_SEARCH_PATH = (
    Path("learning-pilot.toml"),
    Path("~/.config/learning-pilot/pilot.toml"),
    Path("/etc/learning-pilot/pilot.toml"),
)


REMOVED_SEAM = (
    "it was a test seam, not a setting: the host always runs the jobs package's own module "
    "(tests inject a stub through PilotContext.host_modules)"
)


def _refuse_removed(data: Any, section: str, removed: dict[str, str]) -> Any:
    """Keys that left the settings fail with a message that says why (or names the new key)."""
    if isinstance(data, dict):
        for key, why in removed.items():
            if key in data:
                raise ValueError(f"{section}.{key} is no longer read: {why}")
    return data


class StoreSettings(_Section):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL. Empty: SQLite (WAL) at <data_dir>/pilot.db. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db (needs the postgres extra).",
    )


class PolicySettings(_Section):
    min_new_examples: int = Field(200, ge=1, description="Curated examples since the last training before a run.")
    cooldown_minutes: float = Field(60.0, ge=0, description="Minimum time between the ends of two training runs.")
    approval_required_above_usd: float = Field(
        0.0,
        ge=0,
        description="Training that may spend more than this needs a human approval (0: always). What it may spend is "
        "its reservation: the estimate x 1.5 within budget.per_run_usd, the figure the approver is shown.",
    )
    approval_expiry_minutes: float = Field(24 * 60, gt=0, description="An unanswered approval is denied after this.")


class BudgetSettings(_Section):
    per_run_usd: float = Field(25.0, ge=0, description="Cap on one training run's estimated and actual cost.")
    per_day_usd: float = Field(50.0, ge=0, description="Cap on spend (reserved + actual) per UTC day.")
    per_month_usd: float = Field(500.0, ge=0, description="Cap on spend (reserved + actual) per UTC month.")
    max_dph: float = Field(3.0, ge=0, description="Highest $/hour an instance may cost.")
    settle_recheck_s: float = Field(
        600.0,
        gt=0,
        description="How often the settle worker re-reads the provider's charges for spend settled at an estimate "
        "(no charge published yet, or less than elapsed time x $/h).",
    )
    settle_window_h: float = Field(
        48.0, gt=0, description="How long after settling the provider's charges are re-read before giving up."
    )
    settle_max_tries: int = Field(
        12, ge=1, description="How many times the provider's charges are re-read for one run before giving up."
    )


class CurationSettings(_Section):
    require_success: bool = Field(True, description="Train only on records that succeeded.")
    require_tests_pass: bool = Field(True, description="Drop records whose tests did not all pass.")
    min_rating: int | None = Field(None, ge=1, le=5, description="Drop records a human rated below this.")
    near_dup_threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity above which two are dups.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of tasks in the eval split (hash-stable).")
    golden_fraction: float = Field(0.15, gt=0, lt=1, description="Share of tasks in the frozen golden split.")
    cluster_threshold: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Content-token Jaccard at or above which two records are one task (a reworded retry), in any "
        "domain; a task cluster goes whole to one split. Records with the same answer join at a lower bar.",
    )


class TrainingSettings(_Section):
    base_model: str = Field(
        "meta-llama/Llama-3.1-8B-Instruct",
        description="Hub id (org/name) or local path of the base model; a relative path starts with ./ or ../. "
        "The demo builds a tiny one under its data dir.",
    )
    base_model_params_b: float = Field(8.0, gt=0, description="Parameter count in billions (for VRAM and cost).")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    modules_to_save: list[str] = Field(default_factory=list, description="Fully trained modules (tiny models).")
    seq_len: int = Field(1024, ge=16)
    max_truncated_share: float = Field(
        0.02,
        ge=0,
        le=1,
        description="When more than this share of training examples is longer than seq_len (the job cuts them), the "
        "plan says so and proposes the length that fits (subagents/training.py: truncation_report).",
    )
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Fixed step count; empty: use epochs.")
    epochs: float = Field(2.0, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    seed: int = 0
    max_duration_minutes: float = Field(240.0, gt=0, description="A run still going after this is stopped.")
    heartbeat_timeout_s: float = Field(600.0, gt=0, description="No heartbeat for this long fails the run.")
    poll_interval_s: float = Field(5.0, gt=0)
    tokens_per_second_estimate: float = Field(
        2500.0, gt=0, description="Throughput assumed for cost estimates before offer-specific figures exist."
    )


class JudgeSettings(_Section):
    """The optional LLM judge (subagents/judge.py): advice stored beside the exact-match scores; the gate ignores it."""

    enabled: bool = Field(False, description="Also grade every golden answer with an LLM judge (fixed rubric).")
    model: str | None = Field(
        None, description="litellm model name for the judge. Empty: llm.model (api_base/api_key come from [llm])."
    )
    k: int = Field(3, ge=1, le=15, description="Samples per answer; the majority decides (use an odd number).")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature, so the k samples can disagree.")
    max_tokens: int = Field(64, ge=8, description="Reply cap per sample (a verdict is a short JSON object).")


class EvaluationSettings(_Section):
    margin: float = Field(0.05, ge=0, description="Candidate must beat champion by this (lower bound of the CI).")
    max_domain_regression: float = Field(0.10, ge=0, description="No domain may lose more than this.")
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_samples: int = Field(2000, ge=100)
    max_eval_loss_increase: float = Field(0.0, ge=0, description="Relative eval-loss increase tolerated.")
    min_items: int = Field(20, ge=1, description="Fewer golden items than this: reject, nothing to judge on.")
    min_score: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Absolute floor: a candidate whose mean golden score is below this is not promoted, whatever "
        "the champion scores (a margin over a base that scores 0 proves nothing). A sensible floor is the score "
        "you would accept from the model in production: 0.5 at the least for exact-match tasks, 0.7-0.9 once a "
        "champion exists. 0 disables.",
    )
    min_domain_score: float = Field(
        0.0, ge=0, le=1, description="Floor on every domain's mean golden score (0 disables); see domain_floors."
    )
    domain_floors: dict[str, float] = Field(
        default_factory=dict,
        description="Per-domain floors that override min_domain_score, e.g. {python-naming = 0.8}.",
    )
    max_golden_contamination: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Refuse to promote when more than this share of golden items has a near-duplicate (the same "
        "task, reworded) in the candidate's training split: the score would measure memorisation.",
    )
    max_label_disagreement: float = Field(
        0.10,
        ge=0,
        le=1,
        description="With a trusted golden_path: when the training answers contradict it on more than this share "
        "of its near-duplicate tasks (poisoned labels?), a candidate that would be promoted is held for a human.",
    )
    max_truncated_share: float = Field(
        0.02,
        ge=0,
        le=1,
        description="When more than this share of golden answers hit max_new_tokens, the evaluation says so and "
        "proposes the length that fits (answers cut short score as wrong).",
    )
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(32, ge=1)
    golden_path: Path | None = Field(
        None,
        description="A trusted, curated golden set (JSONL in the snapshot format) that replaces the snapshot's "
        "golden split. Recommended in production: a golden split drawn from the same records as the training "
        "data shares their labels, so it cannot catch poisoned (wrong but 'successful') records.",
    )
    judge: JudgeSettings = Field(
        default_factory=JudgeSettings, description="The optional LLM judge ([evaluation.judge])."
    )
    where: Literal["local", "remote", "auto"] = Field(
        "auto",
        description="Where candidate and champion answer the golden set: 'local' (this machine, transformers + peft), "
        "'remote' (a stage on its own short rented instance that uploads per-item predictions, re-scored here), or "
        "'auto' (remote when gpu.provider is not local and training.base_model_params_b >= remote_min_params_b).",
    )
    remote_min_params_b: float = Field(
        3.0, gt=0, description="With where='auto': base models of at least this many billion parameters go remote."
    )
    remote_max_minutes: float = Field(
        30.0,
        gt=0,
        description="A remote evaluation stage still running after this long (after loading) is destroyed and the "
        "candidate rejected; its reservation is $/h x (this + gpu.remote.loading_timeout_s + one poll + 60 s to "
        "tear down).",
    )

    @model_validator(mode="before")
    @classmethod
    def refuse_removed_keys(cls, data: Any) -> Any:
        return _refuse_removed(data, "evaluation", {"remote_generate_module": REMOVED_SEAM})


class LocalGpuSettings(_Section):
    gpu_name: str = Field("local", description="Shown in offers and runs.")
    gpu_ram_gb: float = Field(0.0, ge=0, description="Memory of the local accelerator (0 for CPU).")
    dph: float = Field(0.0, ge=0, description="What an hour of this machine costs you (for the ledger).")


class VastSettings(_Section):
    api_url: str = Field("https://console.vast.ai", description="Vast REST base URL (a local server in tests).")
    api_key: SecretStr | None = Field(
        None, description="From LEARNING_PILOT_GPU__VAST__API_KEY or the systemd credential gpu__vast__api_key."
    )
    image: str = Field("pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", description="Container image for jobs.")


class RemoteJobSettings(_Section):
    """How a job runs on a rented host (any provider but ``local``): see pilot/runs/remote.py."""

    python: str = Field(
        "python3", description="Interpreter on the host that runs the job (the image's python; a venv's in tests)."
    )
    loading_timeout_s: float = Field(
        900.0, gt=0, description="An instance not running its job after this long (image pull, boot) is replaced."
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="Hosts tried per run (first launch included); a retry always resumes from "
        "the last complete checkpoint, and starts only after the previous instance is verified destroyed.",
    )
    interruptible: bool = Field(False, description="Rent bid (interruptible) instances; when outbid, resume elsewhere.")
    bid_markup: float = Field(1.2, ge=1.0, le=5.0, description="Bid = the offer's minimum bid x this.")
    heartbeat_every_s: float = Field(30.0, gt=0, description="How often the host uploads its heartbeat.")
    save_steps: int = Field(100, ge=1, description="Steps between checkpoints uploaded from the host.")
    max_upload_mb: float = Field(
        2048.0,
        gt=0,
        description="Largest file a host may hand back (adapter, checkpoint file); refused by its stored size before "
        "download. Heartbeats, checkpoint markers and results have fixed caps (pilot/runs/host.py: UPLOAD_LIMITS).",
    )
    _gone = model_validator(mode="before")(
        lambda data: _refuse_removed(data, "gpu.remote", {"job_module": REMOVED_SEAM})
    )
    disk_gb: float = Field(30.0, gt=0, description="Disk asked for each instance (billed as storage).")
    job_env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment for the job (e.g. HF_HUB_OFFLINE). Never put credentials here: it is refused.",
    )

    @model_validator(mode="before")
    @classmethod
    def refuse_removed_keys(cls, data: Any) -> Any:
        return _refuse_removed(data, "gpu.remote", {"job_module": REMOVED_SEAM})


class GpuSettings(_Section):
    provider: Literal["local", "vast", "fake"] = Field("local", description="Where training jobs run.")
    local: LocalGpuSettings = LocalGpuSettings()
    vast: VastSettings = VastSettings()
    remote: RemoteJobSettings = RemoteJobSettings()
    teardown_deadline_s: float = Field(
        60.0,
        gt=0,
        description="How long destroying an instance is retried (with backoff) before it is reported not verified "
        "gone; the reconciler keeps trying after that and the run's reservation stays until it succeeds.",
    )


class ArtifactSettings(_Section):
    kind: Literal["local", "s3"] = "local"
    path: Path | None = Field(None, description="Local store directory. Empty: <data_dir>/artifacts.")
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = Field(None, description="For S3-compatible stores (MinIO, R2, a test server).")
    s3_region: str | None = None
    presign_expiry_s: int = Field(900, ge=60, le=7 * 24 * 3600)


class SchedulerSettings(_Section):
    cycle_interval_s: float = Field(300.0, gt=0, description="How often the supervisor runs a cycle.")
    reconcile_interval_s: float = Field(60.0, gt=0, description="How often owned instances are reconciled.")
    lease_ttl_s: float = Field(
        60.0,
        ge=1,
        description="How long a job's or a supervisor thread's lease lasts without renewal (renewed every third of "
        "it while the holder works). A crashed process's runs and threads are taken over after this.",
    )
    jobs_interval_s: float = Field(
        10.0, gt=0, description="How often the daemon's workers advance the jobs on rented hosts (runs, stages)."
    )


class ApiSettings(_Section):
    host: str = Field("127.0.0.1", description="Bind address. Keep loopback unless behind an authenticating proxy.")
    port: int = Field(8765, ge=0, le=65535)
    kill_token: SecretStr | None = Field(None, description="Bearer token for /v1/kill and /v1/resume.")
    refusal_event_every_s: float = Field(
        60.0,
        ge=0,
        description="A refused request is always counted (learning_pilot_api_refusals_total) but written as an event "
        "only once per route, status and reason in this window; the event says how many like it were not written.",
    )


class IngestSettings(_Section):
    drop_dir: Path | None = Field(None, description="Watched JSONL directory. Empty: <data_dir>/inbox.")
    batch_size: int = Field(
        5000,
        ge=1,
        description="Records validated and written per transaction (drop dir and HTTP); bounds how long one ingest "
        "holds the store's write lock, which the kill switch's pause needs.",
    )
    dead_letters_per_request: int = Field(
        1000,
        ge=0,
        description="Invalid lines of one HTTP request written as dead-letter rows (with their raw text); the rest are "
        "counted and recorded in one summary row, so junk cannot fill the store.",
    )


class LlmSettings(_Section):
    model: str | None = Field(
        None,
        description="litellm model name (e.g. openai/gpt-4o-mini, ollama/llama3). Empty: deterministic policy only.",
    )
    api_base: str | None = Field(None, description="Base URL for a local OpenAI-compatible server (vLLM, Ollama).")
    api_key: SecretStr | None = Field(None, description="From LEARNING_PILOT_LLM__API_KEY or a credential file.")
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(2, ge=0)
    max_tokens_per_decision: int = Field(1024, ge=16)
    daily_budget_usd: float = Field(1.0, ge=0, description="LLM spend per UTC day; over it, the policy decides alone.")
    daily_token_budget: int = Field(200_000, ge=0)
    temperature: float = Field(0.0, ge=0, le=2)


class SlackSettings(_Section):
    enabled: bool = Field(False, description="Post approvals to Slack (the CLI stays the fallback).")
    base_url: str = Field("https://slack.com/api/", description="Slack Web API base URL (a local fake in tests).")
    bot_token: SecretStr | None = Field(None, description="xoxb- token: LEARNING_PILOT_SLACK__BOT_TOKEN.")
    signing_secret: SecretStr | None = Field(None, description="Verifies interactivity requests.")
    channel: str = Field("#learning-pilot", description="Where approval requests go.")
    report_channel: str | None = Field(None, description="Daily report channel (default: channel).")
    approvers: list[str] = Field(default_factory=list, description="Slack user ids allowed to approve.")
    reminder_before_expiry_minutes: float = Field(60.0, ge=0)


class KnowledgeSettings(_Section):
    enabled: bool = Field(
        False,
        description="Keep a knowledge base of successful solutions, refreshed every cycle. Needs an embedder: "
        "online, the fastembed model; offline, embedding_model_path (`learning-pilot kb export-embedder DIR`).",
    )
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL. Empty: embedded local mode under the data dir."
    )
    qdrant_path: Path | None = Field(None, description="Local-mode directory. Empty: <data_dir>/qdrant.")
    collection: str = Field("solutions")
    embedding_model: str = Field("BAAI/bge-small-en-v1.5", description="fastembed model name (downloads when online).")
    embedding_model_path: Path | None = Field(
        None, description="Local ONNX model directory (offline); build one with `learning-pilot kb export-embedder`."
    )
    top_k: int = Field(5, ge=1, le=100)
    min_success_rate: float = Field(0.5, ge=0, le=1)


class MonitoringSettings(_Section):
    interval_s: float = Field(300.0, gt=0, description="How often live quality is checked.")
    min_records: int = Field(30, ge=1, description="Live records per version before a comparison counts.")
    alpha: float = Field(0.01, gt=0, lt=1, description="Significance level of the regression test.")
    min_drop: float = Field(0.05, ge=0, description="Smallest success-rate drop that triggers a rollback.")
    window_hours: float = Field(
        24.0,
        gt=0,
        description="Monitoring window: the champion's live records since its promotion and at most this old, "
        "against the previous champion's from this long before the promotion on.",
    )


class DeploySettings(_Section):
    target: Literal["pointer", "vllm", "ollama"] = Field("pointer", description="Where a promoted adapter goes.")
    pointer_path: Path | None = Field(None, description="Pointer file. Empty: <data_dir>/serving/current.json.")
    vllm_url: str | None = None
    vllm_api_key: SecretStr | None = None
    ollama_url: str | None = None
    canary: bool = Field(
        False,
        description="Roll a new champion out gradually: canary_steps of sessions (pick_model, GET /v1/route), "
        "stepped up while live quality holds. Off: a promotion serves every session at once.",
    )
    canary_steps: list[float] = Field(
        default_factory=lambda: [0.1, 0.5, 1.0],
        description="Session shares of a canary rollout, increasing, ending at 1.0.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEARNING_PILOT_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    env: str = Field("dev", pattern=r"^[a-z0-9][a-z0-9-]{0,31}$", description="Names this deployment in labels.")
    data_dir: Path = Field(Path("data"), description="Where the store, snapshots, artifacts and models live.")
    store: StoreSettings = StoreSettings()
    policy: PolicySettings = PolicySettings()
    budget: BudgetSettings = BudgetSettings()
    curation: CurationSettings = CurationSettings()
    training: TrainingSettings = TrainingSettings()
    rewards: RewardSettings = RewardSettings()
    reinforcement: ReinforcementSettings = ReinforcementSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    gpu: GpuSettings = GpuSettings()
    artifacts: ArtifactSettings = ArtifactSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    api: ApiSettings = ApiSettings()
    ingest: IngestSettings = IngestSettings()
    llm: LlmSettings = LlmSettings()
    slack: SlackSettings = SlackSettings()
    knowledge: KnowledgeSettings = KnowledgeSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    deploy: DeploySettings = DeploySettings()
    dashboard: DashboardSettings = DashboardSettings()
    gateway: GatewaySettings = GatewaySettings()

    @model_validator(mode="after")
    def _grpo_fits(self) -> Settings:
        r = self.reinforcement
        if r.enabled and r.choose_method and r.allow_rl and r.grpo_max_new_tokens >= self.training.seq_len:
            raise ValueError(
                f"reinforcement.grpo_max_new_tokens ({r.grpo_max_new_tokens}) must be below training.seq_len "
                f"({self.training.seq_len}): a GRPO sample is the prompt plus its completion (or set allow_rl = false)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            CredentialsSource(settings_cls),
            TomlConfigSettingsSource(settings_cls),
            file_secret_settings,
        )

    # -- derived paths --------------------------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return self.store.url or f"sqlite:///{self.data_dir / 'pilot.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def artifacts_dir(self) -> Path:
        return self.artifacts.path or self.data_dir / "artifacts"

    @property
    def drop_dir(self) -> Path:
        return self.ingest.drop_dir or self.data_dir / "inbox"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"

    @property
    def spool_dir(self) -> Path:
        return self.gateway.spool_dir or self.data_dir / "spool"


class CredentialsSource(PydanticBaseSettingsSource):
    """systemd credentials (``LoadCredential=``): each file in ``$CREDENTIALS_DIRECTORY`` named after a key path,
    ``gpu__vast__api_key`` or ``LEARNING_PILOT_GPU__VAST__API_KEY``, holds that key's value. Secrets stay out of
    the environment and the TOML file."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory or not Path(directory).is_dir():
            return {}
        values: dict[str, Any] = {}
        for file in sorted(Path(directory).iterdir()):
            name = file.name.lower().removeprefix("learning_pilot_")
            parts = [part for part in name.split("__") if part]
            if not parts or not file.is_file():
                continue
            node = values
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = file.read_text().strip()
        return values


def find_config(explicit: Path | None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return explicit
    env_path = os.environ.get("LEARNING_PILOT_CONFIG")
    if env_path:
        return find_config(Path(env_path))
    for candidate in DEFAULT_SEARCH_PATH:
        path = candidate.expanduser()
        if path.is_file():
            return path
    return None


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once. Raises ConfigError naming the file and the offending key."""
    path = find_config(config)
    if path is not None:
        try:
            tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    file_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})  # type: ignore[typeddict-item]
    configured = type("Settings", (Settings,), {"model_config": file_config, "__module__": __name__})
    try:
        settings: Settings = configured(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
    if not settings.data_dir.is_absolute():
        settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    base = settings.training.base_model
    if base.startswith(("./", "../")):  # a local path relative to the working directory, not a hub id
        training = settings.training.model_copy(update={"base_model": str(Path(base).resolve())})
        settings = settings.model_copy(update={"training": training})
    return settings


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = str(path) if path else "settings"
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(root)"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{key}: {message}")
    return f"{where}: " + "; ".join(problems)
