"""Vast at its real limits: the local server's rate limits and bulk destroy, and VastGpuProvider's ``terminate_many``
and paginated listing under them, with production's backoff (base 1 s, jitter).

Time is a ``ShiftableClock`` shared by the server (windows, billing, boot) and the provider (pacing, backoff,
deadlines): every window is enforced for real, and a sleep moves the clock on instead of waiting.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tools.errors import ProviderError, ProviderUnavailable
from tools.gpu.base import instance_label, label_prefix
from tools.gpu.vast import VastGpuProvider
from tools.gpu.vast_server import RATE_LIMITS, ShiftableClock, VastServer, load_offer_book

FIXTURE = Path(__file__).parent.parent / "fixtures" / "vast_offers.json"
KEY = "limits-key"
LIST = "/api/v1/instances/"


@dataclass
class Rig:
    server: VastServer
    provider: VastGpuProvider
    clock: ShiftableClock

    def seed(self, n: int, env: str = "limits", installation: str | None = "inst-a") -> list[str]:
        labels = [instance_label(env, f"run-{k:03d}", installation) for k in range(n)]
        return [str(i) for i in self.server.seed_instances(labels)]

    def call(self, method: str, path: str, *, key: str = KEY, json: Any = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return requests.request(method, f"{self.server.url}{path}", headers=headers, json=json, timeout=5)


def make_provider(server: VastServer, clock: ShiftableClock, **overrides: object) -> VastGpuProvider:
    options: dict[str, object] = {
        "api_url": server.url,
        "sleep": clock.sleep,
        "clock": clock,
        "rng": random.Random(11),
        "request_timeout_s": 5.0,
    }
    options.update(overrides)
    return VastGpuProvider(KEY, **options)  # type: ignore[arg-type]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    clock = ShiftableClock()
    with VastServer(load_offer_book(FIXTURE), api_key=KEY, workdir=tmp_path / "vast", clock=clock) as server:
        yield Rig(server, make_provider(server, clock), clock)


# -- the server ---------------------------------------------------------------------------------------------------
def test_single_destroy_is_one_call_per_3s_per_key_with_the_documented_429(rig: Rig) -> None:
    a, b, c = rig.seed(3)
    assert rig.call("DELETE", f"/api/v0/instances/{a}/", json={}).status_code == 200
    refused = rig.call("DELETE", f"/api/v0/instances/{b}/", json={})
    assert refused.status_code == 429
    assert "Retry-After" not in refused.headers
    assert refused.json() == {
        "success": False,
        "error": "rate_limit_exceeded",
        "msg": "API requests too frequent endpoint threshold=3.0",
    }
    assert int(b) in rig.server.live_instances(), "a 429 destroys nothing"
    assert rig.call("DELETE", f"/api/v0/instances/{b}/", key="other-key", json={}).status_code == 401, (
        "another identity has its own window (and here no account)"
    )
    rig.clock.advance(2.9)
    assert rig.call("DELETE", f"/api/v0/instances/{b}/", json={}).status_code == 429
    rig.clock.advance(0.2)
    assert rig.call("DELETE", f"/api/v0/instances/{b}/", json={}).status_code == 200
    rig.clock.advance(3.0)
    assert rig.call("DELETE", f"/api/v0/instances/{c}/", json={}).status_code == 200
    assert rig.server.rate_limited() == 2


def test_list_is_one_call_per_second_in_plain_text_and_endpoints_are_separate(rig: Rig) -> None:
    (inst,) = rig.seed(1)
    assert rig.call("GET", LIST).status_code == 200
    refused = rig.call("GET", LIST)
    assert refused.status_code == 429 and refused.headers["Content-Type"] == "text/plain"
    assert refused.text == "API requests too frequent endpoint threshold=1.0"
    assert rig.call("GET", f"/api/v0/instances/{inst}/").status_code == 200, "show has its own window"
    assert rig.call("GET", f"/api/v0/instances/{inst}/").status_code == 429
    rig.clock.advance(1.0)
    assert rig.call("GET", LIST).status_code == 200


def test_create_429_is_json_detail_and_search_is_ten_a_minute(rig: Rig) -> None:
    offers = [o["id"] for o in load_offer_book(FIXTURE)[:2]]
    body = {"image": "x", "disk": 10, "runtype": "args", "onstart": "/bin/true", "label": "l"}
    assert rig.call("PUT", f"/api/v0/asks/{offers[0]}/", json=body).status_code == 200
    refused = rig.call("PUT", f"/api/v0/asks/{offers[1]}/", json=body)
    assert refused.status_code == 429 and refused.json() == {
        "detail": "API requests too frequent endpoint threshold=4.5"
    }
    answers = [rig.call("POST", "/api/v0/bundles/", json={}).status_code for _ in range(11)]
    assert answers == [200] * 10 + [429]
    rig.clock.advance(60)
    assert rig.call("POST", "/api/v0/bundles/", json={}).status_code == 200


def test_limits_off_latency_and_the_table(tmp_path: Path) -> None:
    assert {limit.name: limit.interval_s for limit in RATE_LIMITS}["destroy"] == 3.0
    with VastServer(
        load_offer_book(FIXTURE), api_key=KEY, workdir=tmp_path / "v", rate_limits=False, latency_s=0.1
    ) as server:
        ids = server.seed_instances(["a", "b"])
        headers = {"Authorization": f"Bearer {KEY}"}
        started = time.perf_counter()
        for inst in ids:
            answer = requests.delete(f"{server.url}/api/v0/instances/{inst}/", headers=headers, json={}, timeout=5)
            assert answer.status_code == 200
        assert time.perf_counter() - started >= 0.2, "100 ms per call"
        assert server.live_instances() == []


def test_bulk_destroy_is_served_and_skips_unknown_ids(rig: Rig) -> None:
    ids = rig.seed(4)
    answer = rig.call("DELETE", "/api/v0/instances/", json={"instance_ids": [int(i) for i in ids[:3]] + [999999]})
    assert answer.status_code == 200 and answer.json()["success"] is True
    assert rig.server.live_instances() == [int(ids[3])]
    rig.clock.advance(3)
    assert rig.call("DELETE", "/api/v0/instances/", json={}).status_code == 400
    assert rig.call("GET", "/api/v0/instances/").status_code == 410, "the v0 list stays deprecated"


def test_the_clock_drives_billing_without_sleeping(rig: Rig) -> None:
    (inst,) = rig.seed(1)
    before = rig.server.credit()
    rig.clock.advance(3600)
    spent = before - rig.server.credit()
    assert spent == pytest.approx(0.3 + 0.1 * 10 / 720, rel=1e-3), "one hour of GPU plus storage"
    assert rig.server.instance_charges(inst)["gpu"] == pytest.approx(0.3, rel=1e-3)


# -- terminate_many -------------------------------------------------------------------------------------------
def test_terminate_many_is_one_bulk_call_and_one_list(rig: Rig) -> None:
    ids = rig.seed(30)
    foreign = rig.seed(5, env="someone-else", installation=None)
    report = rig.provider.terminate_many(ids, deadline_s=10)
    assert report.ok and sorted(report.gone) == sorted(ids)
    assert rig.server.live_instances() == sorted(int(i) for i in foreign), "foreign instances untouched"
    assert len(rig.server.requests_to("DELETE", "/api/v0/instances/")) == 1
    assert rig.server.count_requests("DELETE", "/api/v0/instances/1") == 0, "no single destroys"
    assert len(rig.server.requests_to("GET", LIST)) == 1, "verified with one list (of the 30 ids: none left)"
    assert rig.server.rate_limited() == 0, "paced: no 429 earned"


def test_bulk_destroy_partially_failing_is_finished_by_single_destroys(rig: Rig) -> None:
    ids = rig.seed(12)
    rig.server.bulk_destroy_leaves(3)  # the bulk call answers success but the last 3 stay alive
    report = rig.provider.terminate_many(ids, deadline_s=30)
    assert report.ok and sorted(report.gone) == sorted(ids)
    assert rig.server.live_instances() == []
    singles = [r.path for r in rig.server.request_log if r.method == "DELETE" and r.path != "/api/v0/instances/"]
    assert sorted(singles) == sorted(f"/api/v0/instances/{i}/" for i in ids[-3:]), "singles only for the leftovers"
    assert len(rig.server.requests_to("DELETE", "/api/v0/instances/")) == 1
    assert rig.server.rate_limited() == 0


def test_a_429_storm_during_terminate_many_still_converges_before_the_deadline(rig: Rig) -> None:
    ids = rig.seed(20)
    rig.server.fail_next(429, 4, method="DELETE")  # the bulk destroy answers 429 four times
    rig.server.fail_every(2, 429, count=3, path=LIST)  # and the verifying list every other request
    started = rig.clock()
    report = rig.provider.terminate_many(ids, deadline_s=30)
    assert report.ok and sorted(report.gone) == sorted(ids)
    assert rig.clock() - started < 30
    assert rig.server.live_instances() == []
    bulk = rig.server.requests_to("DELETE", "/api/v0/instances/")
    assert [r.status for r in bulk] == [429] * 4 + [200], "retried the bulk call, not 20 singles"
    gaps = [b.at - a.at for a, b in itertools.pairwise(bulk)]
    assert all(gap >= 3.0 for gap in gaps), f"each retry waited out the 3 s window: {gaps}"


def test_a_429_storm_past_the_deadline_reports_exactly_which_ids_are_not_gone(rig: Rig) -> None:
    ids = rig.seed(6)
    rig.server.bulk_destroy_leaves(2)  # the last two survive the bulk call...
    rig.server.fail_next(429, 10_000, method="DELETE", path="/api/v0/instances/1", skip=0)  # ...and every single
    started = rig.clock()
    report = rig.provider.terminate_many(ids, deadline_s=20)
    assert rig.clock() - started <= 20
    assert sorted(report.gone) == sorted(ids[:4])
    assert sorted(report.not_gone) == sorted(ids[-2:])
    assert all("429" in why for why in report.not_gone.values()), report.not_gone
    assert rig.server.live_instances() == sorted(int(i) for i in ids[-2:]), "reported not gone = really there"
    rig.server.clear_faults()
    rig.clock.advance(5)
    assert rig.provider.terminate_many(report.not_gone, deadline_s=20).ok


def test_terminate_many_when_the_list_cannot_verify_says_so(rig: Rig) -> None:
    ids = rig.seed(3)
    rig.server.fail_next(503, 10_000, path=LIST)
    report = rig.provider.terminate_many(ids, deadline_s=10)
    assert report.gone == () and sorted(report.not_gone) == sorted(ids)
    assert all("could not verify" in why for why in report.not_gone.values())
    assert rig.server.live_instances() == [], "destroyed, but never claimed as confirmed"


# -- listing ----------------------------------------------------------------------------------------------------
def test_a_three_page_list_under_429s_resumes_each_page_never_from_page_one(rig: Rig) -> None:
    rig.seed(25, env="limits", installation="inst-b")  # 65 rows: 3 pages of 25; page 1 holds none of ours
    ours = rig.seed(40)  # more labels than one ``label in`` query names: the list continues page by page
    rig.server.fail_every(3, 429, path=LIST)
    owned = rig.provider.list_owned(label_prefix("limits", "inst-a"))
    assert sorted(i.id for i in owned) == sorted(ours)
    log = rig.server.requests_to("GET", LIST)
    ok = [r for r in log if r.status == 200]
    assert len(ok) == 3, "each page fetched once"
    assert any(r.status == 429 for r in log)
    first_token_at = next(n for n, r in enumerate(log) if "after_token" in r.query)
    assert all("after_token" in r.query for r in log[first_token_at:]), "never back to page 1"
    tokens = [r.query["after_token"] for r in ok if "after_token" in r.query]
    assert len(set(tokens)) == 2


def test_a_list_failing_past_its_deadline_raises_never_a_partial_list(rig: Rig) -> None:
    rig.seed(60)
    provider = make_provider(rig.server, rig.clock, list_deadline_s=15)
    rig.server.fail_next(429, 10_000, path=LIST, skip=2)  # pages 1 and 2 answer; page 3 never does
    started = rig.clock()
    with pytest.raises(ProviderUnavailable, match="page 3"):
        provider.list_owned(label_prefix("limits"))
    assert rig.clock() - started <= 15
    rig.server.clear_faults()
    rig.server.fail_next(401, 1, path=LIST)
    with pytest.raises(ProviderError):
        provider.poll_many(["1001"])
