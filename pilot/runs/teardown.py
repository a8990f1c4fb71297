"""Teardown, written once: destroy instances and confirm with the provider that they are gone.

Used by end-of-run teardown, a breach before a retry, evaluation stages, the reconciler and the kill switch, all
through the provider's ``terminate_many`` (tools/gpu/base.py): retried with the provider's backoff until every
instance is confirmed gone or the deadline passes — a deadline, not a count, so a provider answering 429 for a while
cannot exhaust a fixed budget of tries. On Vast one bulk destroy and one list clear many instances within the
contract's rate limits. A failure is logged for the person paying the bill; the caller keeps whatever it reserved
until the reconciler confirms the instance gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pilot.settings import Settings
from tools.gpu.base import GpuProvider

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeardownPolicy:
    """How long to try: until ``deadline_s`` has passed (the provider backs off between tries)."""

    deadline_s: float = 60.0


@dataclass(frozen=True)
class Teardown:
    instance_id: str
    gone: bool
    tries: int
    error: str | None = None


def destroy_verified(
    gpu: GpuProvider,
    instance_id: str,
    policy: TeardownPolicy = TeardownPolicy(),
) -> Teardown:
    """Destroy ``instance_id`` and confirm with the provider that it is gone, within ``policy.deadline_s``."""
    return destroy_all(gpu, [instance_id], policy)[0]


def destroy_all(
    gpu: GpuProvider, instance_ids: Iterable[str], policy: TeardownPolicy = TeardownPolicy()
) -> list[Teardown]:
    """Destroy every id and confirm each gone, retrying until the deadline: the provider's ``terminate_many`` (on
    Vast: one bulk destroy verified by one list, single destroys only for what it left). The outcomes in the order
    given; a failure is logged for whoever pays the bill."""
    ids = list(dict.fromkeys(instance_ids))
    if not ids:
        return []
    report = gpu.terminate_many(ids, deadline_s=policy.deadline_s)
    for instance_id, why in report.not_gone.items():
        logger.error(
            "Failed to terminate instance %s (%s). Terminate it manually to avoid accumulating charges.",
            instance_id,
            why,
        )
    return [Teardown(i, i not in report.not_gone, 1, report.not_gone.get(i)) for i in ids]


@dataclass(frozen=True)
class OwnedTeardown:
    """``destroy_owned``'s outcome: the known ids first (in the order given), then the owned ones it found."""

    outcomes: list[Teardown]
    labels: dict[str, str | None]  # instance id -> label (known: as given; found: as listed)
    seen: Mapping[str, int] = field(default_factory=dict)  # label -> live instances, last look (for reporting)
    list_error: str | None = None
    duration_s: float = 0.0


def destroy_owned(
    gpu: GpuProvider,
    known: Mapping[str, str | None],
    is_owned: Callable[[str], bool],
    policy: TeardownPolicy = TeardownPolicy(),
) -> OwnedTeardown:
    """The kill switch's teardown: destroy the ids the store knows (id -> label) and every live instance on the
    account whose label ``is_owned``, confirm each gone, all through the provider's ``terminate_owned`` (on Vast:
    one bulk destroy of the known ids, then one look at the account that verifies them and finds the rest). A list
    that fails still destroys the known ids and says so in ``list_error``."""
    report = gpu.terminate_owned(dict(known), is_owned, deadline_s=policy.deadline_s)
    labels: dict[str, str | None] = {**known, **report.found}
    for instance_id, why in report.not_gone.items():
        logger.error(
            "Failed to terminate instance %s (%s). Terminate it manually to avoid accumulating charges.",
            instance_id,
            why,
        )
    outcomes = [Teardown(i, i not in report.not_gone, 1, report.not_gone.get(i)) for i in labels]
    return OwnedTeardown(outcomes, labels, dict(report.labels), report.list_error, report.duration_s)


def teardown_policy(settings: Settings) -> TeardownPolicy:
    return TeardownPolicy(deadline_s=settings.gpu.teardown_deadline_s)
