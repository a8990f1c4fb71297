"""Every fault switch of the local Vast server, through the real vastai client and VastGpuProvider.

Each test ends with a clear error or state, and with NO instance left on the server (nothing still billing).
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tools.errors import LaunchFailed, OfferUnavailable, ProviderError, ProviderUnavailable
from tools.gpu.base import Instance, InstanceState, LaunchSpec, OfferRequirements, instance_label
from tools.gpu.vast import VastGpuProvider
from tools.gpu.vast_server import VastServer, load_offer_book

FIXTURE = Path(__file__).parent.parent / "fixtures" / "vast_offers.json"
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
KEY = "fault-key"


@dataclass
class Rig:
    server: VastServer
    provider: VastGpuProvider
    sleeps: list[float] = field(default_factory=list)

    def offer_id(self, *, interruptible: bool = False) -> str:
        offers = self.provider.search_offers(OfferRequirements(min_gpu_ram_gb=16, interruptible=interruptible))
        return offers[0].id

    def spec(self, offer_id: str, *, command: list[str] = SLEEPER, bid: float | None = None) -> LaunchSpec:
        return LaunchSpec(
            label=instance_label("faults", uuid.uuid4().hex[:8]),
            offer_id=offer_id,
            image="learning-pilot/job:test",
            command=command,
            bid_price=bid,
        )

    def wait(self, instance_id: str, state: InstanceState, timeout_s: float = 10) -> Instance:
        deadline = time.monotonic() + timeout_s
        while True:
            instance = self.provider.poll(instance_id)
            if instance.state is state or time.monotonic() > deadline:
                return instance
            time.sleep(0.05)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    # Limits off and no pacing: these tests count the provider's backoff sleeps for each injected fault exactly.
    with VastServer(
        load_offer_book(FIXTURE), api_key=KEY, loading_s=0.1, workdir=tmp_path / "vast", rate_limits=False
    ) as server:
        sleeps: list[float] = []
        provider = VastGpuProvider(
            KEY,
            api_url=server.url,
            retry_attempts=4,
            backoff_base_s=1.0,
            backoff_max_s=8.0,
            request_timeout_s=2.0,
            sleep=sleeps.append,
            rng=random.Random(7),
            min_intervals={},
        )
        rig = Rig(server, provider, sleeps)
        yield rig
        for instance_id in server.live_instances():  # leave nothing running even when a test failed midway
            provider.terminate(str(instance_id))


def _nothing_left(rig: Rig) -> None:
    assert rig.server.live_instances() == []


def test_429_burst_is_retried_with_exponential_backoff_and_jitter(rig: Rig) -> None:
    rig.server.fail_next(429, 3, path="/bundles/")
    assert rig.offer_id()
    assert len(rig.sleeps) == 3
    for attempt, delay in enumerate(rig.sleeps):
        ceiling = min(8.0, 1.0 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert rig.server.count_requests("POST", "/api/v0/bundles/") == 4
    _nothing_left(rig)


def test_429_that_does_not_clear_is_provider_unavailable(rig: Rig) -> None:
    rig.server.fail_next(429, 10, path="/bundles/")
    with pytest.raises(ProviderUnavailable, match="429"):
        rig.offer_id()
    assert len(rig.sleeps) == 3  # 4 attempts, 3 waits
    _nothing_left(rig)


def test_5xx_on_reads_is_retried(rig: Rig) -> None:
    offer_id = rig.offer_id()
    instance = rig.provider.launch(rig.spec(offer_id))
    rig.server.fail_next(503, 2, method="GET")
    assert rig.provider.poll(instance.id).state in (InstanceState.LOADING, InstanceState.RUNNING)
    assert len(rig.sleeps) == 2
    rig.provider.terminate(instance.id)
    _nothing_left(rig)


def test_create_answer_lost_after_the_instance_exists_cleans_up_before_raising(rig: Rig) -> None:
    offer_id = rig.offer_id()
    rig.server.fail_next(502, method="PUT", path="/api/v0/asks/", after_handling=True)
    with pytest.raises(ProviderUnavailable):
        rig.provider.launch(rig.spec(offer_id))
    assert rig.server.count_requests("PUT", "/api/v0/asks/") == 1, "a create that may have acted is not retried"
    _nothing_left(rig)


@pytest.mark.parametrize("include_contract", [True, False])
def test_create_success_false_while_the_instance_exists(rig: Rig, include_contract: bool) -> None:
    offer_id = rig.offer_id()
    rig.server.create_false_next(include_contract=include_contract)
    with pytest.raises(LaunchFailed, match="create_failed"):
        rig.provider.launch(rig.spec(offer_id))
    _nothing_left(rig)


def test_bid_below_minimum_creates_a_stopped_instance_that_is_destroyed(rig: Rig) -> None:
    offer_id = rig.offer_id(interruptible=True)
    with pytest.raises(LaunchFailed, match="invalid_price"):
        rig.provider.launch(rig.spec(offer_id, bid=0.001))
    _nothing_left(rig)


def test_offer_taken_between_search_and_rent(rig: Rig) -> None:
    offer_id = rig.offer_id()
    rig.server.take_offer(offer_id)
    with pytest.raises(OfferUnavailable, match="no_such_ask"):
        rig.provider.launch(rig.spec(offer_id))
    assert offer_id not in {o.id for o in rig.provider.search_offers(OfferRequirements(min_gpu_ram_gb=16))}
    _nothing_left(rig)


def test_slow_answers_time_out_as_provider_unavailable(rig: Rig) -> None:
    fast = VastGpuProvider(
        KEY, api_url=rig.server.url, retry_attempts=2, request_timeout_s=0.2, sleep=rig.sleeps.append, min_intervals={}
    )
    rig.server.slow_next(0.6, 2, path="/bundles/")
    with pytest.raises(ProviderUnavailable, match="Timeout"):
        fast.search_offers(OfferRequirements())
    rig.server.slow_next(0.6, 1, path="/bundles/")
    assert fast.search_offers(OfferRequirements()), "one slow answer is retried"
    _nothing_left(rig)


def test_stuck_in_loading_stays_loading_until_terminated(rig: Rig) -> None:
    rig.server.stuck_loading = True
    instance = rig.provider.launch(rig.spec(rig.offer_id()))
    time.sleep(0.4)  # four times the boot time
    stuck = rig.provider.poll(instance.id)
    assert stuck.state is InstanceState.LOADING and "Pulling image" in stuck.detail
    rig.provider.terminate(instance.id)
    assert rig.provider.poll(instance.id).state is InstanceState.GONE
    _nothing_left(rig)


def test_oci_runtime_failure_is_a_terminal_exit(rig: Rig) -> None:
    rig.server.oci_fail_next()
    instance = rig.provider.launch(rig.spec(rig.offer_id()))
    failed = rig.wait(instance.id, InstanceState.EXITED)
    assert failed.state is InstanceState.EXITED and failed.exit_code is None
    assert "OCI runtime create failed" in failed.detail
    rig.provider.terminate(instance.id)
    _nothing_left(rig)


def test_host_offline_mid_run_stops_and_stops_billing(rig: Rig) -> None:
    instance = rig.provider.launch(rig.spec(rig.offer_id()))
    assert rig.wait(instance.id, InstanceState.RUNNING).state is InstanceState.RUNNING
    rig.server.host_offline(instance.id)
    offline = rig.provider.poll(instance.id)
    assert offline.state is InstanceState.STOPPED and "offline" in offline.detail
    before = rig.server.instance_charges(instance.id)
    time.sleep(0.15)
    assert rig.server.instance_charges(instance.id) == before, "an offline host bills nothing"
    rig.provider.terminate(instance.id)
    _nothing_left(rig)


def test_outbid_stops_the_job_but_storage_keeps_billing(rig: Rig) -> None:
    offer_id = rig.offer_id(interruptible=True)
    min_bid = next(float(o["min_bid"]) for o in rig.server.offers.values() if str(o["id"]) == offer_id)
    instance = rig.provider.launch(rig.spec(offer_id, bid=min_bid * 1.1))
    assert rig.wait(instance.id, InstanceState.RUNNING).state is InstanceState.RUNNING
    rig.server.outbid(instance.id)
    stopped = rig.provider.poll(instance.id)
    assert stopped.state is InstanceState.STOPPED and "outbid" in stopped.detail
    before = rig.server.instance_charges(instance.id)
    time.sleep(0.15)
    after = rig.server.instance_charges(instance.id)
    assert after["gpu"] == before["gpu"] and after["disk"] > before["disk"]
    rig.provider.terminate(instance.id)
    _nothing_left(rig)


def test_destroy_answering_429_is_retried_never_taken_as_destroyed(rig: Rig) -> None:
    instance = rig.provider.launch(rig.spec(rig.offer_id()))
    rig.server.fail_next(429, 2, method="DELETE")
    rig.provider.terminate(instance.id)
    assert len(rig.sleeps) == 2
    _nothing_left(rig)

    second = rig.provider.launch(rig.spec(rig.offer_id()))
    rig.server.fail_next(429, 10, method="DELETE")
    with pytest.raises(ProviderUnavailable):
        rig.provider.terminate(second.id)
    assert rig.server.live_instances() == [int(second.id)], "still there, and still reported as there"
    assert rig.provider.poll(second.id).state is not InstanceState.GONE
    rig.server.clear_faults()  # the burst is over
    rig.provider.terminate(second.id)
    _nothing_left(rig)


def test_bad_api_key_is_a_provider_error_not_a_retry(rig: Rig) -> None:
    wrong = VastGpuProvider("wrong-key", api_url=rig.server.url, sleep=rig.sleeps.append, min_intervals={})
    with pytest.raises(ProviderError) as caught:
        wrong.list_owned("learning-pilot/")
    assert not isinstance(caught.value, ProviderUnavailable)
    assert rig.sleeps == []
    _nothing_left(rig)
