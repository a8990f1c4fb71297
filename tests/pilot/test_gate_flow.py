"""The gate's paths that need no training: an inconclusive verdict asks a human, who approves with the real CLI in
another process, and the next cycle resumes and promotes; the report shows in ``models`` and ``explain``; a
tampered or pickled adapter is refused at evaluation (the candidate is rejected) and at deployment.

The graph is entered at the step under test with ``update_state(..., as_node=...)`` on the real checkpointer,
then driven by ``invoke`` and ``pilot.supervisor.cycle.run_cycle`` as the daemon drives it.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlmodel import select

from pilot.cli.render import models_report, render_explain, render_models
from pilot.context import PilotContext, build_context
from pilot.evaluation.evaluate import evaluate_version
from pilot.service.explain import explain
from pilot.serving import registry
from pilot.serving.deploy import make_target, pointer_path, sync_champion
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import Approval, Decision, ModelVersion
from pilot.store.status import ApprovalKind, ApprovalStatus, ModelStatus
from pilot.supervisor.cycle import run_cycle
from pilot.supervisor.graph import build_graph, open_checkpointer
from subagents.evaluation import GateConfig, PairedItem, compare
from tests.pilot.test_efficacy_rollback import add_version, promote
from tools.artifacts.base import sha256_file
from tools.errors import IntegrityError

REPO = Path(__file__).resolve().parents[2]


def inconclusive_report() -> dict[str, Any]:
    """8 wins, 2 losses, 30 ties over two domains: better on average, but the lower bound misses the margin."""
    wins, losses = range(2, 10), range(2)
    items = [
        PairedItem(f"i{i}", ("python-naming", "sql")[i % 2], candidate=float(i in wins), champion=float(i in losses))
        for i in range(40)
    ]
    report = compare(items, candidate_eval_loss=None, champion_eval_loss=None, config=GateConfig(margin=0.05))
    assert report.verdict == "inconclusive", report.reason
    return {**report.to_dict(), "champion_label": "base", "confidence": 0.95}


def enter_graph(ctx: PilotContext, cycle_id: str, as_node: str, values: dict[str, Any]) -> dict[str, Any]:
    """Put a cycle thread just after ``as_node`` with ``values`` and run it to its end or its interrupt."""
    with ctx.store.session(write=True) as session:
        session.add(Decision(id=f"dec-{cycle_id}", thread_id=f"cycle-{cycle_id}", action="finetune", reason="test"))
    config: Any = {"configurable": {"thread_id": f"cycle-{cycle_id}"}}
    with open_checkpointer(ctx) as saver:
        app = build_graph(ctx).compile(checkpointer=saver)
        app.update_state(
            config, {"cycle_id": cycle_id, "decision_id": f"dec-{cycle_id}", "log": [], **values}, as_node=as_node
        )
        return dict(app.invoke(None, config))


def cli(settings: Settings, store: Store, *args: str) -> subprocess.CompletedProcess[str]:
    config = Path(settings.data_dir) / "pilot.toml"
    config.write_text(f'env = "{settings.env}"\ndata_dir = "{settings.data_dir}"\n[store]\nurl = "{store.url}"\n')
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HF_HUB_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "COLUMNS": "220",  # rich wraps tables to the terminal width
    }
    return subprocess.run(
        [sys.executable, "-m", "pilot.cli", "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env, check=False,
    )  # fmt: skip


def test_inconclusive_asks_a_human_who_approves_with_the_cli(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ctx = build_context(make_settings(policy={"min_new_examples": 100_000}, knowledge={"enabled": False}), store=store)
    add_version(ctx, "v1", tmp_path)
    report = inconclusive_report()
    with store.session(write=True) as session:
        version = session.get(ModelVersion, "v1")
        assert version is not None
        version.eval_report = report
    out = enter_graph(
        ctx, "rev1", "evaluate", {"version_id": "v1", "verdict": "inconclusive", "reason": report["reason"]}
    )

    [interrupt] = out["__interrupt__"]
    review_id = interrupt.value["approval_id"]
    with store.session() as session:
        review = session.get(Approval, review_id)
        assert review is not None and review.kind == ApprovalKind.PROMOTION and review.status == ApprovalStatus.PENDING
        assert session.get(ModelVersion, "v1").status == ModelStatus.AWAITING_REVIEW  # type: ignore[union-attr]
    run_cycle(ctx, ingest=False)  # unanswered: nothing is promoted meanwhile
    with store.session() as session:
        assert registry.alias_target(session, registry.CHAMPION) is None

    answered = cli(ctx.settings, store, "approve", review_id, "--by", "alice", "--note", "domain owners agree")
    assert answered.returncode == 0, answered.stderr
    results = run_cycle(ctx, ingest=False)
    resumed = next(r for r in results if r.thread_id == "cycle-rev1")
    assert resumed.outcome.startswith("PROMOTED v1 on human review by human:alice"), resumed.outcome
    with store.session() as session:
        assert registry.alias_target(session, registry.CHAMPION) == "v1"
        review = session.get(Approval, review_id)
        assert review is not None and review.status == ApprovalStatus.APPROVED
    assert json.loads(pointer_path(ctx.settings).read_text())["adapter"] == "v1"

    # The report is visible: `models` (CI per version, per-domain table, promotion history) and `explain`.
    shown = cli(ctx.settings, store, "models")
    assert shown.returncode == 0, shown.stderr
    assert "CI [" in shown.stdout and "python-naming" in shown.stdout, shown.stdout
    assert "approved on review" in shown.stdout  # the promotion history names the human review
    console = Console(record=True, width=200)
    render_explain(console, explain(store, "v1"))
    text = console.export_text()
    assert "INCONCLUSIVE" in text and "per domain (v1)" in text and "sql" in text and "human:alice" in text


def test_models_report_renders_without_evaluations(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ctx = build_context(make_settings(), store=store)
    add_version(ctx, "v1", tmp_path)
    console = Console(record=True, width=200)
    render_models(console, models_report(store))
    assert "v1" in console.export_text()


def _golden(path: Path) -> Path:
    lines = [
        json.dumps({"id": f"g{i}", "domain": "python-naming", "messages": [
            {"role": "user", "content": f"Rename the identifier `userId{i}` to snake_case."},
            {"role": "assistant", "content": f"user_id{i}"}]})
        for i in range(25)
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def tamper(ctx: PilotContext, version_id: str) -> None:
    """Flip bytes of the stored weights behind the registry's back."""
    with ctx.store.session() as session:
        version = session.get(ModelVersion, version_id)
        assert version is not None
        key = version.adapter_files["adapter_model.safetensors"]["key"]
    stored = ctx.settings.artifacts_dir / key
    stored.write_bytes(stored.read_bytes()[:-4] + b"\x00\x01\x02\x03")


def pickled(ctx: PilotContext, version_id: str) -> None:
    """Register a pickled weights file as the adapter (written straight into the store: ``put`` refuses it)."""
    key = f"runs/{version_id}/adapter/adapter_model.bin"
    path = ctx.settings.artifacts_dir / key
    path.write_bytes(pickle.dumps({"lora_A": [1.0, 2.0]}))
    with ctx.store.session(write=True) as session:
        version = session.get(ModelVersion, version_id)
        assert version is not None
        files = {k: v for k, v in version.adapter_files.items() if not k.endswith(".safetensors")}
        files["adapter_model.bin"] = {"key": key, "sha256": sha256_file(path), "size": path.stat().st_size}
        version.adapter_files = files


@pytest.mark.parametrize("corrupt", [tamper, pickled], ids=["sha256-mismatch", "pickled"])
def test_a_bad_adapter_is_refused_at_evaluation_and_the_candidate_rejected(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path, corrupt: Callable[[PilotContext, str], None]
) -> None:
    settings = make_settings(evaluation={"golden_path": _golden(tmp_path / "golden.jsonl")})
    ctx = build_context(settings, store=store)
    add_version(ctx, "v1", tmp_path)
    with store.session(write=True) as session:
        registry.mark_candidate(session, "v1", actor="system", reason="trained")
    corrupt(ctx, "v1")
    with pytest.raises(IntegrityError):
        evaluate_version(ctx, "v1")
    assert not (settings.work_dir / "eval" / "v1" / "candidate.jsonl").exists()  # nothing was generated

    out = enter_graph(ctx, "bad1", "await_run", {"version_id": "v1", "run_id": "run-x"})
    assert out["outcome"].startswith("evaluation failed") and out["verdict"] == "reject"
    with store.session() as session:
        assert session.get(ModelVersion, "v1").status == ModelStatus.REJECTED  # type: ignore[union-attr]
        assert registry.alias_target(session, registry.CANDIDATE) is None


@pytest.mark.parametrize("corrupt", [tamper, pickled], ids=["sha256-mismatch", "pickled"])
def test_a_bad_adapter_is_refused_at_deployment_and_the_target_unchanged(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path, corrupt: Callable[[PilotContext, str], None]
) -> None:
    ctx = build_context(make_settings(), store=store)
    add_version(ctx, "v1", tmp_path)
    add_version(ctx, "v2", tmp_path)
    promote(ctx, "v1")
    corrupt(ctx, "v2")
    with store.session(write=True) as session:
        registry.promote(session, "v2", actor="supervisor", reason="test")
    with pytest.raises(IntegrityError):
        sync_champion(ctx.settings, store, ctx.artifacts, make_target(ctx.settings))
    assert json.loads(pointer_path(ctx.settings).read_text())["adapter"] == "v1"


def test_explain_without_evaluation(store: Store, make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    ctx = build_context(make_settings(), store=store)
    add_version(ctx, "v1", tmp_path)
    console = Console(record=True, width=200)
    render_explain(console, explain(store, "v1"))
    assert "evaluation of v1: none stored" in console.export_text()
    with store.session() as session:
        assert session.exec(select(Decision)).first() is None
