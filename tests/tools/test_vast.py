"""VastGpuProvider and the local Vast server beyond the contract: state mapping, the query language, one-call
polling, secrets never sent to the host, billing and account reads."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from vastai import VastAI

from tools.errors import LaunchFailed
from tools.gpu.base import InstanceState, LaunchSpec, OfferRequirements, instance_label
from tools.gpu.vast import VastGpuProvider, instance_from_row
from tools.gpu.vast_server import VastServer, load_offer_book

FIXTURE = Path(__file__).parent.parent / "fixtures" / "vast_offers.json"
KEY = "unit-key"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[VastServer]:
    # Limits off: these tests check wire formats and billing, not pacing (tests/tools/test_vast_limits.py does).
    with VastServer(
        load_offer_book(FIXTURE), api_key=KEY, loading_s=0.1, workdir=tmp_path / "vast", page_cap=2, rate_limits=False
    ) as s:
        yield s
        assert s.live_instances() == []


@pytest.fixture
def provider(server: VastServer) -> VastGpuProvider:
    return VastGpuProvider(KEY, api_url=server.url, backoff_base_s=0.01, sleep=lambda s: None, min_intervals={})


def _spec(offer_id: str, command: list[str], env: dict[str, str] | None = None) -> LaunchSpec:
    return LaunchSpec(
        label=instance_label("unit", uuid.uuid4().hex[:8]),
        offer_id=offer_id,
        image="learning-pilot/job:test",
        command=command,
        env=env or {},
    )


def _search(server: VastServer, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(f"{server.url}/api/v0/bundles/", json=body, headers=headers, timeout=5)


STOPPED_ALL = {"intended_status": "stopped", "cur_state": "stopped"}


@pytest.mark.parametrize(
    ("row", "state", "exit_code"),
    [
        ({"actual_status": None, "intended_status": "running", "cur_state": "running"}, InstanceState.LOADING, None),
        ({"actual_status": "loading", "intended_status": "running"}, InstanceState.LOADING, None),
        ({"actual_status": "running", "intended_status": "running"}, InstanceState.RUNNING, None),
        ({"actual_status": "exited", "status_msg": "exited with code 3"}, InstanceState.EXITED, 3),
        ({"actual_status": "exited", "status_msg": "Exited (0) 2 minutes ago"}, InstanceState.EXITED, 0),
        ({"actual_status": "exited", "status_msg": ""}, InstanceState.EXITED, None),
        ({"actual_status": "created", "status_msg": "x: OCI runtime create failed: y"}, InstanceState.EXITED, None),
        (
            {"actual_status": "stopped", "intended_status": "stopped", "cur_state": "stopped"},
            InstanceState.STOPPED,
            None,
        ),
        (
            {"actual_status": "exited", "intended_status": "stopped", "cur_state": "stopped"},
            InstanceState.STOPPED,
            None,
        ),
        ({"actual_status": "offline"}, InstanceState.STOPPED, None),
        ({"actual_status": "unknown"}, InstanceState.STOPPED, None),
        ({"actual_status": "running", "cur_state": "unloaded"}, InstanceState.GONE, None),
        ({"actual_status": "frobnicating"}, InstanceState.LOADING, None),
    ],
)
def test_vast_states_map_to_instance_states(row: dict[str, Any], state: InstanceState, exit_code: int | None) -> None:
    instance = instance_from_row({"id": 7, "label": "l", "start_date": 1.0, **row})
    assert (instance.state, instance.exit_code) == (state, exit_code)


def test_search_language_operators_numeric_strings_order_and_limit(server: VastServer) -> None:
    body = {
        "gpu_name": {"in": ["RTX 4090", "RTX 3090"]},
        "num_gpus": {"eq": "1"},
        "reliability": {"gt": "0.9"},
        "dph_total": {"lt": "0.5"},
        "geolocation": {"notin": ["VN", "UA"]},
        "order": [["dph_total", "asc"]],
        "limit": 4,
        "type": "on-demand",
        "allocated_storage": 50,
    }
    answer = _search(server, body)  # anonymous search is allowed
    assert answer.headers["Content-Type"] == "application/json"
    offers = answer.json()["offers"]
    assert 0 < len(offers) <= 4
    assert [o["dph_total"] for o in offers] == sorted(o["dph_total"] for o in offers)
    for o in offers:
        assert o["gpu_name"] in ("RTX 4090", "RTX 3090") and o["num_gpus"] == 1 and o["reliability2"] > 0.9
        assert o["geolocation"][-2:] not in ("VN", "UA")
        assert o["dph_total"] == pytest.approx(o["dph_base"] + o["storage_cost"] * 50 / 720)
    bid = _search(server, {"type": "bid", "allocated_storage": 10, "limit": 500}).json()["offers"]
    assert len(bid) == min(64, len(load_offer_book(FIXTURE)))  # no filters: every offer, up to Vast's cap of 64
    assert all(o["dph_total"] == pytest.approx(o["min_bid"] + o["storage_cost"] * 10 / 720) for o in bid)
    assert _search(server, {"gpu_ram": {"gte": 80000}, "verified": {"eq": True}}).json()["offers"]
    assert _search(server, {}, Authorization="Bearer wrong").status_code == 404


def test_the_real_client_query_string_reaches_the_server(server: VastServer) -> None:
    client = VastAI(api_key=KEY, server_url=server.url, retry=1)
    offers = client.search_offers("gpu_name=RTX_4090 num_gpus=1 reliability>0.9 dph<1.0", order="dph_total", limit=5)
    assert offers and all(o["gpu_name"] == "RTX 4090" and o["dph_total"] < 1.0 for o in offers)
    assert requests.get(f"{server.url}/api/v0/instances/?api_key={KEY}", timeout=5).status_code == 410
    computed = requests.get(
        f"{server.url}/api/v1/instances/",
        params={"select_filters": '{"dph_total": {"lt": 1}}', "api_key": KEY},
        timeout=5,
    )
    assert computed.status_code == 400


def test_poll_many_is_one_paginated_list_not_n_gets(server: VastServer, provider: VastGpuProvider) -> None:
    offers = provider.search_offers(OfferRequirements(min_gpu_ram_gb=16), limit=3)
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    launched = [provider.launch(_spec(o.id, sleeper)) for o in offers]
    before_v1 = server.count_requests("GET", "/api/v1/instances/")
    before_v0 = server.count_requests("GET", "/api/v0/instances/")
    states = provider.poll_many([i.id for i in launched] + ["424242"])
    assert server.count_requests("GET", "/api/v1/instances/") - before_v1 == 2  # 3 rows, pages of 2
    assert server.count_requests("GET", "/api/v0/instances/") == before_v0
    assert states["424242"].state is InstanceState.GONE
    assert all(states[i.id].label == i.label and states[i.id].state is not InstanceState.GONE for i in launched)
    for instance in launched:
        provider.terminate(instance.id)


def test_env_reaches_the_job_and_the_api_key_never_does(
    server: VastServer, provider: VastGpuProvider, tmp_path: Path
) -> None:
    (offer,) = provider.search_offers(OfferRequirements(min_gpu_ram_gb=16), limit=1)
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    instance = provider.launch(_spec(offer.id, [sys.executable, "-c", dump], env={"LP_URL": "https://presigned"}))
    deadline = time.monotonic() + 10
    while provider.poll(instance.id).state is not InstanceState.EXITED and time.monotonic() < deadline:
        time.sleep(0.05)
    job_env = json.loads(provider.logs(instance.id, tail=5).strip().splitlines()[-1])
    assert job_env["LP_URL"] == "https://presigned" and job_env["CONTAINER_ID"] == instance.id
    assert KEY not in json.dumps(job_env)
    assert all(KEY not in json.dumps(body) for body in server.create_bodies)
    provider.terminate(instance.id)

    creates = len(server.create_bodies)
    with pytest.raises(LaunchFailed, match="API key"):
        provider.launch(_spec(offer.id, ["true"], env={"VAST_API_KEY": KEY}))
    assert len(server.create_bodies) == creates, "refused before anything was sent"
    assert "unit-key" not in repr(provider)


def test_billing_charges_and_credit(server: VastServer, provider: VastGpuProvider) -> None:
    (offer,) = provider.search_offers(OfferRequirements(min_gpu_ram_gb=16), limit=1)
    start = time.time()
    instance = provider.launch(_spec(offer.id, [sys.executable, "-c", "import time; time.sleep(0.3)"]))
    time.sleep(0.6)
    provider.terminate(instance.id)
    cost = provider.instance_cost(instance.id, since=start)
    charged = server.instance_charges(instance.id)
    assert cost is not None and cost == pytest.approx(charged["gpu"] + charged["disk"])
    assert charged["gpu"] > 0 and charged["disk"] > 0
    # GPU bills only while running (about 0.3 s of the 0.6 s), at dph_base; storage for the whole life.
    base = float(offer.raw["dph_base"])
    assert charged["gpu"] < base * 0.55 / 3600
    (row,) = [c for c in provider.charges(start - 10, time.time() + 10) if c.instance_id == instance.id]
    assert set(row.items) == {"gpu", "disk", "bwd", "bwu"} and row.label == instance.label
    account = provider.current_user()
    assert account.credit == pytest.approx(100.0 - cost, abs=1e-6)
    assert provider.instance_cost("999999", since=start) is None
