"""Status enums and the one table of allowed edges per entity.

Only the writers in ``pilot/store/writers.py`` change a status, and only along these edges. Run state diagram
(also in the README)::

    pending ──► provisioning ──► running ──► collecting ──► succeeded
       │             │              │             │
       └─────────────┴──────────────┴─────────────┴──────► failed | cancelled
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

ALLOWED_EDGES: dict[type[enum.StrEnum], dict] = {  # type: ignore[type-arg]
    RunStatus: _RUN_EDGES,
    ApprovalStatus: _APPROVAL_EDGES,
    ModelStatus: _MODEL_EDGES,
}


def is_allowed(old: enum.StrEnum, new: enum.StrEnum) -> bool:
    edges = ALLOWED_EDGES[type(old)]
    return new in edges[old]
