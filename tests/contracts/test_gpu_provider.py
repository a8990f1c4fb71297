"""The GpuProvider contract (tools/gpu/base.py), run against every provider.

Local runs a real subprocess; Fake steps on each poll; Vast goes through the real ``vastai`` client over HTTP to the
local Vast server, whose instances run the command as a real process. The Vast server enforces the contract's rate
limits; the provider's pacing and backoff sleep on a ``ShiftableClock`` shared with the server, so the windows are
real for both sides and the suite still runs in seconds.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.gpu.base import (
    GpuProvider,
    Instance,
    InstanceState,
    LaunchSpec,
    OfferRequirements,
    instance_label,
    label_prefix,
)
from tools.gpu.fake import FakeGpuProvider
from tools.gpu.local import LocalGpuProvider
from tools.gpu.vast import VastGpuProvider
from tools.gpu.vast_server import ShiftableClock, VastServer, load_offer_book

FIXTURE = Path(__file__).parent.parent / "fixtures" / "vast_offers.json"
HELLO = [sys.executable, "-c", "print('hello from the job')"]


@dataclass
class Harness:
    provider: GpuProvider
    requirements: OfferRequirements
    server: VastServer | None = None

    def spec(self, env: str, *, offer_id: str | None, command: list[str] = HELLO) -> LaunchSpec:
        return LaunchSpec(
            label=instance_label(env, uuid.uuid4().hex[:8]),
            offer_id=offer_id,
            image="learning-pilot/job:test",
            command=command,
            env={"LP_TEST": "1"},
        )


@pytest.fixture(params=["local", "fake", "vast"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "local":
        yield Harness(LocalGpuProvider(tmp_path / "local", gpu_ram_gb=24), OfferRequirements(min_gpu_ram_gb=16))
    elif request.param == "fake":
        yield Harness(FakeGpuProvider(), OfferRequirements(min_gpu_ram_gb=16))
    else:
        clock = ShiftableClock()
        with VastServer(
            load_offer_book(FIXTURE), api_key="contract-key", loading_s=0.1, workdir=tmp_path / "vast", clock=clock
        ) as server:
            provider = VastGpuProvider("contract-key", api_url=server.url, sleep=clock.sleep, clock=clock)
            yield Harness(provider, OfferRequirements(min_gpu_ram_gb=16, min_reliability=0.9), server)
            assert server.live_instances() == [], "the Vast contract run left paid instances behind"


def _offer_ids(h: Harness, n: int) -> list[str | None]:
    offers = h.provider.search_offers(h.requirements)
    assert offers
    # Local/fake accept any offer id (or reuse one); Vast rents each offer once, so take distinct ones.
    return [offers[i % len(offers)].id for i in range(n)]


def _sleepers(h: Harness, n: int) -> list[Instance]:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    return [h.provider.launch(h.spec("contract", offer_id=o, command=sleeper)) for o in _offer_ids(h, n)]


def _poll_until(h: Harness, instance_id: str, states: set[InstanceState], timeout_s: float = 20) -> Instance:
    deadline = time.monotonic() + timeout_s
    while True:
        instance = h.provider.poll(instance_id)
        if instance.state in states or time.monotonic() > deadline:
            return instance
        time.sleep(0.05)


def test_search_returns_offers_meeting_requirements(harness: Harness) -> None:
    offers = harness.provider.search_offers(harness.requirements, limit=10)
    assert 0 < len(offers) <= 10
    for offer in offers:
        assert offer.gpu_ram_gb >= harness.requirements.min_gpu_ram_gb
        assert offer.num_gpus >= 1 and offer.dph_total >= 0
        assert offer.reliability >= harness.requirements.min_reliability
    capped = harness.provider.search_offers(OfferRequirements(min_gpu_ram_gb=16, max_dph=0.5))
    assert all(o.dph_total <= 0.5 for o in capped)
    assert harness.provider.search_offers(OfferRequirements(min_gpu_ram_gb=10_000)) == []


def test_launch_returns_fast_and_the_job_runs_to_exit(harness: Harness) -> None:
    (offer_id,) = _offer_ids(harness, 1)
    spec = harness.spec("contract", offer_id=offer_id)
    started = time.monotonic()
    instance = harness.provider.launch(spec)
    assert time.monotonic() - started < 2.0
    assert instance.label == spec.label
    assert instance.state in (InstanceState.LOADING, InstanceState.RUNNING)
    final = _poll_until(harness, instance.id, {InstanceState.EXITED})
    assert final.state is InstanceState.EXITED, final
    assert final.exit_code == 0
    assert final.label == spec.label
    harness.provider.terminate(instance.id)


def test_terminate_is_idempotent_and_unknown_ids_are_fine(harness: Harness) -> None:
    (offer_id,) = _offer_ids(harness, 1)
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    instance = harness.provider.launch(harness.spec("contract", offer_id=offer_id, command=sleeper))
    harness.provider.terminate(instance.id)
    harness.provider.terminate(instance.id)
    harness.provider.terminate("987654321")
    harness.provider.terminate("no-such-instance")
    assert harness.provider.poll(instance.id).state is InstanceState.GONE
    assert harness.provider.poll("987654321").state is InstanceState.GONE


def test_list_owned_by_label_prefix_and_nothing_left(harness: Harness) -> None:
    ids = _offer_ids(harness, 3)
    ours = [harness.provider.launch(harness.spec("contract-a", offer_id=ids[i])) for i in range(2)]
    theirs = harness.provider.launch(harness.spec("contract-b", offer_id=ids[2]))
    owned = harness.provider.list_owned(label_prefix("contract-a"))
    assert sorted(i.id for i in owned) == sorted(i.id for i in ours)
    assert all(i.label.startswith(label_prefix("contract-a")) for i in owned)
    for instance in [*ours, theirs]:
        harness.provider.terminate(instance.id)
    assert harness.provider.list_owned(label_prefix("contract-a")) == []
    assert harness.provider.list_owned(label_prefix("contract-b")) == []
    if harness.server is not None:
        assert harness.server.live_instances() == []


def test_terminate_many_confirms_every_id_gone_and_unknown_ids_are_gone(harness: Harness) -> None:
    instances = _sleepers(harness, 3)
    ids = [i.id for i in instances]
    report = harness.provider.terminate_many([*ids, ids[0], "987654321", "no-such-instance"], deadline_s=30)
    assert report.ok and report.not_gone == {}
    assert sorted(report.gone) == sorted([*ids, "987654321", "no-such-instance"]), "each id once, duplicates folded"
    assert all(harness.provider.poll(i).state is InstanceState.GONE for i in ids)
    assert harness.provider.list_owned(label_prefix("contract")) == []
    again = harness.provider.terminate_many(ids, deadline_s=10)
    assert again.ok and sorted(again.gone) == sorted(ids), "idempotent: already destroyed is gone"
    assert harness.provider.terminate_many([], deadline_s=1).gone == ()


def test_terminate_many_leaves_other_instances_alone(harness: Harness) -> None:
    mine, other = _sleepers(harness, 2)
    report = harness.provider.terminate_many([mine.id], deadline_s=30)
    assert report.gone == (mine.id,)
    assert harness.provider.poll(other.id).state is not InstanceState.GONE
    harness.provider.terminate(other.id)
