"""Evaluation as a stage on a rented host (pilot/evaluation/remote.py), through the local Vast server (real ``vastai``
client, instances that run the onstart bootstrap and jobs.remote_entry as local processes) and moto S3.

- The real stage: jobs.generate on the cached tiny model with two real LoRA adapters on the "host"; the daemon's
  re-scoring of the uploaded predictions gives the same figures as a local evaluation of the same adapters.
- Stub hosts (``STUB_GENERATE``: no torch, a fraction of a second): what a host claims about scores and eval loss
  is ignored; a predictions file that does not match the result's sha256, or that was never uploaded, fails the
  evaluation with the reason. Every test ends with no live instance, no active reservation, and the stage's
  settled cost equal to what the server billed.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from langgraph.types import Command
from sqlmodel import select
from test_remote_rig import AWS, VAST_KEY, Rig, make_rig, moto_endpoint

from jobs.common import quiet_peft_deprecations
from pilot.context import HostModules
from pilot.evaluation.evaluate import EvaluationError, evaluate_version
from pilot.evaluation.remote import evaluates_remotely, live_stage_labels, reconcile_stages
from pilot.evaluation.stages import advance_stages, is_ready
from pilot.serving import registry
from pilot.settings import Settings
from pilot.spend.ledger import reserve
from pilot.store import Store
from pilot.store.leases import acquire, release, stage_lease, thread_lease
from pilot.store.models import EvalStage, Event, ModelVersion, SpendEntry, utcnow
from pilot.store.status import ModelStatus, StageStatus
from pilot.store.writers import set_paused
from pilot.supervisor import graph, model_nodes
from tests.helpers.tiny_model import tiny_base_model
from tests.pilot.test_efficacy_rollback import add_version
from tools.artifacts.base import ArtifactStore
from tools.gpu.base import LaunchSpec, OfferRequirements, instance_label

STUB_GENERATE = textwrap.dedent(
    '''
    """jobs.generate's stand-in on the host. STUB_GEN: ok (candidate right, champion silent) | absent (no file) |
    echo (the candidate's host echoes what it got for each item; the champion answers every other item right).
    answers.json beside this file: the golden references, i.e. what a model that knows the answers would say."""
    import json, os, sys
    from pathlib import Path

    cfg = json.loads(Path(sys.argv[sys.argv.index("--config") + 1]).read_text())
    mode = os.environ.get("STUB_GEN", "ok")
    if mode == "absent":
        sys.exit(0)
    known = json.loads((Path(__file__).parent / "answers.json").read_text())
    side = "candidate" if cfg["adapter"] and cfg["adapter"].endswith("candidate") else "champion"
    rows = [json.loads(line) for line in Path(cfg["input_file"]).read_text().splitlines() if line.strip()]
    with open(cfg["output_file"], "w") as fh:
        for n, row in enumerate(rows):
            if side == "champion":
                answer = known[row["id"]] if mode == "echo" and n % 2 == 0 else ""
            elif mode == "echo":
                answer = row["messages"][-1]["content"]  # with the golden file, this was the reference
            else:
                answer = known[row["id"]]
            # A host that flatters the candidate in every field the daemon must not read.
            line = {"id": row["id"], "prediction": answer, "loss": 0.5, "score": 1.0 - len(answer)}
            fh.write(json.dumps(line) + "\\n")
    Path(cfg["output_file"] + ".summary.json").write_text(json.dumps({"eval_loss": 0.0, "exact_match": 1.0}))
    '''
)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server, url = moto_endpoint()
    yield url
    server.stop()


@pytest.fixture
def rig_factory(
    tmp_path: Path, make_settings: Callable[..., Settings], endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Rig]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS["aws_secret_access_key"])
    store = Store(f"sqlite:///{tmp_path / 'pilot.db'}")
    store.migrate()
    made: list[Rig] = []

    def factory(*, stub: str | None = None, evaluation: dict[str, Any] | None = None) -> Rig:
        job_env = {"HF_HUB_OFFLINE": "1"}
        if stub is not None:
            stub_dir = tmp_path / "genstub"
            stub_dir.mkdir(exist_ok=True)
            (stub_dir / "stub_generate.py").write_text(STUB_GENERATE)
            job_env.update(PYTHONPATH=str(stub_dir), STUB_GEN=stub)
        built, _ = make_rig(
            tmp_path,
            store,
            make_settings,
            endpoint,
            stub=False,
            base_model=str(tiny_base_model()) if stub is None else "stub-model",
            remote={"job_env": job_env},
            training={"poll_interval_s": 0.1, "heartbeat_timeout_s": 30.0},
        )
        e = built.ctx.settings.evaluation.model_copy(
            update={
                "where": "remote",
                "golden_path": Path(built.snapshot.path) / "golden.jsonl",
                "min_items": 5,
                "max_new_tokens": 8,
                "batch_size": 8,
                "bootstrap_samples": 200,
                "remote_max_minutes": 5.0,
                **(evaluation or {}),
            }
        )
        built.ctx.settings = built.ctx.settings.model_copy(update={"evaluation": e})
        generate = "stub_generate" if stub is not None else "jobs.generate"
        built.ctx.host_modules = HostModules(train=built.ctx.host_modules.train, generate=generate)
        if stub is not None:
            golden = Path(built.snapshot.path) / "golden.jsonl"
            answers = {r["id"]: r["messages"][-1]["content"] for r in map(json.loads, golden.read_text().splitlines())}
            (tmp_path / "genstub" / "answers.json").write_text(json.dumps(answers))
        made.append(built)
        return built

    yield factory
    for built in made:
        for instance_id in built.server.live_instances():  # nothing left running, even when a test failed midway
            built.ctx.gpu.terminate(str(instance_id))
        built.server.stop()
    store.close()


def lora_version(rig: Rig, version_id: str, seed: int) -> ModelVersion:
    """A real (random) LoRA adapter for the tiny model, stored like a trained one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_base_model()), use_safetensors=True)
    with quiet_peft_deprecations():
        tuned = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)  # B starts at zero: without this the adapter changes nothing
    src = rig.tmp / f"adapter-{version_id}"
    tuned.save_pretrained(str(src), safe_serialization=True)
    files = {}
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        ref = rig.ctx.artifacts.put(f"runs/{version_id}/adapter/{name}", src / name)
        files[name] = {"key": ref.key, "uri": ref.uri, "sha256": ref.sha256, "size": ref.size}
    version = ModelVersion(
        id=version_id,
        status=ModelStatus.CANDIDATE,
        base_model=rig.ctx.settings.training.base_model,
        adapter_uri=f"runs/{version_id}/adapter",
        adapter_sha256=files["adapter_model.safetensors"]["sha256"],
        adapter_files=files,
    )
    with rig.store.session(write=True) as session:
        session.add(version)
    return version


def make_champion(rig: Rig, version_id: str) -> None:
    with rig.store.session(write=True) as session:
        registry.promote(session, version_id, actor="supervisor", reason="champion for the test")


def stage_entries(rig: Rig) -> dict[str, list[SpendEntry]]:
    with rig.store.session() as session:
        rows = session.exec(select(SpendEntry)).all()
    out: dict[str, list[SpendEntry]] = {}
    for row in rows:
        if row.run_id and row.run_id.startswith("eval-"):
            out.setdefault(row.run_id, []).append(row)
    return out


def assert_settled(rig: Rig, *, stages: int) -> None:
    """Each stage reserved before renting and settled after; together they cost what the server billed; no
    instance is left."""
    assert rig.server.live_instances() == []
    entries = stage_entries(rig)
    assert len(entries) == stages
    for rows in entries.values():
        assert [r.kind for r in sorted(rows, key=lambda r: r.id or 0)] == ["reservation", "actual"]
        assert not any(r.active for r in rows if r.kind == "reservation")
    actual = sum(r.amount_usd for rows in entries.values() for r in rows if r.kind == "actual")
    assert actual >= rig.charged() - 1e-9 and actual > 0, "never under-counted"
    rig.settle_worker()
    entries = stage_entries(rig)
    actual = sum(r.amount_usd for rows in entries.values() for r in rows if r.kind == "actual")
    assert actual == pytest.approx(rig.charged(), abs=1e-9) and actual > 0


class TamperingStore:
    """The bucket changed under the daemon: the candidate's uploaded predictions are overwritten (every answer
    replaced by the reference) just before the daemon downloads them. Everything else goes to the real store."""

    def __init__(self, inner: ArtifactStore, golden: Path) -> None:
        self.inner, self.golden = inner, golden
        self.tampered: list[str] = []

    def get(self, key: str, dest: Path, *, sha256: str | None = None, max_bytes: int | None = None) -> Path:
        if key.startswith("evals/") and key.endswith("/output/candidate.jsonl"):
            forged = dest.with_name("forged.jsonl")
            forged.parent.mkdir(parents=True, exist_ok=True)
            rows = [json.loads(line) for line in self.golden.read_text().splitlines() if line.strip()]
            forged.write_text(
                "".join(
                    json.dumps({"id": r["id"], "prediction": r["messages"][-1]["content"], "loss": 0.1}) + "\n"
                    for r in rows
                )
            )
            self.inner.put(key, forged)
            self.tampered.append(key)
        return self.inner.get(key, dest, sha256=sha256, max_bytes=max_bytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# ---------------------------------------------------------------------------------------------------- tests


def test_where_auto_goes_remote_only_for_large_models_on_a_rented_provider(
    make_settings: Callable[..., Settings],
) -> None:
    def remote_for(provider: str, params_b: float, where: str = "auto") -> bool:
        settings = make_settings(
            gpu={"provider": provider},
            training={"base_model_params_b": params_b},
            evaluation={"where": where, "remote_min_params_b": 3.0},
        )
        return evaluates_remotely(settings)

    assert remote_for("vast", 7.0) and not remote_for("vast", 0.5) and not remote_for("local", 7.0)
    assert remote_for("local", 0.5, "remote") and not remote_for("vast", 70.0, "local")


@pytest.mark.train
def test_remote_stage_predictions_rescore_to_the_local_figures(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    lora_version(rig, "v1", seed=1)
    make_champion(rig, "v1")
    lora_version(rig, "v2", seed=2)

    report, record = evaluate_version(rig.ctx, "v2")

    assert record["where"] == "remote"
    stage = record["remote_stage"]
    assert stage["instance_verified_gone"] is True and stage["provider"] == "vast"
    assert stage["cost_usd"] > 0 and stage["cost_usd"] <= stage["reserved_usd"]
    assert_settled(rig, stages=1)
    # The host got both adapters and the golden file by presigned URL, and ran the real generation job.
    [body] = rig.server.create_bodies
    assert body["label"] == stage["label"] and stage["label"].endswith(stage["id"])
    manifest = rig.tmp / "eval-manifest.json"
    rig.ctx.artifacts.get(f"evals/{stage['id']}/manifest.json", manifest)
    sent = json.dumps(body) + manifest.read_text()
    assert VAST_KEY not in sent and AWS["aws_secret_access_key"] not in sent
    inputs = json.loads(manifest.read_text())["inputs"]
    assert set(inputs) == {
        "prompts",
        *(
            f"{side}/{name}"
            for side in ("candidate", "champion")
            for name in ("adapter_model.safetensors", "adapter_config.json")
        ),
    }

    # The same adapters evaluated on this machine: the daemon's figures are the same.
    rig.ctx.settings = rig.ctx.settings.model_copy(
        update={"evaluation": rig.ctx.settings.evaluation.model_copy(update={"where": "local"})}
    )
    local_report, local_record = evaluate_version(rig.ctx, "v2")
    assert local_record["where"] == "local" and local_record["remote_stage"] is None
    assert rig.server.create_bodies == [body]  # nothing rented for the local evaluation
    assert record["items"] == local_record["items"]
    assert record["examples"] == local_record["examples"]
    assert (report.candidate_score, report.champion_score, report.verdict) == (
        local_report.candidate_score,
        local_report.champion_score,
        local_report.verdict,
    )
    # The host had no references, so it computed no loss; the local evaluation did, and the adapters differ.
    assert report.candidate_eval_loss is None and report.champion_eval_loss is None
    assert local_report.candidate_eval_loss != pytest.approx(local_report.champion_eval_loss, rel=1e-3)


def test_what_the_host_claims_about_scores_and_loss_is_ignored(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub="ok")
    add_version(rig.ctx, "v1", rig.tmp)

    report, record = evaluate_version(rig.ctx, "v1")

    # Scored here by exact match against the golden references, not by the lines' "score" fields.
    assert (report.candidate_score, report.champion_score) == (1.0, 0.0)
    assert report.verdict == "promote"
    # Neither the summary's eval loss (0.0) nor the lines' losses (0.5): a host without references cannot have one.
    assert report.candidate_eval_loss is None and report.champion_eval_loss is None
    assert record["where"] == "remote" and record["scoring_modes"] == {"code": 0, "exact": 8}
    assert_settled(rig, stages=1)


def test_a_host_that_echoes_what_it_gets_cannot_make_a_worse_candidate_pass(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub="echo")
    add_version(rig.ctx, "v1", rig.tmp)
    golden = rig.ctx.settings.evaluation.golden_path
    assert golden is not None
    references = [json.loads(line)["messages"][-1]["content"] for line in golden.read_text().splitlines()]

    report, record = evaluate_version(rig.ctx, "v1")

    # The champion answered half the items right; the candidate's host echoed everything it was given.
    assert report.champion_score == pytest.approx(0.5) and report.candidate_score == 0.0
    assert report.verdict != "promote"
    # What the host was given: prompts only (the golden file, its references and tests stayed here).
    stage_id = record["remote_stage"]["id"]
    manifest = rig.tmp / "echo-manifest.json"
    rig.ctx.artifacts.get(f"evals/{stage_id}/manifest.json", manifest)
    inputs = json.loads(manifest.read_text())["inputs"]
    assert "golden" not in inputs and inputs["prompts"]["path"] == "data/prompts.jsonl"
    sent = rig.tmp / "sent-prompts.jsonl"
    rig.ctx.artifacts.get(f"evals/{stage_id}/inputs/prompts.jsonl", sent, sha256=inputs["prompts"]["sha256"])
    rows = [json.loads(line) for line in sent.read_text().splitlines()]
    assert len(rows) == len(references) and all(set(r) == {"id", "messages"} for r in rows)
    assert all(r["messages"][-1]["role"] == "user" for r in rows)
    assert not any(ref in sent.read_text() for ref in references)
    assert_settled(rig, stages=1)


def test_tampered_predictions_fail_the_evaluation_and_the_stage_is_still_settled(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(stub="ok")
    add_version(rig.ctx, "v1", rig.tmp)
    tampering = TamperingStore(rig.ctx.artifacts, rig.ctx.settings.evaluation.golden_path or Path())
    rig.ctx.artifacts = tampering  # type: ignore[assignment]

    with pytest.raises(EvaluationError, match=r"candidate's predictions .* refused: .*sha256"):
        evaluate_version(rig.ctx, "v1")

    assert len(tampering.tampered) == 1
    assert_settled(rig, stages=1)
    with rig.store.session() as session:
        reasons = [e.reason for e in session.exec(select(Event).where(Event.entity_type == "evaluation")).all()]
    assert any("reserved" in r for r in reasons) and any("verified gone" in r for r in reasons)


def test_absent_predictions_fail_the_evaluation_with_the_reason(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub="absent")
    add_version(rig.ctx, "v1", rig.tmp)

    with pytest.raises(EvaluationError, match="uploaded no predictions for the candidate"):
        evaluate_version(rig.ctx, "v1")

    assert_settled(rig, stages=1)


def test_no_budget_means_nothing_is_rented(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub="ok")
    add_version(rig.ctx, "v1", rig.tmp)
    rig.ctx.settings = rig.ctx.settings.model_copy(
        update={"budget": rig.ctx.settings.budget.model_copy(update={"per_run_usd": 0.0})}
    )

    with pytest.raises(EvaluationError, match="no budget for the evaluation stage"):
        evaluate_version(rig.ctx, "v1")

    assert rig.server.create_bodies == [] and stage_entries(rig) == {}


def test_the_kill_switch_stops_the_stage_before_renting(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub="ok")
    add_version(rig.ctx, "v1", rig.tmp)
    with rig.store.session(write=True) as session:
        set_paused(session, True, actor="human:test", reason="test")

    with pytest.raises(EvaluationError, match=r"paused \(kill switch\)"):
        evaluate_version(rig.ctx, "v1")

    assert rig.server.create_bodies == [] and stage_entries(rig) == {}


def test_a_stage_left_open_by_a_dead_daemon_is_protected_then_reaped(rig_factory: Callable[..., Rig]) -> None:
    """A daemon died after renting for a stage: while the stage could still be running its instance is no orphan;
    past its deadline the reconciler destroys it, verifies it gone, and settles the reservation at the charges."""
    rig = rig_factory(stub="ok")
    stage_id, label = "eval-v9-deadbeef", instance_label(rig.ctx.settings.env, "eval-v9-deadbeef")
    with rig.store.session(write=True) as session:
        reserve(rig.store, session, amount_usd=1.0, caps=rig.ctx.settings.budget, run_id=stage_id, note="test")
        session.add(EvalStage(id=stage_id, version_id="v9", status=StageStatus.LAUNCHED, label=label, reserved_usd=1.0))
    offer = rig.ctx.gpu.search_offers(OfferRequirements())[0]
    rig.ctx.gpu.launch(LaunchSpec(label=label, offer_id=offer.id, image="img", command=["sleep", "60"]))

    assert live_stage_labels(rig.ctx) == {label}
    assert reconcile_stages(rig.ctx) == [] and len(rig.server.live_instances()) == 1

    later = utcnow() + timedelta(hours=2)
    assert live_stage_labels(rig.ctx, now=later) == set()
    assert reconcile_stages(rig.ctx, now=later) == [stage_id]
    assert_settled(rig, stages=1)
    assert reconcile_stages(rig.ctx, now=later) == []  # settled once


# -------------------------------------------------- the stage as a durable job: the supervisor never waits on a host


def _until_ready(rig: Rig, stage_id: str, *, passes: int = 600) -> EvalStage:
    """The daemon's jobs worker, pass after pass (bounded), until the stage is ready."""
    for _ in range(passes):
        advance_stages(rig.ctx)
        with rig.store.session() as session:
            row = session.get(EvalStage, stage_id, populate_existing=True)
        assert row is not None
        if is_ready(row):
            return row
        time.sleep(0.1)
    raise AssertionError(f"stage {stage_id} never became ready")


def _held(rig: Rig, cycle_id: str) -> Any:
    with rig.store.session(write=True) as session:
        assert acquire(session, thread_lease(f"cycle-{cycle_id}"), rig.ctx.owner, ttl_s=600)
    return {"cycle_id": cycle_id, "version_id": "v1", "log": []}


def test_the_evaluate_node_opens_the_stage_and_returns_a_worker_drives_it(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub="ok")
    add_version(rig.ctx, "v1", rig.tmp)
    state = _held(rig, "s1")

    opened = model_nodes.evaluate(rig.ctx, state)

    # The node rented the stage and returned without watching it: the host is still up, nothing settled yet.
    assert opened["awaiting_stage"] is True and "verdict" not in opened
    stage_id = opened["stage_id"]
    with rig.store.session() as session:
        row = session.get(EvalStage, stage_id)
    assert row is not None and row.status == StageStatus.LAUNCHED and row.instance_id is not None
    assert len(rig.server.live_instances()) == 1
    assert [r.kind for r in stage_entries(rig)[stage_id]] == ["reservation"]
    assert graph.after_evaluate({**state, **opened}) == "await_stage"

    row = _until_ready(rig, stage_id)
    assert row.status == StageStatus.COLLECTING and row.running_since is not None
    assert rig.server.live_instances() == []  # the worker destroyed it once the host had uploaded its result

    scored = model_nodes.evaluate(rig.ctx, {**state, **opened})
    assert scored["verdict"] == "promote" and scored["awaiting_stage"] is False
    assert graph.after_evaluate({**state, **opened, **scored}) == "gate"
    with rig.store.session() as session:
        row = session.get(EvalStage, stage_id)
        version = session.get(ModelVersion, "v1")
    assert row is not None and row.status == StageStatus.SUCCEEDED
    assert version is not None and version.eval_report["remote_stage"]["id"] == stage_id
    assert len(rig.server.create_bodies) == 1
    assert_settled(rig, stages=1)


def test_a_restarted_evaluate_node_reuses_the_rented_stage(rig_factory: Callable[..., Rig]) -> None:
    """The process died after the stage was rented and before the node's result was checkpointed: the node runs
    again from its start, finds the stage, and rents nothing more."""
    rig = rig_factory(stub="ok")
    add_version(rig.ctx, "v1", rig.tmp)
    state = _held(rig, "s2")
    first = model_nodes.evaluate(rig.ctx, state)

    again = model_nodes.evaluate(rig.ctx, state)  # no stage id: the checkpoint was lost

    assert again["stage_id"] == first["stage_id"] and len(rig.server.create_bodies) == 1
    _until_ready(rig, first["stage_id"])
    assert model_nodes.evaluate(rig.ctx, state)["verdict"] == "promote"
    assert len(rig.server.create_bodies) == 1
    assert_settled(rig, stages=1)


def test_a_stage_another_process_holds_is_left_to_it(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub="ok")
    add_version(rig.ctx, "v1", rig.tmp)
    stage_id = model_nodes.evaluate(rig.ctx, _held(rig, "s3"))["stage_id"]
    with rig.store.session(write=True) as session:
        assert acquire(session, stage_lease(stage_id), "another-daemon", ttl_s=600)

    for _ in range(3):
        assert advance_stages(rig.ctx) == []
    with rig.store.session() as session:
        row = session.get(EvalStage, stage_id)
    assert row is not None and row.status == StageStatus.LAUNCHED and row.running_since is None  # not even polled

    with rig.store.session(write=True) as session:
        release(session, stage_lease(stage_id), "another-daemon")
    assert _until_ready(rig, stage_id).status == StageStatus.COLLECTING
    assert rig.server.live_instances() == []


def test_the_graph_waits_on_the_stage_and_resumes_when_it_is_ready(rig_factory: Callable[..., Rig]) -> None:
    """The compiled graph: the thread is interrupted on the stage (no node blocks), the worker drives it, the
    resumed thread scores and gates."""
    from langgraph.checkpoint.memory import InMemorySaver

    rig = rig_factory(stub="ok")
    add_version(rig.ctx, "v1", rig.tmp)
    state = _held(rig, "s4")
    app = graph.build_graph(rig.ctx).compile(checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "cycle-s4"}}
    app.update_state(config, {**state, "decision_id": "d-none"}, as_node="await_run")

    out = app.invoke(None, config)

    [waiting] = out["__interrupt__"]
    stage_id = waiting.value["stage_id"]
    assert waiting.value["kind"] == "stage" and len(rig.server.live_instances()) == 1
    _until_ready(rig, stage_id)
    out = app.invoke(Command(resume={"stage_id": stage_id}), config)
    assert "__interrupt__" not in out and out["outcome"].startswith("PROMOTED v1")
    assert len(rig.server.create_bodies) == 1
    assert_settled(rig, stages=1)
