"""Learning efficacy (c): a champion that does worse live is rolled back by the next cycle, within one monitoring
window, with no human: alias moved, serving target reverted, a ROLLBACK decision and events written, Slack told.

The versions carry small real safetensors adapters in the artifact store (the monitor does not need trained
weights: it judges live records), and the cycle is the real ``pilot.supervisor.cycle.run_cycle``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from sqlmodel import col, select

from pilot.context import PilotContext, build_context
from pilot.data.ingest import ingest_lines
from pilot.serving import registry
from pilot.serving.deploy import make_target, pointer_path, sync_champion
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import Decision, Event, ModelVersion, utcnow
from pilot.store.status import DecisionAction, ModelStatus
from pilot.supervisor.cycle import run_cycle
from subagents.data.samples import generate_demo_records
from tools.slack_fake import FakeSlack


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def add_version(ctx: PilotContext, version_id: str, tmp: Path) -> ModelVersion:
    """A registered version whose adapter (safetensors + config) is in the artifact store."""
    src = tmp / f"adapter-{version_id}"
    src.mkdir(parents=True)
    save_file(
        {"lora_A": np.full((4, 2), float(len(version_id)), dtype=np.float32)}, str(src / "adapter_model.safetensors")
    )
    (src / "adapter_config.json").write_text(json.dumps({"r": 2, "version": version_id}))
    files = {}
    for path in sorted(src.iterdir()):
        ref = ctx.artifacts.put(f"runs/{version_id}/adapter/{path.name}", path)
        files[path.name] = {"key": ref.key, "uri": ref.uri, "sha256": ref.sha256, "size": ref.size}
    version = ModelVersion(
        id=version_id,
        status=ModelStatus.CANDIDATE,
        base_model=ctx.settings.training.base_model,
        adapter_uri=f"runs/{version_id}/adapter",
        adapter_sha256=files["adapter_model.safetensors"]["sha256"],
        adapter_files=files,
    )
    with ctx.store.session(write=True) as session:
        session.add(version)
    return version


def promote(ctx: PilotContext, version_id: str) -> None:
    with ctx.store.session(write=True) as session:
        registry.promote(session, version_id, actor="supervisor", reason="gate passed (test)")
    sync_champion(ctx.settings, ctx.store, ctx.artifacts, make_target(ctx.settings))


def live_records(n: int, *, seed: int, failure_rate: float, version: str | None, minutes_ago: float) -> list[str]:
    start = utcnow() - timedelta(minutes=minutes_ago)
    return generate_demo_records(
        n, seed=seed, failure_rate=failure_rate, malformed=0.0, start=start, model_version=version
    )


def test_live_regression_is_rolled_back_within_one_window(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path, slack: FakeSlack
) -> None:
    settings = make_settings(
        policy={"min_new_examples": 100_000},  # the cycle must not train: this test is about monitoring
        monitoring={"min_records": 30, "alpha": 0.01, "min_drop": 0.05, "window_hours": 6},
        slack={"enabled": True, "bot_token": slack.token, "base_url": slack.base_url},
        knowledge={"enabled": False},
    )
    ctx = build_context(settings, store=store)
    add_version(ctx, "v1", tmp_path)
    add_version(ctx, "v2", tmp_path)
    # v1 served well for hours; records far outside the window (a bad day long ago) must not count.
    ingest_lines(store, live_records(200, seed=1, failure_rate=0.9, version="v1", minutes_ago=60 * 24 * 3), source="t")
    recent = ingest_lines(store, live_records(80, seed=2, failure_rate=0.15, version="v1", minutes_ago=300), source="t")
    promote(ctx, "v1")
    promote(ctx, "v2")
    assert json.loads(pointer_path(settings).read_text())["adapter"] == "v2"

    [quiet] = run_cycle(ctx, ingest=False)  # v2 has no live records yet: nothing to judge
    assert "not enough live records" in " ".join(quiet.log)
    with store.session() as session:
        assert registry.alias_target(session, registry.CHAMPION) == "v2"

    # The new champion fails live: 40 records after its promotion, ~80% failures.
    failing = ingest_lines(store, live_records(40, seed=3, failure_rate=0.8, version="v2", minutes_ago=-1), source="t")
    [cycle] = run_cycle(ctx, ingest=False)

    assert cycle.outcome.startswith("monitor: rolled back v2 -> v1")
    with store.session() as session:
        assert registry.alias_target(session, registry.CHAMPION) == "v1"
        assert session.get(ModelVersion, "v2").status == ModelStatus.ROLLED_BACK  # type: ignore[union-attr]
        decision = session.exec(select(Decision).where(Decision.action == DecisionAction.ROLLBACK)).one()
        # Exactly the records inside the window: the 200 from three days ago are not in the baseline.
        assert decision.figures["champion"]["total"] == failing.accepted
        assert decision.figures["baseline"]["total"] == recent.accepted
        assert decision.figures["p_value"] < 0.01 and "drift" in decision.figures
        events = session.exec(select(Event).where(col(Event.entity_id).in_(["v2", "pointer"]))).all()
    assert any(e.new == ModelStatus.ROLLED_BACK and e.actor == "supervisor" for e in events)
    assert any(e.entity_type == "deployment" and e.old == "v2" and e.new == "v1" for e in events)
    assert json.loads(pointer_path(settings).read_text())["adapter"] == "v1"  # the serving target reverted
    alerts = [c.body["text"] for c in slack.calls_to("chat.postMessage")]
    assert any("rolled back v2 -> v1" in text for text in alerts)

    [after] = run_cycle(ctx, ingest=False)  # idempotent: v1 is healthy against the base, no second rollback
    assert "rolled back" not in after.outcome


def test_first_champion_is_compared_with_the_base_model(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """No previous champion: the baseline is what the base model served (records naming no version)."""
    settings = make_settings(policy={"min_new_examples": 100_000}, knowledge={"enabled": False})
    ctx = build_context(settings, store=store)
    add_version(ctx, "v1", tmp_path)
    ingest_lines(store, live_records(60, seed=4, failure_rate=0.2, version=None, minutes_ago=200), source="t")
    promote(ctx, "v1")
    ingest_lines(store, live_records(40, seed=5, failure_rate=0.85, version="v1", minutes_ago=-1), source="t")
    [cycle] = run_cycle(ctx, ingest=False)
    assert cycle.outcome.startswith("monitor: rolled back v1 -> base")
    with store.session() as session:
        assert registry.alias_target(session, registry.CHAMPION) is None
    assert not pointer_path(settings).exists()  # the base model serves: no adapter pointer
