"""Remote runs through the local Vast server and S3: launch with presigned URLs only, every fault switch, retries on
another host, adoption and orphans after a crash. Every test ends with the run terminal (or succeeded), the ledger
equal to what the server billed, and NO instance left on the server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select
from test_remote_rig import AWS, VAST_KEY, Rig, make_rig, moto_endpoint

from pilot.runs.attempts import attempts_of
from pilot.runs.host import onstart_script
from pilot.service.reconcile import reconcile
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import Event, ModelVersion, RunAttempt, TrainingRun, utcnow
from pilot.store.status import AttemptStatus, RunStatus, RunTerminationReason
from tools.gpu.base import InstanceState, LaunchSpec, OfferRequirements


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server, url = moto_endpoint()
    yield url
    server.stop()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'pilot.db'}")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def rig_factory(
    tmp_path: Path,
    sqlite_store: Store,
    make_settings: Callable[..., Settings],
    endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Rig]]:
    # The boto3 chain of this process holds the S3 secret: it must never reach a host.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS["aws_secret_access_key"])
    made: list[Rig] = []

    def factory(**options: object) -> Rig:
        rig, _ = make_rig(tmp_path, sqlite_store, make_settings, endpoint, **options)  # type: ignore[arg-type]
        made.append(rig)
        return rig

    yield factory
    for rig in made:
        for instance_id in rig.server.live_instances():  # leave nothing running even when a test failed midway
            rig.ctx.gpu.terminate(str(instance_id))
        rig.server.stop()


def assert_settled(rig: Rig, run: TrainingRun) -> None:
    """No reservation is left, nothing is still billing, the ledger never held less than the server billed, and
    after the settle worker's pass it holds exactly what the server billed."""
    assert rig.server.live_instances() == []
    actual, reserved = rig.ledger(run.id)
    assert reserved == 0
    assert actual >= rig.charged() - 1e-9, "never under-counted"
    assert run.actual_cost_usd == pytest.approx(actual, abs=1e-12)
    rig.settle_worker()
    actual, _ = rig.ledger(run.id)
    assert actual == pytest.approx(rig.charged(), abs=1e-9)
    with rig.store.session() as session:
        settled = session.get(TrainingRun, run.id)
        assert settled is not None and settled.actual_cost_usd == pytest.approx(actual, abs=1e-12)


def attempts_for(rig: Rig, run: TrainingRun) -> list[RunAttempt]:
    with rig.store.session() as session:
        return attempts_of(session, run.id)


def instance_ids(rig: Rig, run: TrainingRun) -> list[str]:
    return [str(a.instance_id) for a in attempts_for(rig, run) if a.instance_id]


def test_happy_path_nothing_secret_reaches_the_host(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    run = rig.launch_and_watch()
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    assert_settled(rig, run)
    assert rig.charged() > 0
    # What the host got: the create body (env, onstart/args, label, image) and the manifest it fetched.
    [body] = rig.server.create_bodies
    manifest = rig.ctx.artifacts.list(f"runs/{run.id}/attempt-1/manifest.json")
    assert manifest == [f"runs/{run.id}/attempt-1/manifest.json"]
    dest = rig.tmp / "manifest.json"
    rig.ctx.artifacts.get(manifest[0], dest)
    sent = json.dumps(body) + dest.read_text()
    for secret in (VAST_KEY, AWS["aws_secret_access_key"]):
        assert secret not in sent
    assert set(body["env"]) == {"LP_MANIFEST_URL", "PYTHONPATH", "PYTHONUNBUFFERED", "TOKENIZERS_PARALLELISM"}
    assert body["label"] == run.label and body["runtype"] == "args"
    # The adapter landed in S3 under the run, with its sha256 as metadata, and the candidate points at it.
    with rig.store.session() as session:
        version = session.exec(select(ModelVersion).where(ModelVersion.run_id == run.id)).one()
    weights = version.adapter_files["adapter_model.safetensors"]
    assert weights["key"] == f"runs/{run.id}/adapter/adapter_model.safetensors"
    assert rig.ctx.artifacts.get(weights["key"], rig.tmp / "w.safetensors", sha256=version.adapter_sha256)
    assert run.metrics["attempts"] == 1 and run.metrics["steps"] == 3


def test_onstart_installs_only_missing_dependencies_and_fits_vast_limit() -> None:
    script = onstart_script("/opt/py/bin/python3")
    assert "find_spec" in script and "pip install" in script and "||" in script
    assert "jobs.remote_entry" in script and "sha256" in script
    assert len(script) < 4000


def test_429_bursts_and_5xx_are_absorbed(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.server.fail_next(429, count=2, method="PUT", path="/api/v0/asks/")
    rig.server.fail_next(502, count=2, method="GET", path="/api/v0/instances/")
    run = rig.launch_and_watch()
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    assert len(rig.sleeps) >= 4  # backed off, did not hammer
    assert_settled(rig, run)


def test_stuck_loading_is_replaced_on_another_host(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(remote={"loading_timeout_s": 0.8})
    rig.server.stuck_loading = True
    run = rig.new_run()
    run = _launch(rig, run)
    rig.server.stuck_loading = False  # the next host boots
    run = _watch(rig, run)
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    attempts = attempts_for(rig, run)
    assert len(attempts) == 2 and attempts[0].host != attempts[1].host
    assert "still loading" in attempts[0].end_reason
    assert_settled(rig, run)


def test_stuck_everywhere_fails_after_max_attempts(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(remote={"loading_timeout_s": 0.5, "max_attempts": 2})
    rig.server.stuck_loading = True
    run = rig.launch_and_watch()
    assert run.status == RunStatus.FAILED
    assert run.termination_reason == RunTerminationReason.LAUNCH_FAILED
    assert "still loading" in (run.status_message or "") and "2 host(s)" in (run.status_message or "")
    assert len(instance_ids(rig, run)) == 2
    assert_settled(rig, run)


def test_oci_failure_retries_elsewhere(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.server.oci_fail_next(1)
    run = rig.launch_and_watch()
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    assert "OCI runtime create failed" in attempts_for(rig, run)[0].end_reason
    assert_settled(rig, run)


def test_host_offline_mid_run_resumes_elsewhere(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub_env={"STUB_STEP_S": "0.6"})
    run = _launch(rig, rig.new_run())
    first = str(run.instance_id)
    _wait_running(rig, first)
    rig.server.host_offline(first)
    run = _watch(rig, run)
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    attempts = attempts_for(rig, run)
    assert "offline" in attempts[0].end_reason and len(attempts) == 2
    assert_settled(rig, run)


def test_silent_heartbeat_is_a_breach(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(
        remote={"max_attempts": 1}, training={"heartbeat_timeout_s": 1.0}, stub_env={"STUB_MODE": "freeze"}
    )
    run = rig.launch_and_watch()
    assert run.status == RunStatus.FAILED
    assert run.termination_reason == RunTerminationReason.DEADLINE_EXCEEDED
    assert "no heartbeat" in (run.status_message or "")
    assert_settled(rig, run)


def test_job_failure_is_not_retried(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub_env={"STUB_MODE": "fail"})
    run = rig.launch_and_watch()
    assert run.status == RunStatus.FAILED and run.termination_reason == RunTerminationReason.JOB_FAILED
    assert "stub: boom" in (run.status_message or "")
    assert len(instance_ids(rig, run)) == 1  # a bug in the job repeats on any host
    assert_settled(rig, run)


def test_pickled_adapter_is_refused(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub_env={"STUB_MODE": "pickle"})
    run = rig.launch_and_watch()
    assert run.status == RunStatus.FAILED and run.termination_reason == RunTerminationReason.INVALID_OUTPUT
    assert "pickle" in (run.status_message or "")
    assert rig.ctx.artifacts.list(f"runs/{run.id}/adapter/") == []
    assert_settled(rig, run)


def test_create_false_with_instance_then_success(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.server.create_false_next(include_contract=True)
    rig.server.create_false_next(include_contract=False)
    run = rig.launch_and_watch(rig.new_run(estimate_usd=0.05))  # approved enough for the pricier hosts after
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    attempts = attempts_for(rig, run)
    assert [a.status for a in attempts] == ["launch_failed", "launch_failed", "ended"]
    assert len(rig.server.create_bodies) == 3
    assert_settled(rig, run)  # the two refused-but-created instances are billed and in the ledger


def test_offer_taken_between_search_and_rent(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    run = rig.new_run(estimate_usd=0.05)  # approved enough for the next cheapest host
    assert run.offer_id is not None
    rig.server.take_offer(run.offer_id)
    run = rig.launch_and_watch(run)
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    attempts = attempts_for(rig, run)
    assert len(attempts) == 1 and attempts[0].offer_id != run.config["plan"]["offer"]
    assert_settled(rig, run)


def test_offer_taken_and_the_next_costs_more_than_approved_is_not_rented(rig_factory: Callable[..., Rig]) -> None:
    """The planned offer is gone and the next one would cost more than the reservation a human approved: nothing is
    rented, the run ends saying why, and nothing is billed."""
    rig = rig_factory()
    run = rig.new_run()
    assert run.offer_id is not None
    rig.server.take_offer(run.offer_id)
    run = rig.launch_and_watch(run)
    assert run.status == RunStatus.FAILED and "reservation" in (run.status_message or "")
    assert rig.server.create_bodies == []
    assert [a.status for a in attempts_for(rig, run)] == [AttemptStatus.REFUSED]
    assert_settled(rig, run)
    assert rig.charged() == 0


def test_destroy_answering_429_is_retried_until_gone(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.server.fail_next(429, count=3, method="DELETE")
    run = rig.launch_and_watch()
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    assert rig.server.count_requests("DELETE", "/api/v0/instances/") >= 4
    assert_settled(rig, run)


def test_budget_breach_stops_the_instance(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(stub_env={"STUB_STEP_S": "5"})
    run = rig.new_run()
    with rig.store.session(write=True) as session:  # a reservation far below what an hour costs
        row = session.get(TrainingRun, run.id)
        assert row is not None
        row.config = {**row.config, "reserved_usd": 1e-7}
    run = rig.launch_and_watch(run)
    assert run.status == RunStatus.FAILED and run.termination_reason == RunTerminationReason.BUDGET_EXCEEDED
    assert_settled(rig, run)


def test_crash_between_rented_and_recorded_is_adopted(rig_factory: Callable[..., Rig]) -> None:
    """The daemon recorded the attempt, rented, and died before recording the instance: the restart adopts it."""
    rig = rig_factory()
    run = _launch(rig, rig.new_run())
    instance_id = attempts_for(rig, run)[-1].instance_id
    _forget_instance(rig, run.id)
    run = _watch(rig, run)
    assert run.status == RunStatus.SUCCEEDED, run.status_message
    assert instance_ids(rig, run) == [instance_id] and len(rig.server.create_bodies) == 1
    with rig.store.session() as session:
        events = session.exec(select(Event).where(Event.entity_id == run.id)).all()
    assert any("adopted instance" in e.reason for e in events)
    assert_settled(rig, run)


def test_unknown_labelled_instance_is_destroyed_as_orphan(rig_factory: Callable[..., Rig]) -> None:
    """An instance with our label prefix that no run knows (crash before the attempt was even recorded)."""
    rig = rig_factory()
    offer = rig.ctx.gpu.search_offers(OfferRequirements())[0]
    stray = rig.ctx.gpu.launch(
        LaunchSpec(label=rig.ctx.instance_label("run-unknown"), offer_id=offer.id, image="x", command=["sleep", "30"])
    )
    report = reconcile(rig.ctx, state=None)
    assert report.orphans_destroyed == [stray.id]
    assert rig.server.live_instances() == []
    assert rig.ctx.gpu.poll(stray.id).state is InstanceState.GONE


def _launch(rig: Rig, run: TrainingRun) -> TrainingRun:
    from pilot.runs.driver import launch_run

    return launch_run(rig.ctx, run, rig.snapshot)


def _watch(rig: Rig, run: TrainingRun) -> TrainingRun:
    from pilot.runs.driver import watch_run

    return watch_run(rig.ctx, run.id, poll_s=0.05)


def _wait_running(rig: Rig, instance_id: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while rig.ctx.gpu.poll(instance_id).state is not InstanceState.RUNNING:
        assert time.monotonic() < deadline, f"instance {instance_id} never ran"
        time.sleep(0.05)


def _forget_instance(rig: Rig, run_id: str) -> None:
    """What a crash between "the provider accepted" and "recorded" leaves: the attempt still pending, no instance."""
    with rig.store.session(write=True) as session:
        row = session.get(TrainingRun, run_id)
        assert row is not None
        row.instance_id = None
        last = attempts_of(session, run_id)[-1]
        last.status, last.instance_id = AttemptStatus.PENDING.value, None


def test_crash_between_rented_and_recorded_without_restart_is_reconciled(rig_factory: Callable[..., Rig]) -> None:
    """Nobody resumes the run: the start-up reconcile destroys the unrecorded instance, fails the run, settles."""
    rig = rig_factory(stub_env={"STUB_STEP_S": "5"})
    run = _launch(rig, rig.new_run())
    _forget_instance(rig, run.id)
    later = utcnow() + timedelta(minutes=11)
    report = reconcile(rig.ctx, state=None, now=later)
    assert report.runs_failed == [{"run_id": run.id, "reason": "daemon_lost_track"}]
    with rig.store.session() as session:
        run = session.get(TrainingRun, run.id)
    assert (
        run is not None and run.status == RunStatus.FAILED and "destroyed and verified gone" in str(run.status_message)
    )
    assert_settled(rig, run)
