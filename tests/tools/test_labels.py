"""Instance labels with an installation id: both formats parse, and another installation is never ours."""

from __future__ import annotations

import pytest

from tools.gpu.base import (
    MAX_INSTALLATION_CHARS,
    MAX_LABEL_CHARS,
    LabelOwner,
    ParsedLabel,
    instance_label,
    is_ours,
    label_owner,
    label_prefix,
    parse_label,
)


def test_old_format_is_unchanged_and_parses() -> None:
    label = instance_label("dev", "run-0123456789")
    assert label == "learning-pilot/dev/run-0123456789"
    assert parse_label(label) == ParsedLabel("dev", None, "run-0123456789")
    assert label.startswith(label_prefix("dev"))


def test_new_format_carries_the_installation_and_parses() -> None:
    label = instance_label("prod", "run-0123456789", "a1b2c3d4e5f6")
    assert label == "learning-pilot/prod/a1b2c3d4e5f6/run-0123456789"
    assert parse_label(label) == ParsedLabel("prod", "a1b2c3d4e5f6", "run-0123456789")
    assert label.startswith(label_prefix("prod", "a1b2c3d4e5f6"))
    assert label.startswith(label_prefix("prod")), "the env prefix still finds every installation's instances"


def test_the_longest_label_fits_vasts_limit() -> None:
    label = instance_label("e" * 32, "r" * 40, "i" * MAX_INSTALLATION_CHARS)
    assert len(label) <= MAX_LABEL_CHARS <= 256
    assert parse_label(label) == ParsedLabel("e" * 32, "i" * 32, "r" * 40)


@pytest.mark.parametrize(
    ("env", "run_id", "installation"),
    [
        ("dev", "run-1", "i" * (MAX_INSTALLATION_CHARS + 1)),
        ("dev", "run-1", "has/slash"),
        ("dev", "run-1", ""),
        ("dev", "r" * 41, "inst"),
        ("dev/x", "run-1", "inst"),
        ("dev", "run 1", "inst"),
        ("dev", "run-1", "-leading-dash"),
    ],
)
def test_new_labels_refuse_segments_that_would_not_parse_back(env: str, run_id: str, installation: str) -> None:
    with pytest.raises(ValueError):
        instance_label(env, run_id, installation)


@pytest.mark.parametrize(
    "label",
    [
        None,
        "",
        "job-1",
        "learning-pilot",
        "learning-pilot/dev",
        "learning-pilot/dev/",
        "learning-pilot//run-1",
        "learning-pilot/dev/inst/run-1/extra",
        "Learning-Pilot/dev/run-1",
        "other-tool/dev/inst/run-1",
        "learning-pilot/dev/in st/run-1",
    ],
)
def test_anything_else_is_not_a_learning_pilot_label(label: str | None) -> None:
    assert parse_label(label) is None
    assert label_owner(label, "dev", "inst") is LabelOwner.FOREIGN
    assert not is_ours(label, "dev", "inst")


OURS = "inst-aaaa"
THEIRS = "inst-bbbb"


@pytest.mark.parametrize(
    ("label", "old_format_ok", "owner"),
    [
        (instance_label("dev", "run-1", OURS), True, LabelOwner.OURS),
        (instance_label("dev", "run-1", THEIRS), True, LabelOwner.OTHER_INSTALLATION),
        (instance_label("dev", "run-1", THEIRS), False, LabelOwner.OTHER_INSTALLATION),
        (instance_label("dev", "run-1"), True, LabelOwner.OURS),  # written by us before we had an id
        (instance_label("dev", "run-1"), False, LabelOwner.OTHER_INSTALLATION),
        (instance_label("prod", "run-1", OURS), True, LabelOwner.FOREIGN),  # our id, another env: not ours either
        (instance_label("prod", "run-1"), True, LabelOwner.FOREIGN),
        # An installation id that merely starts like ours is another installation.
        (instance_label("dev", "run-1", OURS + "x"), True, LabelOwner.OTHER_INSTALLATION),
        # A run id that looks like our installation id in an old label is still an old label.
        (f"learning-pilot/dev/{OURS}", True, LabelOwner.OURS),
    ],
)
def test_label_owner(label: str, old_format_ok: bool, owner: LabelOwner) -> None:
    assert label_owner(label, "dev", OURS, old_format_ok=old_format_ok) is owner
    assert is_ours(label, "dev", OURS, old_format_ok=old_format_ok) is (owner is LabelOwner.OURS)


def test_foreign_installations_are_never_ours_whatever_the_run_id() -> None:
    for run_id in ("run-1", OURS, "x"):
        label = instance_label("dev", run_id, THEIRS)
        assert not is_ours(label, "dev", OURS)
        assert not is_ours(label, "dev", OURS, old_format_ok=False)


def test_without_an_installation_id_only_old_labels_are_ours() -> None:
    assert is_ours(instance_label("dev", "run-1"), "dev", None)
    assert not is_ours(instance_label("dev", "run-1", THEIRS), "dev", None)
