"""The issue's "done when", end to end on loopback: a product that only changed its OpenAI base URL sends traffic
through the gateway with the real ``openai`` client (sync, and async streamed), reports outcomes through
``POST /v1/feedback`` (``PilotClient.feedback``), and those joined execution records drive the supervisor: a cycle
counts them as new training examples and decides to fine-tune; a version is promoted with a canary of 40% of
sessions, and the gateway routes that share to its adapter within seconds (no restart), split by the canary's
stable hash (a session keeps its version; the share is the hash's); a degradation reported through feedback on
the canary's calls makes the real cycle's monitor roll it back, and the gateway sends every session to the base.

Training itself is replaced by the efficacy tests' fixture (a registered version with a small real safetensors
adapter in the artifact store): the real LoRA job through the local GPU provider (tests/pilot/test_e2e.py, marked
slow) costs far more than the ~20 s this test may add (a torch process, the tiny model's training and the golden
evaluation; see docs/gateway.md), and what this test checks starts at the registered version.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from pathlib import Path

import openai
from sqlmodel import select

from pilot.client import PilotClient
from pilot.context import build_context
from pilot.serving import canary, registry
from pilot.serving.deploy import pointer_path
from pilot.settings import load_settings
from pilot.store.models import Decision, ExecutionRecordRow, GatewayCall
from pilot.store.status import CallStatus, DecisionAction
from pilot.supervisor.cycle import run_cycle
from subagents.data.schema import parse_record
from tests.pilot.test_efficacy_rollback import add_version, promote
from tools.serving.canary import bucket

SHARE = 0.4  # the canary's first step
TASKS = ["rename x to count", "add a docstring to parse()", "make load() return a dict", "fix the off-by-one"]


def task(i: int) -> str:
    return f"{TASKS[i % 4]} in module m{i}.py"  # distinct: curation drops duplicate prompts


def sync_traffic(url: str, n: int, offset: int) -> list[str]:
    c = product_client(url)
    ids = []
    for i in range(offset, offset + n):
        raw = c.chat.completions.with_raw_response.create(
            model="agent",
            messages=[{"role": "system", "content": "You fix code."}, {"role": "user", "content": task(i)}],
            user=f"user-{i}",
        )
        assert raw.parse().choices[0].message.content
        ids.append(raw.headers["x-request-id"])
    return ids


async def streamed_traffic(url: str, n: int, offset: int) -> list[tuple[str, str]]:
    """(request id, served version) of ``n`` streamed calls from the async client."""
    c = openai.AsyncOpenAI(base_url=url, api_key="product-key", max_retries=0)
    out = []
    for i in range(offset, offset + n):
        raw = await c.chat.completions.with_raw_response.create(
            model="agent", stream=True, messages=[{"role": "user", "content": task(i)}], user=f"user-{i}"
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in raw.parse() if chunk.choices])
        assert text
        out.append((raw.headers["x-request-id"], raw.headers["x-pilot-model-version"]))
    await c.close()
    return out


@functools.cache
def product_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="product-key", max_retries=0)


def served_version(url: str, session: str = "") -> str:
    c = product_client(url)
    headers = {"X-Session-Id": session} if session else {}
    raw = c.chat.completions.with_raw_response.create(
        model="agent", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
    )
    return str(raw.headers["x-pilot-model-version"])


def wait_until_served(url: str, version: str, timeout: float = 10.0, session: str = "") -> float:
    start = time.monotonic()
    while served_version(url, session) != version:
        assert time.monotonic() - start < timeout, f"the gateway did not switch to {version} in {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - start


def test_base_url_change_records_joins_outcomes_trains_routes_and_rolls_back(make_rig, tmp_path: Path) -> None:
    rig = make_rig(route_refresh_s=0.5)
    settings = load_settings(
        None,
        data_dir=rig.settings.data_dir,
        env="test",
        training={"base_model": "base-model", "base_model_params_b": 0.001},  # fits the local provider
        policy={"min_new_examples": 50, "cooldown_minutes": 0},
        monitoring={"min_records": 30, "alpha": 0.01, "min_drop": 0.05, "window_hours": 6},
        knowledge={"enabled": False},
        deploy={"canary": True, "canary_steps": [SHARE, 1.0]},
    )
    ctx = build_context(settings, store=rig.store)

    # 1. Traffic on the base model; the product reports outcomes later (~85% success), by request id.
    ids = sync_traffic(rig.url, 70, 0)
    with PilotClient(rig.root, token=rig.feedback_token) as pilot:
        for i, rid in enumerate(ids):
            pilot.feedback(request_id=rid, success=i % 7 != 0, tests_passed=3 if i % 7 else 1, tests_total=3)
    rig.drain()
    with rig.store.session() as s:
        rows = s.exec(select(ExecutionRecordRow)).all()
        calls = s.exec(select(GatewayCall)).all()
    assert len(rows) == 70 and {c.status for c in calls} == {CallStatus.LABELLED}
    records = [parse_record(json.loads(r.payload)) for r in rows]  # one schema
    assert all(r.model_version is None and "gateway" in r.tags for r in records)

    # 2. A cycle takes the joined records as new examples and decides to fine-tune (it waits for the approval).
    [cycle] = run_cycle(ctx, ingest=False)
    with rig.store.session() as s:
        decision = s.exec(select(Decision).where(Decision.action == DecisionAction.FINETUNE)).first()
    assert decision is not None, cycle.outcome
    assert cycle.outcome.startswith("waiting for approval")
    # The 60 successful outcomes (of 70 calls) are the new examples; the plan trains on the curated split of them.
    assert decision.figures["new_examples"] == 60 and decision.figures["per_domain_new"] == {"gateway": 60}
    assert 0 < decision.figures["plan"]["train_examples"] <= 60

    # 3. The version that training produced is promoted as the gate does it, with a canary of 40% of sessions; the
    #    gateway routes the canary's sessions to its adapter within seconds.
    add_version(ctx, "v1", tmp_path)
    rig.upstream.load_adapter("v1")
    promote(ctx, "v1")
    with rig.store.session(write=True) as s:
        rollout = canary.start_rollout(s, settings, "v1", actor="supervisor")
    assert rollout is not None and rollout.share == SHARE
    assert json.loads(pointer_path(settings).read_text())["adapter"] == "v1"
    sessions = [f"user-{i}" for i in range(100, 200)]
    expected = {s: "v1" if bucket(s) < SHARE else "base" for s in sessions}
    on_canary = [s for s in sessions if expected[s] == "v1"]
    assert 30 <= len(on_canary) <= 50  # the hash's share of these 100 sessions, and enough for the monitor
    assert wait_until_served(rig.url, "v1", session=on_canary[0]) < 5.0
    assert served_version(rig.url, next(s for s in sessions if expected[s] == "base")) == "base"

    # 4. Each session gets the version of its hash bucket, streamed (async), and again non-streamed (sync, 20 of them).
    served = asyncio.run(streamed_traffic(rig.url, 100, 100))
    assert {f"user-{100 + i}": v for i, (_, v) in enumerate(served)} == expected
    upstream_models = [body["model"] for _, body, _ in rig.upstream.requests[-100:]]
    assert upstream_models.count("v1") == len(on_canary)  # the adapter's name on the upstream (vLLM LoRA)
    assert set(upstream_models) == {"v1", "base-model"}
    again = on_canary[:10] + [s for s in sessions if expected[s] == "base"][:10]
    assert {s: served_version(rig.url, s) for s in again} == {s: expected[s] for s in again}
    # v1 does worse live: ~80% failures reported through feedback on its calls (the base's 70 outcomes above are
    # its baseline; its calls here stay unlabelled).
    with PilotClient(rig.root, token=rig.feedback_token) as pilot:
        for i, (rid, _) in enumerate([call for call in served if call[1] == "v1"]):
            pilot.feedback(request_id=rid, success=i % 5 == 0, rating=1 if i % 5 else 4)
    rig.drain()

    # 5. The next cycle's monitor rolls v1 back on those joined outcomes; the gateway follows without a restart and
    #    sends every session, the canary's too, to the base model.
    [after] = run_cycle(ctx, ingest=False)
    assert after.outcome.startswith("monitor: rolled back v1 -> base"), after.outcome
    with rig.store.session() as s:
        assert registry.alias_target(s, registry.CHAMPION) is None and canary.get_rollout(s) is None
        rollback = s.exec(select(Decision).where(Decision.action == DecisionAction.ROLLBACK)).one()
    assert rollback.figures["champion"]["total"] == len(on_canary)
    assert rollback.figures["baseline"]["total"] == 70
    assert wait_until_served(rig.url, "base", session=on_canary[0]) < 5.0
    assert {served_version(rig.url, s) for s in on_canary} == {"base"}
    assert rig.upstream.requests[-1][1]["model"] == "base-model"
