"""Teardown, written once: destroy instances and confirm with the provider that they are gone.

Used by end-of-run teardown, a breach before a retry, evaluation stages, the reconciler and the kill switch. Each
instance is retried with exponential backoff until it is confirmed gone or the deadline passes (a deadline, not a
count: a provider answering 429 for a while must not exhaust a fixed budget of tries). A failure is logged for the
person paying the bill; the caller keeps whatever it reserved until the reconciler confirms the instance gone.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pilot.settings import Settings
from tools.errors import PilotError
from tools.gpu.base import GpuProvider, InstanceState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeardownPolicy:
    """How hard to try: until ``deadline_s`` has passed, backing off from ``base_delay_s`` up to ``max_delay_s``."""

    deadline_s: float = 60.0
    base_delay_s: float = 1.0
    max_delay_s: float = 10.0


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
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Teardown:
    """Terminate ``instance_id`` and poll until the provider says GONE, within ``policy.deadline_s``."""
    deadline = clock() + policy.deadline_s
    error: str | None = None
    tries = 0
    while True:
        tries += 1
        try:
            gpu.terminate(instance_id)
            if gpu.poll(instance_id).state is InstanceState.GONE:
                return Teardown(instance_id, True, tries)
            error = "still listed after terminate"
        except PilotError as exc:
            error = f"{exc.__class__.__name__}: {exc}"
            logger.warning("Terminating instance %s (try %d) failed: %s", instance_id, tries, exc)
        delay = min(policy.base_delay_s * 2 ** (tries - 1), policy.max_delay_s) * random.uniform(0.8, 1.2)
        if clock() + delay > deadline:
            break
        sleep(delay)
    logger.error("Failed to terminate instance %s. Terminate it manually to avoid accumulating charges.", instance_id)
    return Teardown(instance_id, False, tries, error)


def destroy_all(
    gpu: GpuProvider, instance_ids: Iterable[str], policy: TeardownPolicy = TeardownPolicy()
) -> list[Teardown]:
    """``destroy_verified`` for every id, in parallel; the outcomes in the order given."""
    ids = list(dict.fromkeys(instance_ids))
    if not ids:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(ids)), thread_name_prefix="teardown") as pool:
        return list(pool.map(lambda i: destroy_verified(gpu, i, policy), ids))


def teardown_policy(settings: Settings) -> TeardownPolicy:
    return TeardownPolicy(deadline_s=settings.gpu.teardown_deadline_s, base_delay_s=settings.gpu.teardown_backoff_s)
