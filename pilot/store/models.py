"""The tables. The database is the source of truth for runs, decisions, approvals, spend, models and events.

Status columns are plain text holding the ``*Status`` enum values; they are changed only by
``pilot/store/writers.py``. Timestamps are timezone-aware UTC (``utcnow()``), stored as UTC on both databases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored timestamp as aware UTC. Column values come back aware, but SQLite aggregates (``max()``) bypass the
    column type and return naive UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ExecutionRecordRow(SQLModel, table=True):
    __tablename__ = "execution_record"
    __table_args__ = (
        Index("ix_execution_record_domain_id", "domain", "id"),
        # covers the dashboard's per-day aggregates (records per domain, success per version) without the table
        Index("ix_execution_record_ts_cover", "ts", "domain", "model_version", "success"),
    )

    id: int | None = Field(default=None, primary_key=True)
    record_id: str = Field(max_length=200, unique=True)  # the producer's idempotency key
    content_hash: str = Field(max_length=64, index=True)
    domain: str = Field(max_length=64)
    success: bool
    session_id: str = Field(max_length=200)
    model_version: str | None = Field(default=None, max_length=200, index=True)
    ts: datetime = Field(index=True)
    ingested_at: datetime = Field(default_factory=utcnow)
    source: str = Field(default="", max_length=500)
    producer: str | None = Field(default=None, max_length=100, index=True)  # who sent it (token name, drop-dir, cli)
    payload: str = Field(sa_column=Column(Text, nullable=False))  # the validated record as JSON


class ProducerToken(SQLModel, table=True):
    """A producer's credential for the ingest endpoints (``pilot/data/producers.py`` is the only writer).

    Only the sha256 of the token is stored; ``prefix`` (the first characters of the raw token) lets an operator
    match a token to its row without the secret. ``scopes`` is a comma-separated list (``records:write``...)."""

    __tablename__ = "producer_token"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=100, index=True)
    token_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=20)
    scopes: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class DeadLetter(SQLModel, table=True):
    __tablename__ = "dead_letter"

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=500)
    location: str = Field(default="", max_length=100)  # line number or batch index
    reason: str = Field(sa_column=Column(Text, nullable=False))
    raw: str = Field(sa_column=Column(Text, nullable=False))  # truncated copy of what arrived
    received_at: datetime = Field(default_factory=utcnow, index=True)


class DatasetSnapshot(SQLModel, table=True):
    __tablename__ = "dataset_snapshot"

    id: str = Field(primary_key=True, max_length=40)
    content_hash: str = Field(max_length=64, unique=True)
    path: str
    created_at: datetime = Field(default_factory=utcnow)
    max_record_pk: int = 0  # the newest execution_record.id the snapshot saw (the "new data" watermark)
    train_count: int = 0
    eval_count: int = 0
    golden_count: int = 0
    manifest: dict[str, Any] = _json()


class Decision(SQLModel, table=True):
    __tablename__ = "decision"

    id: str = Field(primary_key=True, max_length=40)
    thread_id: str = Field(max_length=80, index=True)
    action: str = Field(max_length=20)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    figures: dict[str, Any] = _json()
    rationale: str | None = Field(default=None, sa_column=Column(Text))
    actor: str = Field(default="supervisor", max_length=100)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    finished_at: datetime | None = None
    outcome: str | None = Field(default=None, sa_column=Column(Text))


class Approval(SQLModel, table=True):
    __tablename__ = "approval"

    id: str = Field(primary_key=True, max_length=40)
    decision_id: str = Field(foreign_key="decision.id", max_length=40, index=True)
    kind: str = Field(max_length=20)
    status: str = Field(max_length=20, index=True)
    thread_id: str = Field(max_length=80)
    summary: dict[str, Any] = _json()
    cost_ceiling_usd: float = 0.0
    requested_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = Field(default=None, max_length=200)
    note: str | None = Field(default=None, sa_column=Column(Text))


class TrainingRun(SQLModel, table=True):
    __tablename__ = "training_run"

    id: str = Field(primary_key=True, max_length=40)
    decision_id: str = Field(foreign_key="decision.id", max_length=40, index=True)
    approval_id: str | None = Field(default=None, max_length=40)
    snapshot_id: str = Field(foreign_key="dataset_snapshot.id", max_length=40)
    status: str = Field(max_length=20, index=True)
    termination_reason: str | None = Field(default=None, max_length=40)
    status_message: str | None = Field(default=None, sa_column=Column(Text))
    provider: str = Field(max_length=20)
    label: str = Field(max_length=200, index=True)
    offer_id: str | None = Field(default=None, max_length=80)
    instance_id: str | None = Field(default=None, max_length=80)
    dph: float = 0.0
    estimated_cost_usd: float = 0.0
    actual_cost_usd: float | None = None
    config: dict[str, Any] = _json()
    metrics: dict[str, Any] = _json()
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class SpendEntry(SQLModel, table=True):
    """The ledger. Spend = actual entries + active reservations. A reservation is released when replaced."""

    __tablename__ = "spend_ledger"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=20)  # reservation | actual
    category: str = Field(max_length=20)  # gpu | llm | storage
    run_id: str | None = Field(default=None, max_length=40, index=True)
    amount_usd: float
    active: bool = True  # reservations only: False once released or replaced by actual spend
    note: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class PendingSettlement(SQLModel, table=True):
    """Spend settled at an estimate (the provider had published no charge, or less than elapsed time x $/h): the
    settle worker re-reads the provider's charges for ``label`` until they cover the estimate, ``tries`` reach the
    limit or ``until`` passes (``pilot/spend/settlement.py`` is the only writer)."""

    __tablename__ = "pending_settlement"

    label: str = Field(primary_key=True, max_length=200)
    run_id: str = Field(max_length=60, index=True)  # the ledger's run id: a training run or an evaluation stage
    category: str = Field(default="gpu", max_length=20)
    since: float  # unix seconds: charges are read from a day before this
    estimate_usd: float
    provider_usd: float | None = None  # the provider's figure at the last read (None: no charge row yet)
    tries: int = 0
    next_at: datetime = Field(default_factory=utcnow)
    until: datetime = Field(default_factory=utcnow)
    done: bool = Field(default=False, index=True)
    outcome: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_version"

    id: str = Field(primary_key=True, max_length=40)
    status: str = Field(max_length=20, index=True)
    run_id: str | None = Field(default=None, foreign_key="training_run.id", max_length=40)
    snapshot_id: str | None = Field(default=None, max_length=40)
    snapshot_hash: str | None = Field(default=None, max_length=64)
    base_model: str
    adapter_uri: str | None = None
    adapter_sha256: str | None = Field(default=None, max_length=64)
    adapter_files: dict[str, Any] = _json()  # file name -> {"key", "sha256", "size"}
    eval_report: dict[str, Any] = _json()
    created_at: datetime = Field(default_factory=utcnow)


class ModelAlias(SQLModel, table=True):
    __tablename__ = "model_alias"

    name: str = Field(primary_key=True, max_length=40)  # champion | previous | candidate
    version_id: str | None = Field(default=None, max_length=40)
    updated_at: datetime = Field(default_factory=utcnow)


class AliasHistory(SQLModel, table=True):
    __tablename__ = "alias_history"

    id: int | None = Field(default=None, primary_key=True)
    alias: str = Field(max_length=40, index=True)
    old_version: str | None = Field(default=None, max_length=40)
    new_version: str | None = Field(default=None, max_length=40)
    actor: str = Field(max_length=200)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime = Field(default_factory=utcnow)


class Event(SQLModel, table=True):
    """The audit trail: one row per status change or notable action, written in the same transaction."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_entity", "entity_type", "entity_id"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    entity_type: str = Field(max_length=40)
    entity_id: str = Field(max_length=80)
    actor: str = Field(max_length=200)
    old: str | None = Field(default=None, max_length=40)
    new: str | None = Field(default=None, max_length=40)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    data: dict[str, Any] = _json()


class PilotState(SQLModel, table=True):
    """Small durable flags (``paused``) that must survive restarts."""

    __tablename__ = "pilot_state"
    __table_args__ = (UniqueConstraint("key"),)

    key: str = Field(primary_key=True, max_length=60)
    value: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)


class Lease(SQLModel, table=True):
    """Who may advance a job or a supervisor thread right now (``pilot/store/leases.py`` is the only writer).

    ``name`` is ``<kind>:<id>`` (``thread:cycle-…``, ``run:run-…``, ``stage:eval-…``). A lease is taken or renewed
    by compare-and-set; ``epoch`` grows on every change of owner, so a holder that lost its lease can tell."""

    __tablename__ = "lease"

    name: str = Field(primary_key=True, max_length=120)
    owner: str = Field(max_length=200)
    epoch: int = 0
    acquired_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)


class RunAttempt(SQLModel, table=True):
    """One try of a training run on one rented host: the unit the provider bills. Status in ``AttemptStatus``.

    The row is committed (``pending``) before the provider is asked for an instance; the instance id is recorded
    when the provider accepts (``launched``); ``ended`` only once the provider confirmed the instance gone."""

    __tablename__ = "run_attempt"
    __table_args__ = (UniqueConstraint("run_id", "n"),)

    id: str = Field(primary_key=True, max_length=60)  # <run_id>-a<n>
    run_id: str = Field(foreign_key="training_run.id", max_length=40, index=True)
    n: int
    status: str = Field(max_length=20, index=True)
    offer_id: str = Field(max_length=80)
    host: str = Field(default="", max_length=120)  # machine-<id>: a host is never tried twice for one run
    gpu: str = Field(default="", max_length=80)
    dph: float = 0.0
    bid: float | None = None
    resume_step: int | None = None
    instance_id: str | None = Field(default=None, max_length=80, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    launched_at: datetime | None = None
    running_since: datetime | None = None  # first seen running, by this side's clock (hosts' clocks are not trusted)
    last_seq: str | None = Field(default=None, max_length=80)  # the last heartbeat's sequence number seen
    last_beat_at: datetime | None = None  # when it was first seen, by this side's clock
    ended_at: datetime | None = None
    end_reason: str | None = Field(default=None, sa_column=Column(Text))


class EvalStage(SQLModel, table=True):
    """A candidate's evaluation generation on its own rented host (``evaluation.where = "remote"``). Status in
    ``StageStatus``; its money is the ledger reservation under the stage id, settled from the provider's charges."""

    __tablename__ = "eval_stage"

    id: str = Field(primary_key=True, max_length=60)
    version_id: str = Field(max_length=40, index=True)
    status: str = Field(max_length=20, index=True)
    label: str = Field(max_length=200, index=True)
    offer_id: str | None = Field(default=None, max_length=80)
    gpu: str = Field(default="", max_length=80)
    dph: float = 0.0
    instance_id: str | None = Field(default=None, max_length=80)
    reserved_usd: float = 0.0
    actual_cost_usd: float | None = None
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    launched_at: datetime | None = None
    running_since: datetime | None = None  # first seen running, by this side's clock
    last_seq: str | None = Field(default=None, max_length=80)  # the last heartbeat's sequence number seen
    last_beat_at: datetime | None = None  # when it was first seen, by this side's clock
    ended_at: datetime | None = None
    end_reason: str | None = Field(default=None, sa_column=Column(Text))


class DashboardUser(SQLModel, table=True):
    """A person who may sign in to the web dashboard (``learning-pilot dashboard-user create``). Only the token's
    SHA-256 is stored; the token itself is shown once, when created."""

    __tablename__ = "dashboard_user"

    id: str = Field(primary_key=True, max_length=100)  # recorded as human:<id> on what the person does
    token_sha256: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = Field(default="", max_length=200)
    revoked_at: datetime | None = None


class DashboardSession(SQLModel, table=True):
    """A signed-in browser: the cookie holds the session token, the row its SHA-256, the CSRF token and expiry."""

    __tablename__ = "dashboard_session"

    id_sha256: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(foreign_key="dashboard_user.id", max_length=100, index=True)
    csrf: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)


class GatewayCall(SQLModel, table=True):
    """One call the capture gateway proxied (pilot/gateway/), scrubbed. ``status`` is ``CallStatus``: open (an
    outcome may still come), labelled (joined into the execution record ``record_id``), unlabelled (the feedback
    window passed: traffic for drift and volume, not training)."""

    __tablename__ = "gateway_call"
    __table_args__ = (Index("ix_gateway_call_session_ts", "session_id", "ts"),)

    request_id: str = Field(primary_key=True, max_length=64)
    session_id: str = Field(max_length=200)
    endpoint: str = Field(max_length=40)
    model: str = Field(max_length=200)  # what the upstream was asked for (adapter name or base model)
    model_version: str | None = Field(default=None, max_length=200, index=True)
    producer: str = Field(default="", max_length=200)
    ts: datetime = Field(index=True)
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    upstream_status: int = 0
    outcome: str = Field(max_length=20)  # ok | upstream_error | timeout | unreachable | cut | client_gone
    streamed: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt: str = Field(sa_column=Column(Text, nullable=False))  # scrubbed messages / prompt as JSON
    output: str = Field(sa_column=Column(Text, nullable=False))  # scrubbed answer (a stream reassembled)
    status: str = Field(default="open", max_length=20, index=True)
    record_id: str | None = Field(default=None, max_length=200)
    feedback: dict[str, Any] = _json()
    ingested_at: datetime = Field(default_factory=utcnow)
    labelled_at: datetime | None = None
