"""Status enums and the one table of allowed edges per entity.

Only the writers in ``pilot/store/writers.py`` change a status, and only along these edges. Run state diagram
(also in the README)::

    pending ──► provisioning ──► running ──► collecting ──► succeeded
       │             │              │             │
       └─────────────┴──────────────┴─────────────┴──────► failed | cancelled

A run has one or more attempts (one per rented host; a retry on another host is a new attempt)::

    pending ──► launched ──► running ──► ending ──► ended       (ending: destroy asked, not yet confirmed gone)
       │            └───────────┴───────────────────► ended
       └──► launch_failed | refused | lost                      (nothing was rented)

An evaluation stage on a rented host::

    pending ──► launched ──► running ──► collecting ──► succeeded
       └───────────┴────────────┴────────────┴──────► failed | cancelled
"""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    PENDING = "pending"  # row and budget reservation committed; nothing rented yet
    PROVISIONING = "provisioning"  # the provider accepted the launch; instance id recorded
    RUNNING = "running"  # the job is running on the instance
    COLLECTING = "collecting"  # the job exited 0; outputs are being verified and stored
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class RunTerminationReason(enum.StrEnum):
    JOB_FAILED = "job_failed"
    LAUNCH_FAILED = "launch_failed"
    NO_OFFER = "no_offer"
    INSTANCE_VANISHED = "instance_vanished"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    BUDGET_EXCEEDED = "budget_exceeded"
    INVALID_OUTPUT = "invalid_output"
    CANCELLED_BY_USER = "cancelled_by_user"
    KILL_SWITCH = "kill_switch"
    DAEMON_LOST_TRACK = "daemon_lost_track"

    def to_status(self) -> RunStatus:
        if self in (RunTerminationReason.CANCELLED_BY_USER, RunTerminationReason.KILL_SWITCH):
            return RunStatus.CANCELLED
        return RunStatus.FAILED


class AttemptStatus(enum.StrEnum):
    """One training attempt on one rented host (``RunAttempt``)."""

    PENDING = "pending"  # row committed; the provider has not accepted anything yet
    LAUNCHED = "launched"  # the provider accepted the create; instance id recorded; billing may have started
    RUNNING = "running"  # the job is running on the instance
    ENDING = "ending"  # destroy asked, not yet confirmed by the provider (the reconciler keeps trying)
    ENDED = "ended"  # the provider confirmed the instance gone
    LAUNCH_FAILED = "launch_failed"  # the provider refused the create; nothing was rented
    REFUSED = "refused"  # the effect gate refused the rental (paused, cancelled, lease lost, budget, approval)
    LOST = "lost"  # the process died between recording and renting, and no instance carries the label

    @property
    def is_terminal(self) -> bool:
        return self in (AttemptStatus.ENDED, AttemptStatus.LAUNCH_FAILED, AttemptStatus.REFUSED, AttemptStatus.LOST)

    @property
    def may_bill(self) -> bool:
        """An instance may exist and bill: it must be destroyed and verified gone before the attempt ends."""
        return self in (AttemptStatus.LAUNCHED, AttemptStatus.RUNNING, AttemptStatus.ENDING)


class StageStatus(enum.StrEnum):
    """An evaluation stage on its own rented host (``EvalStage``)."""

    PENDING = "pending"  # row and reservation committed; nothing rented yet
    LAUNCHED = "launched"  # the provider accepted the create; instance id recorded
    RUNNING = "running"
    COLLECTING = "collecting"  # the host uploaded its predictions; the daemon verifies and scores them
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (StageStatus.SUCCEEDED, StageStatus.FAILED, StageStatus.CANCELLED)


class ApprovalStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class ApprovalKind(enum.StrEnum):
    TRAINING = "training"
    PROMOTION = "promotion"


class ModelStatus(enum.StrEnum):
    CANDIDATE = "candidate"  # trained, not yet judged
    AWAITING_REVIEW = "awaiting_review"  # the gate was inconclusive; a human decides
    PROMOTED = "promoted"  # currently or formerly champion, in good standing
    REJECTED = "rejected"  # the gate (or a human) said no
    ROLLED_BACK = "rolled_back"  # was champion, taken down for a regression


class Alias(enum.StrEnum):
    """Registry aliases (``model_alias.name``)."""

    CHAMPION = "champion"
    PREVIOUS = "previous"
    CANDIDATE = "candidate"


class EntityType(enum.StrEnum):
    """``event.entity_type``: what an audit row is about."""

    TRAINING_RUN = "training_run"
    RUN_ATTEMPT = "run_attempt"
    EVAL_STAGE = "eval_stage"
    APPROVAL = "approval"
    MODEL_VERSION = "model_version"
    MODEL_ALIAS = "model_alias"
    DECISION = "decision"
    DEPLOYMENT = "deployment"
    INSTANCE = "instance"
    INCIDENT = "incident"
    PILOT = "pilot"
    LEASE = "lease"
    EFFECT = "effect"  # a side effect the gate refused
    LLM_CALL = "llm_call"
    EVALUATION = "evaluation"  # an evaluation stage's account (entity id: the stage id)
    DATASET_SNAPSHOT = "dataset_snapshot"
    KNOWLEDGE_BASE = "knowledge_base"
    CANARY = "canary"
    API = "api"
    SLACK_ACTION = "slack_action"
    PRODUCER = "producer"  # a producer token created or revoked (entity id: the token id)
    DASHBOARD = "dashboard"  # sign-ins, refused dashboard requests, dashboard users created or revoked
    GATEWAY_CALL = "gateway_call"  # feedback on a proxied call (entity id: the request id)


class CallStatus(enum.StrEnum):
    """``gateway_call.status``: open (an outcome may still come), labelled (joined into an execution record),
    unlabelled (the feedback window passed: drift and volume only)."""

    OPEN = "open"
    LABELLED = "labelled"
    UNLABELLED = "unlabelled"


class DecisionAction(enum.StrEnum):
    WAIT = "wait"
    FINETUNE = "finetune"
    PROMOTE = "promote"
    REJECT = "reject"
    ROLLBACK = "rollback"


_RUN_EDGES: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.PROVISIONING, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.PROVISIONING: frozenset({RunStatus.RUNNING, RunStatus.COLLECTING, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset({RunStatus.COLLECTING, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.COLLECTING: frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}

_ATTEMPT_EDGES: dict[AttemptStatus, frozenset[AttemptStatus]] = {
    AttemptStatus.PENDING: frozenset(
        {AttemptStatus.LAUNCHED, AttemptStatus.LAUNCH_FAILED, AttemptStatus.REFUSED, AttemptStatus.LOST}
    ),
    AttemptStatus.LAUNCHED: frozenset({AttemptStatus.RUNNING, AttemptStatus.ENDING, AttemptStatus.ENDED}),
    AttemptStatus.RUNNING: frozenset({AttemptStatus.ENDING, AttemptStatus.ENDED}),
    AttemptStatus.ENDING: frozenset({AttemptStatus.ENDED}),
    AttemptStatus.ENDED: frozenset(),
    AttemptStatus.LAUNCH_FAILED: frozenset(),
    AttemptStatus.REFUSED: frozenset(),
    AttemptStatus.LOST: frozenset(),
}

_STAGE_END = frozenset({StageStatus.FAILED, StageStatus.CANCELLED})
_STAGE_EDGES: dict[StageStatus, frozenset[StageStatus]] = {
    StageStatus.PENDING: frozenset({StageStatus.LAUNCHED}) | _STAGE_END,
    StageStatus.LAUNCHED: frozenset({StageStatus.RUNNING, StageStatus.COLLECTING}) | _STAGE_END,
    StageStatus.RUNNING: frozenset({StageStatus.COLLECTING}) | _STAGE_END,
    StageStatus.COLLECTING: frozenset({StageStatus.SUCCEEDED}) | _STAGE_END,
    StageStatus.SUCCEEDED: frozenset(),
    StageStatus.FAILED: frozenset(),
    StageStatus.CANCELLED: frozenset(),
}

_APPROVAL_EDGES: dict[ApprovalStatus, frozenset[ApprovalStatus]] = {
    ApprovalStatus.PENDING: frozenset(
        {ApprovalStatus.APPROVED, ApprovalStatus.REJECTED, ApprovalStatus.EXPIRED, ApprovalStatus.CANCELLED}
    ),
    ApprovalStatus.APPROVED: frozenset(),
    ApprovalStatus.REJECTED: frozenset(),
    ApprovalStatus.EXPIRED: frozenset(),
    ApprovalStatus.CANCELLED: frozenset(),
}

_MODEL_EDGES: dict[ModelStatus, frozenset[ModelStatus]] = {
    ModelStatus.CANDIDATE: frozenset({ModelStatus.PROMOTED, ModelStatus.REJECTED, ModelStatus.AWAITING_REVIEW}),
    ModelStatus.AWAITING_REVIEW: frozenset({ModelStatus.PROMOTED, ModelStatus.REJECTED}),
    ModelStatus.PROMOTED: frozenset({ModelStatus.ROLLED_BACK}),
    ModelStatus.ROLLED_BACK: frozenset({ModelStatus.PROMOTED}),
    ModelStatus.REJECTED: frozenset(),
}

_CALL_EDGES: dict[CallStatus, frozenset[CallStatus]] = {
    CallStatus.OPEN: frozenset({CallStatus.LABELLED, CallStatus.UNLABELLED}),
    CallStatus.LABELLED: frozenset({CallStatus.LABELLED}),  # a later outcome replaces the earlier one
    CallStatus.UNLABELLED: frozenset(),
}

ALLOWED_EDGES: dict[type[enum.StrEnum], dict] = {  # type: ignore[type-arg]
    RunStatus: _RUN_EDGES,
    AttemptStatus: _ATTEMPT_EDGES,
    StageStatus: _STAGE_EDGES,
    ApprovalStatus: _APPROVAL_EDGES,
    ModelStatus: _MODEL_EDGES,
    CallStatus: _CALL_EDGES,
}


def is_allowed(old: enum.StrEnum, new: enum.StrEnum) -> bool:
    edges = ALLOWED_EDGES[type(old)]
    return new in edges[old]
