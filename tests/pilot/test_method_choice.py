"""The supervisor chooses the training method from what the data holds, says why with the figures, and the run
carries the method to the job; guardrails, reservation (priced per method) and approval apply unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from rich.console import Console
from sqlmodel import select

from pilot.cli.render import render_explain, render_status
from pilot.context import HostModules, build_context
from pilot.dashboard.queries import run_page
from pilot.data.ingest import ingest_lines
from pilot.errors import ConfigError
from pilot.service.explain import explain
from pilot.service.status import build_status
from pilot.settings import Settings
from pilot.settings_sections import ReinforcementSettings
from pilot.store import Store
from pilot.store.models import Approval, Decision, ModelVersion, TrainingRun
from pilot.store.status import ModelStatus
from pilot.supervisor.approvals import answer
from pilot.supervisor.cycle import run_cycle
from pilot.supervisor.notify import approval_request
from pilot.supervisor.training_nodes import max_spend, price_run
from subagents.data.samples import generate_demo_records
from subagents.methods import describe_method
from subagents.training import METHOD_MODULES, METHODS
from tests.subagents.data.data_factories import attempt_records, code_attempt_records
from tools.slack import approval_blocks


def settings_for(make_settings: Callable[..., Settings], store_url: str, **reinforcement: Any) -> Settings:
    return make_settings(
        store={"url": store_url},
        gpu={"provider": "fake"},
        policy={"min_new_examples": 50, "cooldown_minutes": 0},
        training={"base_model_params_b": 1.0, "max_steps": 10, "poll_interval_s": 0.01, "max_duration_minutes": 1},
        reinforcement={"choose_method": True, "min_pairs": 40, **reinforcement},
    )


def first_decision(settings: Settings, store: Store) -> tuple[Decision, Approval]:
    ctx = build_context(settings, store=Store(store.url))
    try:
        [cycle] = run_cycle(ctx)
    finally:
        ctx.close()
    assert cycle.waiting_on, cycle.outcome
    with store.session() as s:
        decision = s.exec(select(Decision)).one()
        approval = s.exec(select(Approval)).one()
    return decision, approval


@pytest.mark.parametrize(("extra", "method"), [({}, "dpo"), ({"min_pairs": 10_000}, "kto")])
def test_failures_and_pairs_choose_a_preference_method(
    extra: dict[str, Any], method: str, store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = settings_for(make_settings, store.url, min_undesirable=40, **extra)
    ingest_lines(store, [r.model_dump_json() for r in attempt_records(120)], source="test")
    decision, approval = first_decision(settings, store)
    plan = decision.figures["plan"]
    assert plan["method"] == method and plan["cost_factor"] > 1.0
    assert plan["method_figures"]["pairs"] >= 40 and plan["method_figures"]["undesirable"] >= 40
    assert plan["preference"]["method"] == method
    assert (
        method.upper() in plan["method_reason"] and str(plan["method_figures"]["undesirable"]) in plan["method_reason"]
    )
    assert approval.summary["what"] == f"LoRA fine-tune, method {method}"
    assert plan["method_reason"] in approval.summary["why"]
    assert approval.cost_ceiling_usd == plan["max_spend_usd"]  # the reservation, priced for the method

    with store.session(write=True) as s:
        answer(s, approval.id, approve=True, actor="human:ann", note="ok")
    ctx = build_context(settings, store=Store(store.url))
    try:
        run_cycle(ctx)
    finally:
        ctx.close()
    with store.session() as s:
        run = s.exec(select(TrainingRun)).one()
    assert run.config["plan"]["method"] == method
    shows_the_method(settings, store, run, approval, method, plan)


def shows_the_method(
    settings: Settings, store: Store, run: TrainingRun, approval: Approval, method: str, plan: dict[str, Any]
) -> None:
    """Status (the run lines), explain (a version of the run), the Slack approval and the dashboard's run page
    name the method and what it trained on."""
    data = describe_method(plan)["data"]
    words = {"dpo": "pairs", "kto": "failed attempts", "grpo": "prompts with tests"}[method]
    assert words in data
    report = build_status(settings, store)
    [line] = [r for r in report["runs"] if r["id"] == run.id]
    assert (line["method"], line["method_data"]) == (method, data)
    console = Console(record=True, width=300)
    render_status(console, report)
    assert f"{method}: {data}" in console.export_text()

    with store.session(write=True) as s:
        s.add(ModelVersion(id=f"v-{method}", status=ModelStatus.CANDIDATE, base_model="b", run_id=run.id,
                           snapshot_id=run.snapshot_id, adapter_uri="x", adapter_sha256="0" * 64))  # fmt: skip
    explained = explain(store, f"v-{method}")
    assert explained["method"]["method"] == method and explained["method"]["data"] == data
    assert explained["method"]["reason"] == plan["method_reason"] and explained["method"]["figures"]
    console = Console(record=True, width=300)
    render_explain(console, explained)
    text = console.export_text()
    assert f"method: {method} ({data})" in text and plan["method_reason"] in text

    with store.session() as s:
        slack = approval_request(s, s.get(Approval, approval.id))
        page = run_page(s, run.id)
    assert slack.extra["Method"].startswith(f"{method}: {data}")
    assert any(data in str(b) for b in approval_blocks(slack))
    assert page["method"]["method"] == method and page["method"]["data"] == data


def test_without_enough_preference_data_it_stays_supervised(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = settings_for(make_settings, store.url, min_undesirable=10_000, min_pairs=10_000)
    ingest_lines(store, generate_demo_records(300, seed=3, malformed=0.0), source="test")
    decision, approval = first_decision(settings, store)
    plan = decision.figures["plan"]
    assert plan["method"] == "sft" and plan["cost_factor"] == 1.0 and "too few" in plan["method_reason"]
    assert "preference" not in plan and approval.summary["what"] == "LoRA fine-tune, method sft"


def test_grpo_settings_price_and_modules() -> None:
    r = ReinforcementSettings()
    assert r.cost_factor("grpo") == 6.0 > r.cost_factor("kto") > r.cost_factor("dpo") > r.cost_factor("sft")
    assert ReinforcementSettings(grpo_num_generations=8).cost_factor("grpo") == 10.0
    assert ReinforcementSettings(grpo_num_iterations=2).cost_factor("grpo") == 10.0  # k = 4 samples trained twice
    assert ReinforcementSettings(cost_factor_grpo=3.5).cost_factor("grpo") == 3.5
    with pytest.raises(ValueError, match="unknown training method 'ppo'"):
        r.cost_factor("ppo")
    with pytest.raises(ValidationError, match="grpo_sandbox"):
        ReinforcementSettings(grpo_sandbox="docker")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="grpo_num_generations"):
        ReinforcementSettings(grpo_num_generations=1)  # advantages compare samples of one prompt
    with pytest.raises(ValidationError, match="grpo_num_iterations"):
        ReinforcementSettings(grpo_num_iterations=0)
    modules = HostModules()
    assert [modules.for_method(m) for m in METHODS] == [METHOD_MODULES[m] for m in METHODS]
    with pytest.raises(ValueError, match="unknown training method"):
        modules.for_method("ppo")


def test_grpo_is_chosen_priced_above_sft_and_approved_at_its_figure(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = settings_for(make_settings, store.url, min_rl_prompts=40, min_undesirable=10_000, min_pairs=10_000,
                            grpo_num_iterations=2)  # fmt: skip
    ingest_lines(store, [r.model_dump_json() for r in code_attempt_records(120)], source="test")
    decision, approval = first_decision(settings, store)
    plan = decision.figures["plan"]
    assert plan["method"] == "grpo" and plan["cost_factor"] == 10.0, plan["method_reason"]  # 2 + 4 samples x 2
    assert plan["method_figures"]["prompts_with_tests"] >= 40 and plan["method_figures"]["rl_failure_share"] >= 0.2
    assert plan["method_reason"].startswith(f"GRPO: {plan['method_figures']['prompts_with_tests']} prompts with tests")
    assert plan["grpo"]["num_generations"] == 4 and plan["grpo"]["sandbox"] == "auto" and "preference" not in plan
    assert plan["grpo"]["num_iterations"] == 2  # the job gets the setting
    assert approval.summary["what"] == "LoRA fine-tune, method grpo"
    assert approval.cost_ceiling_usd == plan["max_spend_usd"]  # the ceiling is the GRPO figure
    with store.session() as s:
        slack = approval_request(s, s.get(Approval, approval.id))
    assert slack.extra["Method"].startswith(f"grpo: {plan['method_figures']['prompts_with_tests']} prompts with tests")

    # The same snapshot priced supervised (the layer's choice off): GRPO reserves more.
    sft_settings = settings_for(make_settings, store.url, choose_method=False)
    ctx = build_context(sft_settings, store=Store(store.url))
    try:
        _, sft = price_run(ctx, approval.summary["snapshot"])
        assert sft is not None and sft.figures["method"] == "sft"
        assert plan["max_spend_usd"] > max_spend(ctx, sft) and plan["estimated_cost_usd"] > sft.estimated_cost_usd
    finally:
        ctx.close()


def test_grpo_completions_must_fit_the_sequence(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match=r"grpo_max_new_tokens \(128\) must be below training.seq_len \(64\)"):
        make_settings(training={"seq_len": 64}, reinforcement={"choose_method": True})
    assert make_settings(training={"seq_len": 64}, reinforcement={"choose_method": True, "allow_rl": False})
    assert make_settings(training={"seq_len": 64})  # the chooser off: GRPO never runs, nothing to refuse


def _crown_champion(ctx: Any, store: Store, tmp_path: Path, **lora: Any) -> dict[str, Any]:
    """A promoted v1 whose run recorded the current training params (with ``lora`` changed) and whose two adapter
    files are in the artifact store; returns its adapter_files."""
    from dataclasses import asdict

    from pilot.runs.lifecycle import training_params
    from pilot.serving import registry
    from tests import factories

    files = {}
    for name, body in (("adapter_model.safetensors", b"weights"), ("adapter_config.json", b"{}")):
        (tmp_path / name).write_bytes(body)
        ref = ctx.artifacts.put(f"runs/run-old/adapter/{name}", tmp_path / name)
        files[name] = {"key": ref.key, "uri": ref.uri, "sha256": ref.sha256, "size": ref.size}
    with store.session(write=True) as s:
        old = factories.run(s, status="succeeded", config={"params": {**asdict(training_params(ctx)), **lora}})
        s.add(ModelVersion(id="v1", status=ModelStatus.CANDIDATE, base_model=ctx.settings.training.base_model,
                           run_id=old.id, adapter_uri="x", adapter_sha256=files["adapter_model.safetensors"]["sha256"],
                           adapter_files=files))  # fmt: skip
        s.flush()
        registry.promote(s, "v1", actor="test", reason="test")
    return files


@pytest.mark.parametrize(
    ("champion", "summary"),
    [
        ({}, "champion v1"),
        (None, "base (no champion)"),
        ({"lora_r": 64}, "base (champion v1's LoRA differs: lora_r 64 != 16)"),
    ],
)
def test_grpo_starts_from_the_champion_when_its_lora_fits(
    champion: dict[str, Any] | None, summary: str, store: Store, make_settings: Callable[..., Settings],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """GRPO's plan says what the policy starts from; a run from the champion carries its adapter files: in the
    remote manifest (inputs by their recorded sha256, config init_adapter) and in the local job's config (the
    files fetched and verified into the run's directory)."""
    from pilot.runs import driver, host
    from pilot.store.models import DatasetSnapshot

    settings = settings_for(make_settings, store.url, min_rl_prompts=40, min_undesirable=10_000, min_pairs=10_000)
    ingest_lines(store, [r.model_dump_json() for r in code_attempt_records(120)], source="test")
    ctx = build_context(settings, store=Store(store.url))
    try:
        files = _crown_champion(ctx, store, tmp_path, **champion) if champion is not None else {}
        [cycle] = run_cycle(ctx)
        assert cycle.waiting_on, cycle.outcome
        with store.session() as s:
            approval = s.exec(select(Approval)).one()
            decision = s.get(Decision, approval.decision_id)
        assert decision is not None
        plan = decision.figures["plan"]
        assert plan["method"] == "grpo" and plan["init"]["summary"] == summary
        assert plan["method_reason"].endswith(f"; init: {summary}") and plan["method_reason"] in approval.summary["why"]
        assert describe_method(plan)["data"].endswith(f"; init: {summary}")
        with store.session(write=True) as s:
            run = factories_run(s, plan)
            snap = s.get(DatasetSnapshot, approval.summary["snapshot"])
        assert snap is not None
        inputs = host.stage_inputs(ctx, run, snap)
        manifest = host.build_manifest(ctx, run, n=1, inputs=inputs, checkpoint=None)
        launched: list[Any] = []

        def launch(spec: Any) -> Any:
            launched.append(spec)
            raise driver.ProviderError("test: not launched")

        monkeypatch.setattr(ctx.gpu, "launch", launch)
        monkeypatch.setattr(driver, "authorize", lambda *a, **k: None)
        driver._launch_local(ctx, run, lease="test")
        job = json.loads((driver.run_dir(ctx, run.id) / "job.json").read_text())
        assert launched and job["method"] == "grpo"
        if summary != "champion v1":
            assert "init_adapter" not in manifest["config"] and "init_adapter" not in job
            assert not any(name.startswith("init_adapter/") for name in manifest["inputs"])
            return
        for name, ref in files.items():
            assert manifest["inputs"][f"init_adapter/{name}"]["sha256"] == ref["sha256"]
            assert manifest["inputs"][f"init_adapter/{name}"]["path"] == f"init_adapter/{name}"
            assert (Path(job["init_adapter"]) / name).read_bytes() == (tmp_path / name).read_bytes()
        assert manifest["config"]["init_adapter"] == "init_adapter"
        # The stored champion file no longer matches its recorded sha256: the local run is not launched, and says so.
        (tmp_path / "tampered").write_bytes(b"{ }")
        ctx.artifacts.put(files["adapter_config.json"]["key"], tmp_path / "tampered")
        with store.session(write=True) as s:
            again = factories_run(s, plan)
        ended = driver._launch_local(ctx, again, lease="test")
        assert ended.status == "failed" and len(launched) == 1
        assert "the champion's adapter (GRPO's initial policy) could not be fetched" in (ended.status_message or "")
    finally:
        ctx.close()


def factories_run(session: Any, plan: dict[str, Any]) -> TrainingRun:
    from tests import factories

    return factories.run(session, config={"plan": plan})
