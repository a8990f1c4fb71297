"""The GPU provider interface: the contract every provider (local, fake, Vast.ai) passes.

Instances are identified by the provider's id (a string) and labelled ``learning-pilot/<env>/<run_id>`` so
that the reconciler can find instances the store does not know about (orphans) with ``list_owned``.

Contract (tests/contracts/test_gpu_provider.py runs it against every implementation):

- ``search_offers`` returns offers meeting the requirements; it never rents anything.
- ``launch`` returns as soon as the provider has accepted the request. If the provider reports failure but
  created an instance anyway, the implementation destroys it *before* raising ``LaunchFailed``.
- ``poll`` returns the instance's current state; an instance the provider no longer knows is ``GONE``.
- ``terminate`` is idempotent: terminating an unknown or already destroyed instance is not an error.
- ``list_owned(label_prefix)`` lists every live instance whose label starts with the prefix.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class InstanceState(enum.StrEnum):
    LOADING = "loading"  # accepted, image pulling or booting
    RUNNING = "running"  # the job's process is running
    EXITED = "exited"  # the job finished; exit_code says how
    STOPPED = "stopped"  # stopped by the provider (outbid, host offline); may still bill storage
    GONE = "gone"  # destroyed or unknown to the provider


@dataclass(frozen=True)
class OfferRequirements:
    min_gpu_ram_gb: float = 0.0
    num_gpus: int = 1
    min_cuda: float = 0.0
    min_disk_gb: float = 10.0
    min_reliability: float = 0.0
    min_inet_down_mbps: float = 0.0
    max_dph: float | None = None  # $/hour cap for the whole instance
    verified: bool = True
    interruptible: bool = False


@dataclass(frozen=True)
class Offer:
    id: str
    gpu_name: str
    num_gpus: int
    gpu_ram_gb: float
    dph_total: float  # $/hour, on-demand price of the whole instance
    storage_cost_per_gb_month: float = 0.0
    inet_down_cost_per_gb: float = 0.0
    inet_up_cost_per_gb: float = 0.0
    reliability: float = 1.0
    cuda_max_good: float = 0.0
    inet_down_mbps: float = 0.0
    disk_gb: float = 0.0
    tflops: float = 0.0  # advertised total FLOPS (for throughput estimates)
    dlperf: float = 0.0
    min_bid: float | None = None
    verified: bool = True
    raw: Mapping[str, object] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class LaunchSpec:
    """What to run. ``command`` runs in ``workdir`` with exactly ``env`` (plus PATH/HOME from the host)."""

    label: str
    offer_id: str | None
    image: str
    command: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    disk_gb: float = 10.0
    bid_price: float | None = None  # set for interruptible (bid) instances
    onstart: str | None = None  # shell script for providers that boot a fresh host


@dataclass(frozen=True)
class Instance:
    id: str
    label: str
    state: InstanceState
    exit_code: int | None = None
    dph_total: float = 0.0
    started_at: float | None = None  # unix seconds
    detail: str = ""  # provider's status message, for humans


class GpuProvider(abc.ABC):
    """Rents compute and runs one job per instance. See the module docstring for the contract."""

    name: str = "abstract"

    @abc.abstractmethod
    def search_offers(self, requirements: OfferRequirements, *, limit: int = 64) -> list[Offer]:
        """Offers that meet ``requirements``. Rents nothing."""

    @abc.abstractmethod
    def launch(self, spec: LaunchSpec) -> Instance:
        """Start an instance and return as soon as the provider accepted it."""

    @abc.abstractmethod
    def poll(self, instance_id: str) -> Instance:
        """Current state. An unknown id is returned with state GONE, never raised."""

    @abc.abstractmethod
    def terminate(self, instance_id: str) -> None:
        """Destroy the instance. Idempotent: an unknown id returns silently."""

    @abc.abstractmethod
    def list_owned(self, label_prefix: str) -> list[Instance]:
        """Live instances (not GONE) whose label starts with ``label_prefix``."""

    def logs(self, instance_id: str, *, tail: int = 200) -> str:
        """The last lines of the job's output, for humans. Optional."""
        return ""


def instance_label(env: str, run_id: str) -> str:
    return f"learning-pilot/{env}/{run_id}"


def label_prefix(env: str) -> str:
    return f"learning-pilot/{env}/"
