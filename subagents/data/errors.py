"""Errors raised by the data subagent.

The tree (rooted in ``tools.errors.PilotError``)::

    PilotError
    └── DataError                 the data subagent refused its input or could not write its output
        ├── RecordError           one execution record is invalid (also a ValueError); ``.reason`` names the field
        └── SnapshotError         a snapshot could not be written or read back intact
            ├── SnapshotExistsError   the snapshot directory already holds a snapshot (snapshots are immutable)
            └── ResidualSecretError   the final scan still found a secret or PII after scrubbing; nothing shipped
"""

from __future__ import annotations

from tools.errors import PilotError


class DataError(PilotError):
    """The data subagent refused its input or failed to write its output."""


class RecordError(DataError, ValueError):
    """An execution record is invalid. ``reason`` is one line and names the offending field."""

    def __init__(self, reason: str) -> None:
        # One line, bounded: the reason is stored in the dead-letter table and shown to humans.
        reason = " ".join(reason.split())[:500] or "invalid record"
        super().__init__(reason)
        self.reason = reason


class SnapshotError(DataError):
    """A snapshot could not be written, or what is on disk does not match its manifest."""


class SnapshotExistsError(SnapshotError):
    """The target directory already holds a snapshot; snapshots are never overwritten."""


class ResidualSecretError(SnapshotError):
    """The final pass (final_pass.py) still found secrets or PII in what was about to be written.

    ``record_ids`` names the items (record ids for snapshot lines, point ids for knowledge-base payloads);
    ``kinds`` the detector kinds. The values themselves are never carried: this error is logged.
    """

    def __init__(self, message: str, *, record_ids: list[str], kinds: list[str]) -> None:
        super().__init__(message)
        self.record_ids = record_ids
        self.kinds = kinds
