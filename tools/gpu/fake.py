"""An in-memory GPU provider for tests and rehearsals.

Instances move LOADING -> RUNNING -> EXITED as ``poll`` is called (one step per poll by default), and run an
optional ``job`` callable when they start, so a test can make a "job" write real output files. Fault switches
(``fail_next_launch``, ``orphan_on_failed_launch``, ``vanish``, ``stubborn`` for instances that survive
``terminate``, ``fail_terminate`` for a provider that refuses it) let contract and scenario tests drive the same paths a
real provider takes. ``terminate_many`` is the interface's default (terminate, then confirm with ``poll``).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import replace

from tools.errors import LaunchFailed, ProviderUnavailable
from tools.gpu.base import GpuProvider, Instance, InstanceState, LaunchSpec, Offer, OfferRequirements


def _offer(offer_id: str, gpu: str, ram: float, dph: float, reliability: float, tflops: float) -> Offer:
    return Offer(
        id=offer_id,
        gpu_name=gpu,
        num_gpus=1,
        gpu_ram_gb=ram,
        dph_total=dph,
        reliability=reliability,
        tflops=tflops,
        cuda_max_good=12.4,
        disk_gb=200.0,
        inet_down_mbps=1000.0,
        storage_cost_per_gb_month=0.15,
    )


DEFAULT_OFFERS = (
    _offer("fake-1", "RTX 4090", 24, 0.40, 0.99, 82.6),
    _offer("fake-2", "A100 SXM4", 80, 1.20, 0.995, 312.0),
)


class FakeGpuProvider(GpuProvider):
    name = "fake"

    def __init__(
        self,
        offers: tuple[Offer, ...] = DEFAULT_OFFERS,
        *,
        polls_to_run: int = 1,
        polls_to_exit: int = 1,
        exit_code: int = 0,
        job: Callable[[LaunchSpec], int] | None = None,
    ) -> None:
        self.offers = offers
        self.polls_to_run = polls_to_run
        self.polls_to_exit = polls_to_exit
        self.exit_code = exit_code
        self.job = job
        self.fail_next_launch = False
        self.stubborn: dict[str, int] = {}  # instance id -> terminate calls it still survives
        self.fail_terminate = 0  # the next n terminate calls raise ProviderUnavailable (a 429 burst)
        self.launched: list[LaunchSpec] = []
        self.terminated: list[str] = []
        self._ids = itertools.count(1)
        self._instances: dict[str, Instance] = {}
        self._polls: dict[str, int] = {}
        self._specs: dict[str, LaunchSpec] = {}
        self._lock = threading.Lock()

    def search_offers(self, requirements: OfferRequirements, *, limit: int = 64) -> list[Offer]:
        found = [
            o
            for o in self.offers
            if o.gpu_ram_gb >= requirements.min_gpu_ram_gb
            and o.num_gpus >= requirements.num_gpus
            and o.reliability >= requirements.min_reliability
            and (requirements.max_dph is None or o.dph_total <= requirements.max_dph)
        ]
        return sorted(found, key=lambda o: o.dph_total)[:limit]

    def launch(self, spec: LaunchSpec) -> Instance:
        with self._lock:
            if self.fail_next_launch:
                self.fail_next_launch = False
                raise LaunchFailed(f"fake provider refused to launch {spec.label}")
            instance_id = f"fake-{next(self._ids)}"
            price = next((o.dph_total for o in self.offers if o.id == spec.offer_id), 0.0)
            instance = Instance(instance_id, spec.label, InstanceState.LOADING, dph_total=price)
            self._instances[instance_id] = instance
            self._polls[instance_id] = 0
            self._specs[instance_id] = spec
            self.launched.append(spec)
            return instance

    def poll(self, instance_id: str) -> Instance:
        with self._lock:
            instance = self._instances.get(instance_id)
            if instance is None:
                return Instance(instance_id, "", InstanceState.GONE)
            if instance.state in (InstanceState.EXITED, InstanceState.STOPPED):
                return instance
            self._polls[instance_id] += 1
            polls = self._polls[instance_id]
            if instance.state is InstanceState.LOADING and polls >= self.polls_to_run:
                instance = replace(instance, state=InstanceState.RUNNING)
                self._polls[instance_id] = polls = 0
            elif instance.state is InstanceState.RUNNING and polls >= self.polls_to_exit:
                code = self.job(self._specs[instance_id]) if self.job else self.exit_code
                instance = replace(instance, state=InstanceState.EXITED, exit_code=code)
            self._instances[instance_id] = instance
            return instance

    def terminate(self, instance_id: str) -> None:
        with self._lock:
            if self.fail_terminate > 0:
                self.fail_terminate -= 1
                raise ProviderUnavailable(f"fake provider: too many requests (terminate {instance_id})")
            if self.stubborn.get(instance_id, 0) > 0:
                self.stubborn[instance_id] -= 1
                return
            if self._instances.pop(instance_id, None) is not None:
                self.terminated.append(instance_id)

    def list_owned(self, label_prefix: str) -> list[Instance]:
        with self._lock:
            return [i for i in self._instances.values() if i.label.startswith(label_prefix)]

    def vanish(self, instance_id: str) -> None:
        """Make an instance disappear without terminate (host gone), for reconciler tests."""
        with self._lock:
            self._instances.pop(instance_id, None)

    def stop(self, instance_id: str, detail: str = "outbid") -> None:
        """Move an instance to STOPPED (outbid / host offline), for fault tests."""
        with self._lock:
            if instance_id in self._instances:
                self._instances[instance_id] = replace(
                    self._instances[instance_id], state=InstanceState.STOPPED, detail=detail
                )
