"""Canary routing: stable per session, proportional to the share, monotone as the share grows."""

from __future__ import annotations

import pytest

from tools.serving.canary import bucket, next_share, pick_model

SESSIONS = [f"session-{i}" for i in range(5000)]


def test_same_session_same_model() -> None:
    picks = {pick_model("abc", champion="champ", candidate="cand", share=0.5) for _ in range(20)}
    assert len(picks) == 1


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_share_of_sessions_goes_to_the_candidate(share: float) -> None:
    to_candidate = sum(pick_model(s, champion="a", candidate="b", share=share) == "b" for s in SESSIONS)
    assert abs(to_candidate / len(SESSIONS) - share) < 0.03


def test_raising_the_share_only_moves_sessions_to_the_candidate() -> None:
    at_10 = {s for s in SESSIONS if pick_model(s, champion="a", candidate="b", share=0.1) == "b"}
    at_50 = {s for s in SESSIONS if pick_model(s, champion="a", candidate="b", share=0.5) == "b"}
    assert at_10 < at_50


@pytest.mark.parametrize(("candidate", "share", "expected"), [(None, 0.5, "a"), ("b", 0.0, "a"), ("b", 1.0, "b")])
def test_edges(candidate: str | None, share: float, expected: str) -> None:
    assert all(pick_model(s, champion="a", candidate=candidate, share=share) == expected for s in SESSIONS[:200])


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_share_out_of_range(share: float) -> None:
    with pytest.raises(ValueError):
        pick_model("s", champion="a", candidate="b", share=share)


def test_bucket_is_the_sha256_prefix() -> None:
    # sha256("abc") starts with ba7816bf8f01cfea: a fixed value, so routing survives restarts and hosts.
    assert bucket("abc") == 0xBA7816BF8F01CFEA / 2**64


@pytest.mark.parametrize(("current", "expected"), [(0.0, 0.1), (0.1, 0.5), (0.3, 0.5), (0.5, 1.0), (1.0, 1.0)])
def test_next_share_steps(current: float, expected: float) -> None:
    assert next_share(current) == expected
