"""Training runs on rented hosts (every provider but ``local``): launch, watch, retry on another host, collect.

What goes to the host and what comes back is ``pilot.runs.host``. Invariants:
- Intent before side effect: an attempt is recorded in ``run.config["remote"]["attempts"]`` (committed) before the
  provider is asked for an instance; an instance with the run's label that the run does not record (a crash between
  "rented" and "recorded") is adopted if the attempt was recorded, and destroyed otherwise.
- A breach (stuck loading, silent heartbeat, host offline, outbid, OCI failure, vanished) destroys the instance; only
  when the provider confirms it gone is another host tried (at most ``gpu.remote.max_attempts`` hosts, never a host
  already tried), resuming from the last complete uploaded checkpoint. Max duration and max cost end the run.
- At the end the instance is always destroyed and verified gone; the run's cost is what the provider charged for
  every instance that carried its label (``charges``), else elapsed time x $/h; it replaces the reservation.

``Liveness`` and ``label_cost`` are shared with evaluation stages (pilot/evaluation/remote.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import update
from sqlmodel import select

from pilot.context import PilotContext
from pilot.runs import lifecycle as runs
from pilot.runs.host import (
    attempt_prefix,
    build_manifest,
    collect_adapter,
    host_spec,
    latest_checkpoint,
    read_heartbeat,
    read_result,
    scratch_dir,
    secrets_to_withhold,
    stage_inputs,
    upload_manifest,
)
from pilot.store.models import DatasetSnapshot, TrainingRun
from pilot.store.status import RunStatus, RunTerminationReason
from pilot.store.writers import record_event, switch_run_status
from subagents.training import plan_training, requirements_for
from tools.errors import LaunchFailed, OfferUnavailable, PilotError
from tools.gpu.base import Instance, InstanceState, Offer

logger = logging.getLogger(__name__)

_OFFER_TRIES = 5  # offers tried per attempt when they are taken between search and rent


@runtime_checkable
class ChargesProvider(Protocol):
    """A provider that can say what it billed (``VastGpuProvider``)."""

    def charges(self, start: float, end: float) -> Iterable[Any]: ...


def provider_cost(ctx: PilotContext, run: TrainingRun, attempts: list[dict[str, Any]]) -> float:
    """What the provider charged for every instance with the run's label; else elapsed time x $/h per attempt."""
    return label_cost(ctx, run.label, since=run.created_at.timestamp(), attempts=attempts)


def label_cost(ctx: PilotContext, label: str, *, since: float, attempts: list[dict[str, Any]]) -> float:
    """What the provider charged for every instance carrying ``label`` (the charges of a day either side of
    ``since`` and now); else elapsed time x $/h of ``attempts`` (``launched_at``, ``ended_at``, ``dph``)."""
    if isinstance(ctx.gpu, ChargesProvider):
        try:
            rows = [
                c for c in ctx.gpu.charges(since - 86400, time.time() + 86400) if getattr(c, "label", None) == label
            ]
            return float(sum(float(c.amount_usd) for c in rows))
        except PilotError as exc:
            logger.warning("Charges of %s unavailable (%s): using elapsed time x $/h", label, exc)
    return estimated_cost(attempts, time.time())


def estimated_cost(attempts: list[dict[str, Any]], now: float) -> float:
    total = 0.0
    for a in attempts:
        if a.get("launched_at") is None or a.get("instance_id") is None:
            continue
        end = a.get("ended_at") or now
        total += float(a.get("dph") or 0.0) * max(end - float(a["launched_at"]), 0.0) / 3600
    return total


# -- choosing a host ----------------------------------------------------------------------------------------
def _host_key(offer: Offer) -> str:
    machine = offer.raw.get("machine_id") if offer.raw else None
    return f"machine-{machine}" if machine is not None else f"offer-{offer.id}"


def next_offer(ctx: PilotContext, run: TrainingRun, *, excluded: set[str]) -> tuple[Offer, float | None] | None:
    """The cheapest expected-total-cost offer on a host not tried yet, with the bid when interruptible."""
    remote = ctx.settings.gpu.remote
    params = runs.training_params(ctx)
    requirements = dataclasses.replace(
        requirements_for(params, max_dph=ctx.settings.budget.max_dph), interruptible=remote.interruptible
    )
    offers = [o for o in ctx.gpu.search_offers(requirements) if _host_key(o) not in excluded and o.id not in excluded]
    figures = (run.config.get("plan") or {}) if run.config else {}
    plan = plan_training(
        params,
        offers,
        train_examples=int(figures.get("train_examples", 0)),
        train_tokens=int(figures.get("train_tokens", 0)),
        remote=True,
    )
    if plan is None:
        return None
    offer = plan.offer
    bid = None
    if remote.interruptible:
        bid = round((offer.min_bid if offer.min_bid is not None else offer.dph_total) * remote.bid_markup, 4)
    return offer, bid


def offer_dph(offer: Offer, bid: float | None, disk_gb: float) -> float:
    if bid is None:
        return offer.dph_total
    return bid + offer.storage_cost_per_gb_month * disk_gb / 720.0


# -- run bookkeeping (fields, not status: statuses go through pilot.store.writers) -------------------------
def remote_state(run: TrainingRun) -> dict[str, Any]:
    state = dict((run.config or {}).get("remote") or {})
    state.setdefault("attempts", [])
    return state


def save_remote_state(
    ctx: PilotContext, run_id: str, state: dict[str, Any], *, reason: str | None = None, **fields: Any
) -> TrainingRun:
    """Write ``config["remote"]`` (and plain fields such as ``instance_id``) with an event when ``reason``."""
    with ctx.store.session(write=True) as session:
        row = session.get(TrainingRun, run_id)
        assert row is not None, run_id
        config = {**(row.config or {}), "remote": state}
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_id, TrainingRun.status == row.status)  # type: ignore[arg-type]
            .values(config=config, **fields)
            .execution_options(synchronize_session=False)
        )
        if reason is not None:
            record_event(
                session,
                entity_type="training_run",
                entity_id=run_id,
                actor="system",
                reason=reason,
                data={k: v for k, v in fields.items() if isinstance(v, str | int | float | None)},
            )
        session.flush()
        session.refresh(row)
        return row


def owned_for_run(ctx: PilotContext, run: TrainingRun) -> list[Instance]:
    return [i for i in ctx.gpu.list_owned(run.label) if i.label == run.label]


def find_run(ctx: PilotContext, run_id: str) -> TrainingRun:
    with ctx.store.session() as session:
        run = session.exec(select(TrainingRun).where(TrainingRun.id == run_id)).one()
    return run


# -- launching ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchOutcome:
    run: TrainingRun
    launched: bool
    reason: str = ""


def launch_attempt(ctx: PilotContext, run: TrainingRun, snapshot: DatasetSnapshot) -> LaunchOutcome:
    """Stage and launch the next attempt on a host not tried yet. The attempt is recorded before renting."""
    remote = ctx.settings.gpu.remote
    state = remote_state(run)
    state["inputs"] = stage_inputs(ctx, run, snapshot)
    attempts: list[dict[str, Any]] = state["attempts"]
    excluded = {a["host"] for a in attempts if a.get("host")} | {a["offer_id"] for a in attempts if a.get("offer_id")}
    secrets = secrets_to_withhold(ctx)
    last_error = "no offer"
    for _ in range(_OFFER_TRIES):
        if len(attempts) >= remote.max_attempts:
            return LaunchOutcome(run, False, f"{len(attempts)} host(s) tried ({last_error}); giving up")
        try:
            chosen = next_offer(ctx, run, excluded=excluded)
        except PilotError as exc:
            return LaunchOutcome(run, False, f"offer search failed: {exc}")
        if chosen is None:
            return LaunchOutcome(run, False, f"no other offer meets the job's requirements ({last_error})")
        offer, bid = chosen
        n = len(attempts) + 1
        checkpoint = latest_checkpoint(ctx, run.id, [a["n"] for a in attempts]) if attempts else None
        manifest = build_manifest(ctx, run, n=n, inputs=state["inputs"], checkpoint=checkpoint)
        manifest_url = upload_manifest(
            ctx, f"{attempt_prefix(run.id, n)}/manifest.json", manifest, scratch_dir(ctx, run.id) / f"manifest-{n}.json"
        )
        spec = host_spec(
            ctx,
            label=run.label,
            offer_id=offer.id,
            bid=bid,
            manifest=manifest,
            manifest_url=manifest_url,
            secrets=secrets,
        )
        dph = offer_dph(offer, bid, remote.disk_gb)
        record = {
            "n": n,
            "offer_id": offer.id,
            "host": _host_key(offer),
            "gpu": offer.gpu_name,
            "dph": dph,
            "bid": bid,
            "resume_step": checkpoint["step"] if checkpoint else None,
            "state": "launching",
            "instance_id": None,
            "launched_at": time.time(),
        }
        attempts.append(record)
        run = save_remote_state(ctx, run.id, state)  # intent before side effect
        try:
            instance = ctx.gpu.launch(spec)
        except OfferUnavailable as exc:
            last_error = f"offer {offer.id} taken: {exc}"
            excluded |= {offer.id, record["host"]}
            attempts.pop()  # nothing was rented: a taken offer does not use up an attempt
            run = save_remote_state(ctx, run.id, state, reason=f"offer {offer.id} was taken; choosing another")
            continue
        except PilotError as exc:
            last_error = f"launch on offer {offer.id} failed: {exc}"
            excluded |= {offer.id, record["host"]}
            record.update(state="launch_failed", ended_at=time.time(), end_reason=str(exc)[:300])
            run = save_remote_state(ctx, run.id, state, reason=last_error[:500])
            continue
        record.update(state="launched", instance_id=instance.id, launched_at=time.time())
        why = (
            f"attempt {n}: instance {instance.id} accepted by {ctx.gpu.name} on offer {offer.id} ({offer.gpu_name}, "
            f"${dph:.4f}/h{', bid' if bid else ''})"
            + (f", resuming from step {checkpoint['step']}" if checkpoint else "")
        )
        if run.status == RunStatus.PENDING:
            with ctx.store.session(write=True) as session:
                run = switch_run_status(
                    session,
                    run.id,
                    RunStatus.PROVISIONING,
                    actor="system",
                    reason=why,
                    instance_id=instance.id,
                    offer_id=offer.id,
                    dph=dph,
                    config={**run.config, "remote": state},
                )
        else:
            run = save_remote_state(ctx, run.id, state, reason=why, instance_id=instance.id, offer_id=offer.id, dph=dph)
        logger.info("Run %s %s", run.id, why)
        return LaunchOutcome(run, True)
    return LaunchOutcome(run, False, last_error)


# -- watching ---------------------------------------------------------------------------------------------
@dataclass
class Liveness:
    """What this process saw of an attempt, by its own clock (host clocks are not trusted)."""

    running_since: float | None = None
    seq: Any = None
    seen_at: float | None = None


def watch_remote(
    ctx: PilotContext, run_id: str, *, sleep: Callable[[float], None] = time.sleep, poll_s: float | None = None
) -> TrainingRun:
    """Poll until the run ends: deadlines, retries on another host, destroy-and-verify, collect. Resumable."""
    training, remote = ctx.settings.training, ctx.settings.gpu.remote
    poll_s = poll_s if poll_s is not None else training.poll_interval_s
    seen: dict[int, Liveness] = {}
    for _ in range(1_000_000):  # bounded: every branch sleeps or ends, and the deadlines end the run
        run = find_run(ctx, run_id)
        if RunStatus(run.status).is_terminal:
            return run  # the kill switch or the reconciler ended it meanwhile
        state = remote_state(run)
        attempts: list[dict[str, Any]] = state["attempts"]
        now = time.time()
        if run.instance_id is None:
            run = adopt_or_clean(ctx, run)
            if run.instance_id is None:
                with ctx.store.session() as session:
                    snapshot = session.get(DatasetSnapshot, run.snapshot_id)
                assert snapshot is not None
                outcome = launch_attempt(ctx, run, snapshot)
                if not outcome.launched:
                    return finish_failed(ctx, outcome.run, RunTerminationReason.LAUNCH_FAILED, outcome.reason)
            continue
        current = next((a for a in reversed(attempts) if a.get("instance_id") == run.instance_id), None)
        if current is None:  # an instance no attempt recorded: not ours to judge; end the run cleanly
            current = {"n": len(attempts), "instance_id": run.instance_id}
            return _stop(ctx, run, current, RunTerminationReason.DAEMON_LOST_TRACK, "no attempt recorded")
        live = seen.setdefault(int(current["n"]), Liveness())
        reserved = float(run.config.get("reserved_usd", run.estimated_cost_usd))
        if estimated_cost(attempts, now + poll_s) > reserved + 1e-9:
            message = f"spend would pass the ${reserved:.4f} reservation"
            return _stop(ctx, run, current, RunTerminationReason.BUDGET_EXCEEDED, message)
        first = min(float(a["launched_at"]) for a in attempts if a.get("launched_at"))
        if now > first + training.max_duration_minutes * 60:
            message = f"still running after {training.max_duration_minutes:g} min"
            return _stop(ctx, run, current, RunTerminationReason.DEADLINE_EXCEEDED, message)
        try:
            instance = ctx.gpu.poll(run.instance_id)
        except PilotError as exc:
            logger.warning("Run %s: polling instance %s failed: %s", run.id, run.instance_id, exc)
            sleep(poll_s)
            continue
        match instance.state:
            case InstanceState.LOADING:
                waited = now - float(current["launched_at"])
                if waited > remote.loading_timeout_s:
                    ended = _breach(
                        ctx,
                        run,
                        current,
                        RunTerminationReason.LAUNCH_FAILED,
                        f"instance {instance.id} still loading after {waited:.0f} s ({instance.detail or 'no detail'})",
                        retry=True,
                    )
                    if ended is not None:
                        return ended
                    continue
            case InstanceState.RUNNING:
                if run.status == RunStatus.PROVISIONING:
                    with ctx.store.session(write=True) as session:
                        switch_run_status(
                            session,
                            run.id,
                            RunStatus.RUNNING,
                            actor="system",
                            reason=f"the job started on {instance.id}",
                        )
                live.running_since = live.running_since or now
                beat = read_heartbeat(ctx, run.id, int(current["n"]))
                if beat is not None and beat.get("seq") != live.seq:
                    live.seq, live.seen_at = beat.get("seq"), now
                silent = now - max(live.seen_at or 0.0, live.running_since)
                if silent > training.heartbeat_timeout_s:
                    ended = _breach(
                        ctx,
                        run,
                        current,
                        RunTerminationReason.DEADLINE_EXCEEDED,
                        f"no heartbeat from instance {instance.id} for {silent:.0f} s",
                        retry=True,
                    )
                    if ended is not None:
                        return ended
                    continue
            case InstanceState.EXITED:
                return_value = _exited(ctx, run, current, instance)
                if return_value is not None:
                    return return_value
                continue
            case InstanceState.STOPPED | InstanceState.GONE:
                what = "vanished" if instance.state is InstanceState.GONE else f"stopped ({instance.detail})"
                ended = _breach(
                    ctx,
                    run,
                    current,
                    RunTerminationReason.INSTANCE_VANISHED,
                    f"instance {instance.id} {what}",
                    retry=True,
                )
                if ended is not None:
                    return ended
                continue
        sleep(poll_s)
    raise AssertionError("unreachable: the deadlines end every run")


def _exited(ctx: PilotContext, run: TrainingRun, current: dict[str, Any], instance: Instance) -> TrainingRun | None:
    result = read_result(ctx, run.id, int(current["n"]))
    if instance.exit_code is None:  # the container never ran the job (OCI runtime failure): a host fault
        return _breach(
            ctx,
            run,
            current,
            RunTerminationReason.LAUNCH_FAILED,
            f"instance {instance.id} could not start the job: {instance.detail[:300]}",
            retry=True,
        )
    if instance.exit_code != 0 or result is None or result.get("status") != "ok":
        tail = (result or {}).get("log_tail") or []
        last = f": {tail[-1][:300]}" if tail else ""
        if instance.exit_code == 0:
            message, termination = "the job exited 0 but uploaded no result", RunTerminationReason.INVALID_OUTPUT
        else:
            message, termination = (
                f"the job exited with code {instance.exit_code}{last}",
                RunTerminationReason.JOB_FAILED,
            )
        return _stop(ctx, run, current, termination, message)
    gone = _destroy(ctx, run, current, "the job exited 0")
    state = remote_state(run)
    cost = provider_cost(ctx, run, state["attempts"])
    if not gone:
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type="training_run",
                entity_id=run.id,
                actor="system",
                reason=f"instance {instance.id} could not be verified destroyed; the reconciler will retry",
            )
    with ctx.store.session(write=True) as session:
        run = switch_run_status(session, run.id, RunStatus.COLLECTING, actor="system", reason="the job exited 0")
    try:
        stored = collect_adapter(ctx, run.id, int(current["n"]), result)
    except (PilotError, KeyError, TypeError) as exc:
        return runs.fail_run(ctx, run.id, RunTerminationReason.INVALID_OUTPUT, f"adapter refused: {exc}", cost=cost)
    reported = result.get("metrics")
    metrics: dict[str, Any] = dict(reported) if isinstance(reported, dict) else {}
    metrics["attempts"] = len(state["attempts"])
    return runs.register_candidate(ctx, run, stored, metrics, cost=cost)


def _destroy(ctx: PilotContext, run: TrainingRun, current: dict[str, Any], why: str) -> bool:
    """Destroy the attempt's instance, verify it is gone, and record the attempt's end (instance_id cleared)."""
    instance_id = str(current["instance_id"])
    gone = runs.destroy_and_verify(ctx, instance_id)
    run = find_run(ctx, run.id)
    state = remote_state(run)
    for a in state["attempts"]:
        if a.get("instance_id") == instance_id:
            a.update(state="ended" if gone else "not_verified_gone", ended_at=a.get("ended_at") or time.time())
            a["end_reason"] = why[:300]
    verdict = "destroyed and verified gone" if gone else "NOT verified gone"
    fields: dict[str, Any] = {"instance_id": None} if gone else {}
    save_remote_state(
        ctx, run.id, state, reason=f"attempt {current['n']} ended ({why}); {instance_id} {verdict}", **fields
    )
    return gone


def _stop(
    ctx: PilotContext, run: TrainingRun, current: dict[str, Any], termination: RunTerminationReason, message: str
) -> TrainingRun:
    ended = _breach(ctx, run, current, termination, message, retry=False)
    assert ended is not None  # without a retry the run always ends
    return ended


def _breach(
    ctx: PilotContext,
    run: TrainingRun,
    current: dict[str, Any],
    termination: RunTerminationReason,
    message: str,
    *,
    retry: bool,
) -> TrainingRun | None:
    """Destroy and verify; then retry on another host (returns None) or end the run (returns it)."""
    logger.warning("Run %s attempt %s: %s", run.id, current["n"], message)
    gone = _destroy(ctx, run, current, message)
    run = find_run(ctx, run.id)
    attempts = remote_state(run)["attempts"]
    if not gone:
        message += f"; instance {current['instance_id']} NOT verified destroyed (the reconciler will retry)"
        return finish_failed(ctx, run, termination, message)
    if retry and len(attempts) < ctx.settings.gpu.remote.max_attempts:
        return None
    if retry:
        message += f" (after {len(attempts)} host(s))"
    return finish_failed(ctx, run, termination, message)


def finish_failed(ctx: PilotContext, run: TrainingRun, termination: RunTerminationReason, message: str) -> TrainingRun:
    attempts = remote_state(run)["attempts"]
    return runs.fail_run(ctx, run.id, termination, message, cost=provider_cost(ctx, run, attempts))


def adopt_or_clean(ctx: PilotContext, run: TrainingRun) -> TrainingRun:
    """An instance with the run's label that the run does not record: a crash between "rented" and "recorded".

    If the last attempt was recorded as launching, its newest instance is adopted (it runs that attempt's
    manifest); every other such instance is destroyed and verified gone before anything new is rented.
    """
    try:
        found = sorted(owned_for_run(ctx, run), key=lambda i: (i.started_at or 0.0, i.id))
    except PilotError as exc:
        raise LaunchFailed(f"cannot list instances of {run.label}: {exc}") from exc
    state = remote_state(run)
    attempts = state["attempts"]
    pending = attempts[-1] if attempts and attempts[-1].get("state") == "launching" else None
    adopt = found[-1] if found and pending is not None else None
    for instance in found:
        if instance is adopt:
            continue
        if not runs.destroy_and_verify(ctx, instance.id):
            raise LaunchFailed(f"unrecorded instance {instance.id} of {run.label} could not be destroyed")
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type="instance",
                entity_id=instance.id,
                actor="system",
                reason=f"unrecorded instance of run {run.id} destroyed and verified gone before relaunch",
            )
    if adopt is None:
        if pending is not None:
            pending.update(state="launch_lost", ended_at=time.time(), end_reason="no instance after a restart")
            run = save_remote_state(ctx, run.id, state, reason=f"attempt {pending['n']} left no instance")
        return run
    assert pending is not None
    pending.update(state="launched", instance_id=adopt.id)
    why = f"adopted instance {adopt.id} of attempt {pending['n']} after a restart"
    if run.status == RunStatus.PENDING:
        with ctx.store.session(write=True) as session:
            return switch_run_status(
                session,
                run.id,
                RunStatus.PROVISIONING,
                actor="system",
                reason=why,
                instance_id=adopt.id,
                offer_id=pending["offer_id"],
                dph=pending["dph"],
                config={**run.config, "remote": state},
            )
    return save_remote_state(
        ctx, run.id, state, reason=why, instance_id=adopt.id, offer_id=pending["offer_id"], dph=pending["dph"]
    )
