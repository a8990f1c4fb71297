"""The service: settings -> store -> context -> start-up reconcile -> scheduler -> HTTP; SIGTERM drains.

Start-up order: migrate the store, build the context, reconcile once (if leader: orphans destroyed, vanished runs
failed), start an APScheduler 3.x ``BackgroundScheduler`` (jobs, one concern each: cycle = the supervisor's pass;
runs = the jobs worker that advances runs on their hosts, ``scheduler.jobs_interval_s``; reconciler; approvals =
reminders + expiry; settle = provider charges re-read for spend settled at an estimate, every
``budget.settle_recheck_s``; monitoring = live quality every ``monitoring.interval_s`` + the daily report; each
``max_instances=1, coalesce=True`` so a slow job is never run twice at once and missed runs collapse into one),
then serve ``pilot.service.api.create_app`` with uvicorn on ``api.host:api.port`` and tell systemd ``READY=1``
(with ``STATUS=`` naming the URL).

Only the leader (pilot/service/leader.py) runs the cycle, reconciler and approval jobs; a standby keeps answering HTTP
(kill switch included, which works from any daemon) and checks leadership on every tick.

Shutdown (SIGTERM or SIGINT): ``STOPPING=1``, the HTTP server stops accepting and finishes in-flight requests,
the scheduler stops starting jobs and waits for the running one, the leader lock is released, exit 0. No job
blocks on a host (a run is advanced one step per pass), so a drain takes seconds; a killed daemon's leases expire
after ``scheduler.lease_ttl_s`` and the next daemon (or this one, restarted) takes the runs and threads over.

systemd notify protocol: datagrams to ``$NOTIFY_SOCKET`` (path, or ``@name`` for the abstract namespace) written
with the socket module; ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` while the scheduler is alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from pilot.context import PilotContext, build_context
from pilot.service.api import SchedulerHooks, create_app
from pilot.service.leader import LeaderElection
from pilot.service.metrics import PilotMetrics
from pilot.service.reconcile import ReconcileState, reconcile
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.status import EntityType
from pilot.store.writers import is_paused, record_event

logger = logging.getLogger(__name__)

APPROVALS_INTERVAL_S = 60.0


def sd_notify(message: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send one notify datagram; False (and nothing else) when not under a notify-aware supervisor."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(message.encode())
    except OSError as exc:
        logger.warning("sd_notify(%r) failed: %s", message, exc)
        return False
    return True


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


class Jobs:
    """The scheduled jobs. Each catches everything at its boundary: a failed job must not stop the scheduler."""

    def __init__(self, ctx: PilotContext, metrics: PilotMetrics, leader: LeaderElection) -> None:
        self.ctx = ctx
        self.metrics = metrics
        self.leader = leader
        self.reconcile_state = ReconcileState()
        self.report_day: str | None = None
        self.wake_cycle: Any = None  # set by build_scheduler: run the cycle job now

    def _leading(self, job: str) -> bool:
        leading = self.leader.is_leader()
        self.metrics.leader.set(1 if leading else 0)
        if not leading:
            logger.debug("Standby: skipping %s", job)
        return leading

    def cycle(self) -> None:
        if not self._leading("cycle"):
            self.metrics.cycles.labels("skipped").inc()
            return
        with self.ctx.store.session() as session:
            paused = is_paused(session)
        if paused:
            logger.info("Paused by the kill switch: no cycle (resume with `learning-pilot resume`)")
            self.metrics.cycles.labels("skipped").inc()
            return
        from pilot.supervisor.cycle import run_cycle  # imports langgraph: only when a cycle really runs

        started = time.monotonic()
        try:
            for result in run_cycle(self.ctx, drive=False):
                logger.info("[%s] %s", result.thread_id, result.outcome)
            self.metrics.cycles.labels("ok").inc()
        except Exception:
            logger.exception("Cycle failed")
            self.metrics.cycles.labels("error").inc()
        finally:
            self.metrics.cycle_duration.observe(time.monotonic() - started)
            self.metrics.last_cycle.set(time.time())

    def reconcile(self) -> None:
        if not self._leading("reconcile"):
            return
        try:
            report = reconcile(self.ctx, state=self.reconcile_state)
        except Exception:
            logger.exception("Reconciler pass failed")
            return
        self.metrics.owned_instances.set(report.owned - len(report.orphans_destroyed))
        if report.orphans_destroyed:
            self.metrics.orphans_destroyed.inc(len(report.orphans_destroyed))

    def approvals(self) -> None:
        if not self._leading("approvals"):
            return
        from pilot.supervisor import notify

        try:
            notify.remind_due(self.ctx)
            notify.expire_and_notify(self.ctx)
        except Exception:
            logger.exception("Approval reminders/expiry failed")

    def runs(self) -> None:
        """Advance every run and evaluation stage in flight by one step, each under its lease (a job another
        process drives is left to it). When one ends, the cycle job runs at once so its thread resumes without
        waiting for the next pass."""
        if not self._leading("runs"):
            return
        from pilot.evaluation.stages import advance_stages
        from pilot.service.workers import advance_runs

        try:
            ended = advance_runs(self.ctx) + advance_stages(self.ctx)
        except Exception:
            logger.exception("Jobs worker pass failed")
            return
        if ended and self.wake_cycle is not None:
            self.wake_cycle()

    def settle(self) -> None:
        """Re-read the provider's charges for spend settled at an estimate (``pilot.service.workers``)."""
        if not self._leading("settle"):
            return
        from pilot.service.workers import settle_charges

        try:
            settle_charges(self.ctx)
        except Exception:
            logger.exception("Settle worker pass failed")

    def monitoring(self) -> None:
        """Live quality on its own schedule (a run in flight never delays a rollback); once per UTC day, the
        report to Slack (no-op when Slack is off)."""
        if not self._leading("monitoring"):
            return
        from pilot.supervisor.monitor import watch_live_quality

        try:
            outcome = watch_live_quality(self.ctx)
            logger.info("%s", outcome.line)
        except Exception:
            logger.exception("Live-quality check failed")
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        if self.report_day == day:
            return
        from pilot.supervisor import notify

        try:
            notify.send_daily_report(self.ctx)
            self.report_day = day
        except Exception:
            logger.exception("Daily report failed")


def build_scheduler(ctx: PilotContext, jobs: Jobs) -> Any:
    from apscheduler.schedulers.background import BackgroundScheduler

    sched = ctx.settings.scheduler
    scheduler = BackgroundScheduler(
        timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60}
    )
    now = datetime.now(UTC)
    scheduler.add_job(jobs.cycle, "interval", seconds=sched.cycle_interval_s, id="cycle", next_run_time=now)
    scheduler.add_job(jobs.reconcile, "interval", seconds=sched.reconcile_interval_s, id="reconcile")
    scheduler.add_job(jobs.approvals, "interval", seconds=APPROVALS_INTERVAL_S, id="approvals", next_run_time=now)
    scheduler.add_job(jobs.monitoring, "interval", seconds=ctx.settings.monitoring.interval_s, id="monitoring")
    scheduler.add_job(jobs.runs, "interval", seconds=sched.jobs_interval_s, id="runs")
    scheduler.add_job(jobs.settle, "interval", seconds=ctx.settings.budget.settle_recheck_s, id="settle")
    jobs.wake_cycle = lambda: scheduler.modify_job("cycle", next_run_time=datetime.now(UTC))
    return scheduler


def _probe_sandbox(ctx: PilotContext, metrics: PilotMetrics) -> None:
    """Whether untrusted code can be isolated here (tools/sandbox.py fails closed): a metric, an event, a log line."""
    from tools.sandbox import probe_isolation

    isolation = probe_isolation()
    metrics.sandbox_degraded.set(0 if isolation.ok else 1)
    if isolation.ok:
        logger.info("Sandbox: %s isolation holds", isolation.mechanism)
        return
    logger.error("Sandbox degraded: %s. Code items will not be evaluated; the gate will ask a human.", isolation.reason)
    with ctx.store.session(write=True) as session:
        record_event(
            session,
            entity_type=EntityType.PILOT,
            entity_id="sandbox",
            actor="system",
            reason=f"sandbox degraded: {isolation.reason}",
        )


def _uvicorn_server(app: Any, host: str, port: int) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises a captured SIGTERM after shutdown (exit by signal); we drain and exit 0 instead."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False)
    return Server(config)


def _bound_url(server: Any, host: str) -> str:
    for srv in getattr(server, "servers", []):
        for sock in srv.sockets:
            name = sock.getsockname()
            return f"http://{host}:{name[1]}"
    return f"http://{host}:?"


def serve(settings: Settings, store: Store, *, install_signals: bool = True) -> None:
    """Run the daemon until SIGTERM/SIGINT; returns after draining (the CLI then exits 0)."""
    store.migrate()
    ctx = build_context(settings, store=store)
    metrics = PilotMetrics(store, settings)
    leader = LeaderElection(store)
    jobs = Jobs(ctx, metrics, leader)
    _probe_sandbox(ctx, metrics)
    if leader.is_leader():
        metrics.leader.set(1)
        try:
            report = reconcile(ctx, state=None)
            metrics.owned_instances.set(report.owned - len(report.orphans_destroyed))
            logger.warning("Start-up reconcile: %s", report.to_dict())
        except Exception:
            logger.exception("Start-up reconcile failed; the periodic reconciler will retry")
    scheduler = build_scheduler(ctx, jobs)
    stopping = threading.Event()
    hooks = SchedulerHooks(metrics=metrics, is_ready=lambda: bool(scheduler.running) and not stopping.is_set())
    app = create_app(ctx, scheduler_hooks=hooks)
    if settings.dashboard.enabled:  # the web dashboard at /dashboard/ (docs/dashboard.md)
        from pilot.service.api_dashboard import mount_dashboard

        mount_dashboard(app, ctx, hooks)
    server = _uvicorn_server(app, settings.api.host, settings.api.port)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.warning("Signal %s: draining", signal.Signals(signum).name)
        if not stopping.is_set():
            stopping.set()
            sd_notify("STOPPING=1")
        server.should_exit = True

    previous: dict[signal.Signals, Any] = {}
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    ticker = threading.Thread(target=_notifier, args=(server, settings, stopping, scheduler), daemon=True)
    scheduler.start()
    ticker.start()
    try:
        server.run()
    finally:
        stopping.set()
        sd_notify("STOPPING=1\nSTATUS=draining: waiting for the running job")
        scheduler.shutdown(wait=True)
        leader.release()
        ctx.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.warning("Stopped")


def _notifier(server: Any, settings: Settings, stopping: threading.Event, scheduler: Any) -> None:
    """READY=1 once uvicorn listens; then WATCHDOG=1 at half the watchdog period while healthy."""
    deadline = time.monotonic() + 60
    while not server.started and not stopping.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    if stopping.is_set() or not server.started:
        return
    url = _bound_url(server, settings.api.host)
    logger.warning("Learning Pilot listening on %s", url)
    sd_notify(f"READY=1\nSTATUS=listening on {url}\nMAINPID={os.getpid()}")
    interval = watchdog_interval_s()
    while not stopping.wait(interval or 3600):
        if interval and scheduler.running:
            sd_notify("WATCHDOG=1")
