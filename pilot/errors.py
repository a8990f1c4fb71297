"""Control-plane errors. The root and the adapter errors live in tools/errors.py; the whole tree::

PilotError (tools.errors)
├── ProviderError, ArtifactError, DeployError, NotificationError   (tools.errors: outside world)
├── ConfigError              the settings file or environment is invalid (CLI exit 2)
├── StoreError               the store refused an operation
│   ├── NotFound             no such entity (unknown run, approval, model version)
│   ├── TransitionError      a status change not in the allowed-edges table
│   └── ConflictError        compare-and-set lost: someone else changed it first
├── BudgetError              a reservation would exceed a cap
├── PausedError              the kill switch is engaged; nothing may spend
└── InUseError               another process holds what this one needs (a gateway's port and spool)
"""

from __future__ import annotations

from tools.errors import PilotError


class ConfigError(PilotError):
    """The configuration is invalid; the message names the file and the key."""


class StoreError(PilotError):
    """The store refused an operation."""


class NotFound(StoreError):
    """No such entity."""


class TransitionError(StoreError):
    """A status change that the allowed-edges table does not permit."""


class ConflictError(StoreError):
    """Compare-and-set failed: the entity is no longer in the expected status."""


class BudgetError(PilotError):
    """A reservation would exceed a budget cap."""


class PausedError(PilotError):
    """The pilot is paused (kill switch); nothing may spend until resumed."""


class InUseError(PilotError):
    """Another live process holds what this one needs (a gateway's spool and figures for its port)."""
