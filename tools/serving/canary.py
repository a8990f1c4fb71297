"""Canary routing: a stable share of sessions sees the candidate.

Invariants: the choice depends only on the session id and the share, so a session never flips models while
the share is unchanged, and raising the share only moves sessions from champion to candidate (a session's
bucket is fixed; the threshold grows). ``next_share`` steps 0.1 -> 0.5 -> 1.0.
"""

from __future__ import annotations

import hashlib

__all__ = ["SHARE_STEPS", "bucket", "next_share", "pick_model"]

SHARE_STEPS = (0.1, 0.5, 1.0)


def bucket(session_id: str) -> float:
    """A number in [0, 1) from the first 8 bytes of sha256(session id)."""
    digest = hashlib.sha256(session_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick_model(session_id: str, *, champion: str, candidate: str | None, share: float) -> str:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"canary share must be within [0, 1], got {share}")
    if candidate is None or share == 0.0:
        return champion
    return candidate if bucket(session_id) < share else champion


def next_share(current: float) -> float:
    """The next canary step above ``current`` (0 -> 0.1 -> 0.5 -> 1.0; 1.0 stays 1.0)."""
    for step in SHARE_STEPS:
        if current < step:
            return step
    return 1.0
