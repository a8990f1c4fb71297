"""A local server that speaks the subset of the Vast.ai REST contract Learning Pilot uses.

It exists so that ``VastGpuProvider`` is tested through the real ``vastai`` client over real HTTP (tests and the
``--dry-run`` rehearsal), not through mocks. It follows the Vast.ai REST contract (endpoints, fields, rate
limits) as documented by Vast.ai.

Invariants:

- Instances really run: on reaching ``running`` the instance's entrypoint (``runtype: args``: ``onstart`` + ``args``;
  otherwise ``bash -c onstart``) runs as a local process in its own session, in a private directory, with exactly the
  ``env`` given at create (docker ``-p``-style keys dropped) plus PATH and the variables Vast sets
  (``CONTAINER_ID``...). Its exit moves the instance to ``exited``; ``status_msg`` says ``exited with code N``.
- Billing follows the Vast rules: storage (``storage_cost`` $/GB/month x disk / 720 per hour) for every second an
  instance exists and its host is online, in every state; GPU (``dph_base`` or the bid) only while ``running``.
  ``credit`` falls accordingly; at zero every instance is stopped.
- ``stop()`` kills every child process; ``live_instances()`` lists what was not destroyed, so a test can assert
  that nothing is left behind.

- Rate limits are ON by default (``rate_limits=False`` turns them off for unit tests that need speed): per endpoint
  and per identity (the API key, else the client address), the minimum intervals of the contract's §1.3 table
  (``RATE_LIMITS``), measured from the last request that was let through. A request inside the window answers 429
  with the body the contract documents for that endpoint (plain text, or JSON for create and destroy) and no
  Retry-After header. Search is "10 requests/minute per IP": a sliding 60 s window. Create's "penalty 12" is not
  modelled. The bulk destroy (``DELETE /api/v0/instances/``), absent from the table, gets the single destroy's 3 s.
- One clock (``clock``, a callable returning unix seconds, default ``time.time``) drives billing, boot times, log
  readiness and rate-limit windows, so a test can move time on without sleeping (``ShiftableClock``).
- ``latency_s`` delays every answer (real time), to measure what production's per-call latency costs.
- ``request_log`` records every request (method, path, query, status, clock time) for assertions, e.g. that a
  paginated list resumed at its ``after_token`` instead of restarting from page 1.

Fault switches (methods on the server): ``fail_next`` (any status, e.g. 429 bursts with no Retry-After and 5xx),
``slow_next``, ``stuck_loading``, ``oci_fail_next``, ``host_offline``, ``outbid``, ``create_false_next`` (create
answers ``success: false`` while the instance exists), ``take_offer`` (the offer is rented by someone else between
search and rent), ``bulk_destroy_leaves`` (a bulk destroy answers success but leaves some instances alive), and
``fail_every`` (every n-th matching request answers a status, e.g. a 429 on every third list page). Destroy answering
429 is ``fail_next(429, method="DELETE")``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_PRIVATE_V1_LIST = "/api/v1/instances/"
# Columns a v1 instance list may filter on; computed ones answer 400 like the real service.
_STORED_COLUMNS = {"id", "label", "actual_status", "intended_status", "cur_state", "gpu_name", "verification"}
_RESERVED_QUERY_KEYS = {
    "order",
    "type",
    "limit",
    "allocated_storage",
    "disable_bundling",
    "target_reliability",
    "extra_ids",
    "has_avx",
    "gpu_option",
    "show_incompatible",
    "sort_option",
    "template_id",
}
_SEARCH_CAP = 64
_PAGE_CAP = 25
# What an instance's process inherits from the machine it runs on (a rented host has its own; OMP_NUM_THREADS
# lets the tests keep three hosts on two cores from oversubscribing them).
_HOST_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "OMP_NUM_THREADS")


@dataclass(frozen=True)
class RateLimit:
    """One row of the contract's §1.3 table: ``method`` + ``path`` (a regex) at most once per ``interval_s``.

    ``burst`` > 1 makes it a sliding window instead: at most ``burst`` requests in any ``burst * interval_s``.
    ``body`` is the 429 answer: a string is sent as text/plain, a dict as JSON.
    """

    name: str
    method: str
    path: str
    interval_s: float
    body: str | dict[str, Any]
    burst: int = 1


def _too_frequent(threshold: float) -> str:
    return f"API requests too frequent endpoint threshold={threshold}"


# reference/vast-api.md §1.3 (x-rate-limit of the OpenAPI files), per endpoint and identity.
RATE_LIMITS: tuple[RateLimit, ...] = (
    RateLimit("search", "POST", r"/api/v0/bundles/?", 6.0, "API requests too frequent", burst=10),  # 10/min per IP
    RateLimit("create", "PUT", r"/api/v0/asks/\d+/?", 4.5, {"detail": _too_frequent(4.5)}),
    RateLimit("list", "GET", r"/api/v1/instances/?", 1.0, _too_frequent(1.0)),
    RateLimit("show", "GET", r"/api/v0/instances/\d+/?", 2.0, _too_frequent(2.0)),
    RateLimit("manage", "PUT", r"/api/v0/instances/\d+/?", 1.0, _too_frequent(1.0)),
    RateLimit(
        "destroy",
        "DELETE",
        r"/api/v0/instances/\d+/?",
        3.0,
        {"success": False, "error": "rate_limit_exceeded", "msg": _too_frequent(3.0)},
    ),
    RateLimit(  # not in the table: assumed to share the single destroy's threshold, as its own endpoint
        "bulk_destroy",
        "DELETE",
        r"/api/v0/instances/?",
        3.0,
        {"success": False, "error": "rate_limit_exceeded", "msg": _too_frequent(3.0)},
    ),
    RateLimit("command", "PUT", r"/api/v0/instances/command/\d+/?", 1.5, _too_frequent(1.5)),
    RateLimit("reboot", "PUT", r"/api/v0/instances/reboot/\d+/?", 1.0, _too_frequent(1.0)),
    RateLimit("bid_price", "PUT", r"/api/v0/instances/bid_price/\d+/?", 5.5, _too_frequent(5.5)),
    RateLimit("copy_direct", "PUT", r"/api/v0/commands/copy_direct/?", 3.5, _too_frequent(3.5)),
    RateLimit("invoices", "GET", r"/api/v1/invoices/?", 3.0, _too_frequent(3.0)),
    RateLimit("charges", "GET", r"/api/v0/charges/?", 1.0, _too_frequent(1.0)),
    RateLimit("secrets_post", "POST", r"/api/v0/secrets/?", 3.0, _too_frequent(3.0)),
    RateLimit("secrets_get", "GET", r"/api/v0/secrets/?", 5.0, _too_frequent(5.0)),
    RateLimit("ssh", "POST", r"/api/v0/ssh/?", 1.0, _too_frequent(1.0)),
)


class ShiftableClock:
    """Real time plus an offset that ``sleep`` advances instantly: share it between the server (``clock=``) and the
    provider (``sleep=``, ``clock=``) and backoffs, rate-limit windows, billing and boot all move on without waiting.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def __call__(self) -> float:
        return time.time() + self._offset

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self._offset += max(0.0, seconds)

    advance = sleep


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: Mapping[str, str]
    status: int
    at: float  # the server clock when the request arrived
    identity: str = ""


class _Limiter:
    """Per (endpoint, identity) windows over the server clock; called with the server lock held."""

    def __init__(self, limits: Iterable[RateLimit]) -> None:
        self.limits = [(limit, re.compile(limit.path)) for limit in limits]
        self._seen: dict[tuple[str, str], list[float]] = {}

    def check(self, method: str, path: str, identity: str, now: float) -> RateLimit | None:
        """The limit this request breaks (and must answer 429 for), or None after recording it as let through."""
        for limit, pattern in self.limits:
            if limit.method != method or not pattern.fullmatch(path):
                continue
            window = limit.interval_s * limit.burst
            times = [t for t in self._seen.get((limit.name, identity), []) if now - t < window]
            if len(times) >= limit.burst:
                self._seen[(limit.name, identity)] = times
                return limit
            self._seen[(limit.name, identity)] = [*times, now]
            return None
        return None


@dataclass
class _Rule:
    """One injected fault: answer ``status`` (or sleep ``delay_s``) for the next ``remaining`` matching requests."""

    remaining: int
    method: str | None
    path: str | None
    status: int | None = None
    body: str | None = None
    delay_s: float = 0.0
    after_handling: bool = False  # act on the request, then answer the failure (the answer is lost, not the act)
    every: int = 0  # > 0: only every n-th matching request fails (``fail_every``), ``remaining`` counts failures
    seen: int = 0
    skip: int = 0  # the first ``skip`` matching requests pass untouched (e.g. fail from the third list page on)

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (self.path is None or self.path in path)


@dataclass
class _Instance:
    id: int
    offer: dict[str, Any]
    label: str
    image: str
    env: dict[str, str]
    extra_env: list[list[str]]
    argv: list[str]
    onstart: str
    runtype: str
    disk: float
    bid: float | None
    api_key: str
    created_at: float
    directory: Path
    actual: str | None = None
    intended: str = "running"
    cur_state: str = "running"
    status_msg: str = ""
    running_at: float | None = None
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    stuck: bool = False
    oci_fail: bool = False
    host_offline: bool = False
    destroyed_at: float | None = None
    last_tick: float = 0.0
    gpu_usd: float = 0.0
    gpu_s: float = 0.0
    disk_usd: float = 0.0
    disk_s: float = 0.0

    @property
    def storage_dph(self) -> float:
        return float(self.offer.get("storage_cost", 0.0)) * self.disk / 720.0

    @property
    def gpu_dph(self) -> float:
        return self.bid if self.bid is not None else float(self.offer.get("dph_base", 0.0))


@dataclass
class _Logs:
    instance_id: int
    tail: int
    ready_at: float


class VastServer:
    """The local Vast server. Use as a context manager, or ``start()`` / ``stop()``; ``url`` is its base URL."""

    def __init__(
        self,
        offers: Iterable[Mapping[str, Any]],
        *,
        api_key: str = "test-key",
        loading_s: float = 0.2,
        credit: float = 100.0,
        workdir: Path | None = None,
        logs_delay_s: float = 0.2,
        page_cap: int = _PAGE_CAP,
        tick_s: float = 0.05,
        rate_limits: bool = True,
        limits: Iterable[RateLimit] = RATE_LIMITS,
        latency_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.rate_limits = rate_limits
        self.latency_s = latency_s
        self.clock = clock
        self._limiter = _Limiter(limits)
        self.request_log: list[RequestRecord] = []
        self._bulk_leaves: list[int | set[int]] = []
        self.loading_s = loading_s
        self.initial_credit = credit
        self.logs_delay_s = logs_delay_s
        self.page_cap = page_cap
        self.tick_s = tick_s
        self.offers: dict[int, dict[str, Any]] = {int(o["id"]): dict(o) for o in offers}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.create_bodies: list[dict[str, Any]] = []
        self.stuck_loading = False
        self._own_workdir = workdir is None
        self._workdir = Path(tempfile.mkdtemp(prefix="vast-server-")) if workdir is None else workdir
        self._instances: dict[int, _Instance] = {}
        self._logs: dict[str, _Logs] = {}
        self._rules: list[_Rule] = []
        self._next_id = 1000
        self._oci_next = 0
        self._create_false_next: list[bool] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._credit_exhausted = False

    # -- lifecycle ------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> VastServer:
        handler = type("_BoundHandler", (_Handler,), {"app": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        serve = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="vast-server", daemon=True
        )
        ticker = threading.Thread(target=self._tick_forever, name="vast-server-tick", daemon=True)
        self._threads = [serve, ticker]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            for inst in self._instances.values():
                _kill(inst)
        if self._own_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> VastServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault switches -------------------------------------------------------------------------------------
    def fail_next(
        self,
        status: int,
        count: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        body: str = "",
        after_handling: bool = False,
        skip: int = 0,
    ) -> None:
        """The next ``count`` matching requests answer ``status`` (429: Vast's plain text, no Retry-After).

        ``skip`` lets the first matching requests through first (a list that fails from its third page on).

        With ``after_handling`` the request is carried out first (an instance really gets created), and only the
        answer is the failure: the "create failed but the instance exists and bills" case.
        """
        if not body:
            body = (
                "API requests too frequent endpoint threshold=1.0"
                if status == 429
                else json.dumps({"success": False, "error": "server_error", "msg": f"injected {status}"})
            )
        with self._lock:
            self._rules.append(
                _Rule(count, method, path, status=status, body=body, after_handling=after_handling, skip=skip)
            )

    def slow_next(self, delay_s: float, count: int = 1, *, method: str | None = None, path: str | None = None) -> None:
        with self._lock:
            self._rules.append(_Rule(count, method, path, delay_s=delay_s))

    def fail_every(
        self, n: int, status: int = 429, *, count: int = 10_000, method: str | None = None, path: str | None = None
    ) -> None:
        """Every ``n``-th matching request (the n-th, 2n-th...) answers ``status``, up to ``count`` failures."""
        if n < 1:
            raise ValueError("n must be at least 1")
        body = (
            _too_frequent(1.0)
            if status == 429
            else json.dumps({"success": False, "error": "server_error", "msg": f"injected {status}"})
        )
        with self._lock:
            self._rules.append(_Rule(count, method, path, status=status, body=body, every=n))

    def bulk_destroy_leaves(self, leave: int | Iterable[int | str], *, times: int = 1) -> None:
        """The next ``times`` bulk destroys answer success but leave instances alive: the last ``leave`` requested
        ids (an int), or exactly the given ids."""
        spec: int | set[int] = leave if isinstance(leave, int) else {int(i) for i in leave}
        with self._lock:
            self._bulk_leaves.extend([spec] * times)

    def clear_faults(self) -> None:
        """Drop every pending injected answer and delay (not the instance-level faults already applied)."""
        with self._lock:
            self._rules.clear()
            self._bulk_leaves.clear()
            self.stuck_loading = False
            self._oci_next = 0
            self._create_false_next.clear()

    def oci_fail_next(self, count: int = 1) -> None:
        """The next created instances stop in ``created`` with an "OCI runtime create failed" status message."""
        with self._lock:
            self._oci_next += count

    def create_false_next(self, *, include_contract: bool = False) -> None:
        """The next create makes the instance but answers 200 ``success: false`` (with ``new_contract`` or not)."""
        with self._lock:
            self._create_false_next.append(include_contract)

    def take_offer(self, offer_id: int | str) -> None:
        """Someone else rents this offer (between our search and our rent)."""
        with self._lock:
            offer = self.offers[int(offer_id)]
            offer["rentable"], offer["rented_by_other"] = False, True

    def host_offline(self, instance_id: int | str) -> None:
        """The host disconnects: the job dies with it, status ``offline``, and neither GPU nor storage bills."""
        with self._lock:
            inst = self._instances[int(instance_id)]
            self._tick_one(inst, self.clock())
            _kill(inst)
            inst.host_offline, inst.actual, inst.status_msg = True, "offline", "host is offline"

    def outbid(self, instance_id: int | str) -> None:
        """An interruptible instance is outbid: processes killed, all three states ``stopped``, storage bills on."""
        with self._lock:
            inst = self._instances[int(instance_id)]
            self._tick_one(inst, self.clock())
            _kill(inst)
            inst.actual = inst.intended = inst.cur_state = "stopped"
            inst.status_msg = "outbid: stopped by a higher bid"

    def seed_instances(self, labels: Iterable[str], *, dph_base: float = 0.3, storage_cost: float = 0.1) -> list[int]:
        """Instances already on the account, ``running`` with no process (another deployment's, or many of ours for a
        benchmark), one per label; no offer is consumed and no request is logged. Returns their ids."""
        ids: list[int] = []
        with self._lock:
            now = self.clock()
            for label in labels:
                self._next_id += 1
                inst_id = self._next_id
                offer = {"id": -inst_id, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_base": dph_base}
                offer["storage_cost"] = storage_cost
                self._instances[inst_id] = _Instance(
                    id=inst_id,
                    offer=offer,
                    label=label,
                    image="seeded",
                    env={},
                    extra_env=[],
                    argv=[],
                    onstart="",
                    runtype="args",
                    disk=10.0,
                    bid=None,
                    api_key=secrets.token_hex(16),
                    created_at=now,
                    directory=self._workdir,
                    actual="running",
                    status_msg="success, running seeded",
                    running_at=now,
                    last_tick=now,
                )
                ids.append(inst_id)
        return ids

    # -- inspection -----------------------------------------------------------------------------------------
    def live_instances(self) -> list[int]:
        """Ids of instances not destroyed (whatever their state): what would still cost money."""
        with self._lock:
            return sorted(i.id for i in self._instances.values() if i.destroyed_at is None)

    def credit(self) -> float:
        with self._lock:
            self._tick_all()
            return self.initial_credit - sum(i.gpu_usd + i.disk_usd for i in self._instances.values())

    def instance_charges(self, instance_id: int | str) -> dict[str, float]:
        with self._lock:
            inst = self._instances[int(instance_id)]
            self._tick_one(inst, self.clock())
            return {"gpu": inst.gpu_usd, "disk": inst.disk_usd}

    def count_requests(self, method: str, path_prefix: str) -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and p.startswith(path_prefix))

    def requests_to(self, method: str, path: str) -> list[RequestRecord]:
        """Every request to exactly ``method`` ``path`` (trailing slash optional), in arrival order."""
        with self._lock:
            return [r for r in self.request_log if r.method == method and r.path.rstrip("/") == path.rstrip("/")]

    def rate_limited(self) -> int:
        """How many requests the rate limits answered 429 (injected 429s not counted)."""
        with self._lock:
            return sum(1 for r in self.request_log if r.status == 429 and r.identity != "injected")

    # -- the clock ------------------------------------------------------------------------------------------
    def _tick_forever(self) -> None:
        while not self._stop.wait(self.tick_s):
            with self._lock:
                self._tick_all()

    def _tick_all(self) -> None:
        now = self.clock()
        for inst in self._instances.values():
            self._tick_one(inst, now)
        if (
            not self._credit_exhausted
            and self.initial_credit - sum(i.gpu_usd + i.disk_usd for i in self._instances.values()) <= 0
        ):
            self._credit_exhausted = True
            for inst in self._instances.values():
                if inst.destroyed_at is None:
                    _kill(inst)
                    inst.actual = inst.intended = inst.cur_state = "stopped"
                    inst.status_msg = "stopped: account credit exhausted"

    def _tick_one(self, inst: _Instance, now: float) -> None:
        if inst.destroyed_at is not None:
            return
        dt = max(0.0, now - inst.last_tick)
        inst.last_tick = now
        if not inst.host_offline:
            inst.disk_s += dt
            inst.disk_usd += inst.storage_dph * dt / 3600.0
            if inst.actual == "running":
                inst.gpu_s += dt
                inst.gpu_usd += inst.gpu_dph * dt / 3600.0
        if inst.actual in (None, "created", "loading") and inst.intended == "running":
            self._advance_boot(inst, now)
        elif inst.actual == "running" and inst.proc is not None and (code := inst.proc.poll()) is not None:
            inst.exit_code, inst.actual = code, "exited"
            inst.status_msg = f"exited with code {code}"

    def _advance_boot(self, inst: _Instance, now: float) -> None:
        age = now - inst.created_at
        if inst.oci_fail:
            inst.actual = "created"
            inst.status_msg = (
                "Error response from daemon: failed to create task for container: OCI runtime create failed: "
                "runc create failed: unable to start container process: error during container init"
            )
            return
        if age < self.loading_s / 4:
            return
        if inst.stuck or age < self.loading_s:
            inst.actual, inst.status_msg = "loading", f"Pulling image {inst.image}"
            return
        self._start_process(inst, now)

    def _start_process(self, inst: _Instance, now: float) -> None:
        env = {k: os.environ[k] for k in _HOST_ENV if k in os.environ}
        env.update(inst.env)
        env.update(
            CONTAINER_ID=str(inst.id),
            CONTAINER_API_KEY=inst.api_key,
            VAST_CONTAINERLABEL=f"C.{inst.id}",
            GPU_COUNT=str(inst.offer.get("num_gpus", 1)),
            DATA_DIRECTORY=str(inst.directory),
            HOME=str(inst.directory),
        )
        with (inst.directory / "output.log").open("ab") as log:
            inst.proc = subprocess.Popen(
                inst.argv,
                cwd=inst.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        inst.actual, inst.running_at = "running", now
        inst.status_msg = f"success, running {inst.image}"

    # -- handlers (called with the lock held) ---------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: Any, key: str | None) -> tuple[int, Any]:
        self._tick_all()
        if path in ("/api/v0/instances/", "/api/v0/instances") and method == "DELETE":
            if key is None:
                return 403, _err("auth_error", "This action requires login.")
            if key != self.api_key:
                return 401, _err("auth_error", "Invalid user key")
            return self._bulk_destroy(body if isinstance(body, dict) else {})
        if path in ("/api/v0/instances/", "/api/v0/instances"):
            return 410, _err("deprecated_endpoint", "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead.")
        if path.startswith("/_logs/") and method == "GET":
            return self._get_logs(path.removeprefix("/_logs/"))
        if path == "/api/v0/gpu_names/unique/":
            return 200, {"gpu_names": sorted({str(o["gpu_name"]) for o in self.offers.values()})}
        if path == "/api/v0/bundles/" and method == "POST":  # search may be anonymous
            if key is not None and key != self.api_key:
                return 404, _err("auth_error", "Invalid user key")
            return 200, {"offers": self._search(body if isinstance(body, dict) else {})}
        if key is None:
            return 403, _err("auth_error", "This action requires login.")
        if key != self.api_key:
            return 401, _err("auth_error", "Invalid user key")
        if (m := re.fullmatch(r"/api/v0/asks/(\d+)/", path)) and method == "PUT":
            return self._create(int(m.group(1)), body if isinstance(body, dict) else {})
        if path == _PRIVATE_V1_LIST and method == "GET":
            return self._list(query)
        if (m := re.fullmatch(r"/api/v0/instances/request_logs/(\d+)/", path)) and method == "PUT":
            return self._request_logs(int(m.group(1)), body if isinstance(body, dict) else {})
        if m := re.fullmatch(r"/api/v0/instances/(\d+)/", path):
            return self._one_instance(method, int(m.group(1)), body if isinstance(body, dict) else {})
        if path.rstrip("/") == "/api/v0/users/current" and method == "GET":
            credit = self.initial_credit - sum(i.gpu_usd + i.disk_usd for i in self._instances.values())
            return 200, {
                "id": 1,
                "username": "pilot",
                "email": "pilot@example.com",
                "credit": credit,
                "balance": credit,
            }
        if path == "/api/v0/charges/" and method == "GET":
            return self._charges(query)
        return 404, _err("not_found", f"no route {method} {path}")

    def _priced(self, offer: dict[str, Any], storage_gb: float, offer_type: str) -> dict[str, Any]:
        row = dict(offer)
        row.pop("rented_by_other", None)
        storage_total = float(row.get("storage_cost", 0.0)) * storage_gb / 720.0
        base = float(row["min_bid"]) if offer_type == "bid" else float(row["dph_base"])
        row["storage_total_cost"] = storage_total
        row["dph_total"] = base + storage_total
        row["is_bid"] = offer_type == "bid"
        row["search"] = {"gpuCostPerHour": base, "diskHour": storage_total, "totalHour": base + storage_total}
        return row

    def _search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        offer_type = "bid" if body.get("type") in ("bid", "interruptible") else "on-demand"
        storage = float(body.get("allocated_storage") or 5.0)
        filters = {k: v for k, v in body.items() if k not in _RESERVED_QUERY_KEYS and isinstance(v, dict)}
        rows = [self._priced(o, storage, offer_type) for o in self.offers.values()]
        rows = [r for r in rows if matches(_search_view(r), filters)]
        order = body.get("order") or [["score", "desc"]]
        rows = sort_rows(rows, [(str(f), str(d)) for f, d in order])
        limit = min(int(body.get("limit") or _SEARCH_CAP), _SEARCH_CAP)
        return rows[:limit]

    def _create(self, offer_id: int, body: dict[str, Any]) -> tuple[int, Any]:
        self.create_bodies.append(body)
        offer = self.offers.get(offer_id)
        if offer is None:
            return 404, _err("no_such_ask", f"Instance type by id {offer_id} is not available.", ask_id=offer_id)
        if not offer.get("rentable", True):
            status = 410 if body.get("cancel_unavail") else 404
            return status, _err(
                "no_such_ask", f"Instance type by id {offer_id} is no longer available.", ask_id=offer_id
            )
        price = body.get("price")
        bid = float(price) if price is not None else None
        runtype = str(body.get("runtype") or "ssh")
        onstart = str(body.get("onstart") or "")
        raw_env = body.get("env") or {}
        env = {str(k): str(v) for k, v in raw_env.items() if not str(k).startswith("-")}
        if runtype == "args":
            argv = [*shlex.split(onstart or "/bin/sh"), *[str(a) for a in body.get("args") or []]]
        else:
            argv = ["bash", "-c", onstart or "true"]
        self._next_id += 1
        inst_id = self._next_id
        directory = self._workdir / "instances" / str(inst_id)
        directory.mkdir(parents=True)
        now = self.clock()
        inst = _Instance(
            id=inst_id,
            offer=self._priced(offer, float(body.get("disk") or 10), "bid" if bid is not None else "on-demand"),
            label=str(body.get("label") or ""),
            image=str(body.get("image") or ""),
            env=env,
            extra_env=[[str(k), str(v)] for k, v in raw_env.items()],
            argv=argv,
            onstart=onstart,
            runtype=runtype,
            disk=float(body.get("disk") or 10),
            bid=bid,
            api_key=secrets.token_hex(16),
            created_at=now,
            directory=directory,
            last_tick=now,
            stuck=self.stuck_loading,
        )
        if self._oci_next > 0:
            self._oci_next -= 1
            inst.oci_fail = True
        self._instances[inst_id] = inst
        offer["rentable"] = False
        if bid is not None and bid < float(offer.get("min_bid", 0.0)):
            inst.actual = inst.intended = inst.cur_state = "stopped"
            inst.status_msg = "bid below the current minimum; instance created stopped"
            return 200, _err("invalid_price", "Your bid is below the minimum.", new_contract=inst_id)
        if self._create_false_next:
            include = self._create_false_next.pop(0)
            extra = {"new_contract": inst_id} if include else {}
            return 200, _err("create_failed", "Instance creation failed, please retry.", **extra)
        return 200, {"success": True, "new_contract": inst_id, "instance_api_key": inst.api_key}

    def _row(self, inst: _Instance) -> dict[str, Any]:
        offer = inst.offer
        running = inst.actual == "running"
        gpu_now = inst.gpu_dph if running else 0.0
        storage_now = 0.0 if inst.host_offline else inst.storage_dph
        row: dict[str, Any] = {
            key: offer.get(key)
            for key in (
                "num_gpus",
                "gpu_name",
                "gpu_ram",
                "gpu_totalram",
                "cuda_max_good",
                "machine_id",
                "host_id",
                "geolocation",
                "verification",
                "hosting_type",
                "reliability2",
                "storage_cost",
                "inet_up_cost",
                "inet_down_cost",
                "dph_base",
                "min_bid",
                "dlperf",
                "total_flops",
            )
        }
        row.update(
            id=inst.id,
            bundle_id=offer.get("bundle_id", offer.get("id")),
            actual_status=inst.actual,
            intended_status=inst.intended,
            cur_state=inst.cur_state,
            next_state=inst.cur_state,
            status_msg=inst.status_msg,
            label=inst.label or None,
            image_uuid=inst.image,
            image_runtype=inst.runtype,
            image_args=inst.argv[1:] if inst.runtype == "args" else [],
            onstart=inst.onstart,
            extra_env=inst.extra_env,
            start_date=inst.created_at,
            end_date=offer.get("end_date"),
            disk_space=inst.disk,
            is_bid=inst.bid is not None,
            dph_total=inst.gpu_dph + inst.storage_dph,
            storage_total_cost=inst.storage_dph,
            ssh_host="ssh1.vast.ai" if running else None,
            ssh_port=20000 + inst.id % 10000 if running else None,
            public_ipaddr="127.0.0.1" if running else None,
            instance={"gpuCostPerHour": gpu_now, "diskHour": storage_now, "totalHour": gpu_now + storage_now},
            search=offer.get("search"),
        )
        if running:
            row["ports"] = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(40000 + inst.id % 10000)}]}
        return row

    def _list(self, query: dict[str, str]) -> tuple[int, Any]:
        try:
            filters = json.loads(query.get("select_filters") or "{}")
            order_by = json.loads(query.get("order_by") or '[{"col": "id", "dir": "asc"}]')
            limit = int(query.get("limit") or 25)
        except ValueError:
            return 400, _err("invalid_request", "malformed query parameters")
        if bad := set(filters) - _STORED_COLUMNS:
            return 400, _err("invalid_request", f"cannot filter on computed columns {sorted(bad)}")
        limit = 5 if limit <= 0 else min(limit, self.page_cap)
        rows = [self._row(i) for i in self._instances.values() if i.destroyed_at is None]
        rows = [r for r in rows if matches(r, filters)]
        order = [(str(o["col"]), str(o.get("dir", "asc"))) for o in order_by] + [("id", "asc")]
        rows = sort_rows(rows, order)
        by_id = [c for c, _ in order[:-1]] in ([], ["id"]) and order[0][1] == "asc"
        start = 0
        if token := query.get("after_token"):
            try:
                cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
            except ValueError:
                return 400, _err("invalid_token", "bad after_token")
            # Keyset paging on id, so an instance destroyed between pages never makes a live one skip a page.
            start = (
                next((n for n, r in enumerate(rows) if r["id"] > cursor["after_id"]), len(rows))
                if by_id
                else int(cursor["offset"])
            )
        page = rows[start : start + limit]
        next_token = None
        if start + limit < len(rows) and page:
            cursor = {"after_id": page[-1]["id"]} if by_id else {"offset": start + limit}
            next_token = base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()
        labels: dict[str, int] = {}
        for r in rows:
            labels[r["label"] or ""] = labels.get(r["label"] or "", 0) + 1
        return 200, {
            "success": True,
            "instances_found": len(page),
            "total_instances": len(rows),
            "label_counts": labels,
            "next_token": next_token,
            "instances": page,
        }

    def _one_instance(self, method: str, inst_id: int, body: dict[str, Any]) -> tuple[int, Any]:
        inst = self._instances.get(inst_id)
        live = inst is not None and inst.destroyed_at is None
        if method == "GET":
            return 200, {"instances": self._row(inst) if inst is not None and live else None}
        if inst is None or not live:
            return 404, _err("no_such_instance", f"Instance {inst_id} not found.")
        if method == "DELETE":
            assert inst is not None
            self._destroy(inst)
            return 200, {"success": True, "msg": f"destroying instance {inst_id}."}
        if method == "PUT":
            if "label" in body:
                inst.label = str(body["label"])
                return 200, {"success": True, "msg": f"label for {inst_id} set to '{inst.label}'"}
            if body.get("state") == "stopped":
                self._tick_one(inst, self.clock())
                _kill(inst)
                inst.intended = inst.cur_state = "stopped"
                inst.actual = "exited"
                return 200, {"success": True}
            if body.get("state") == "running":
                return 200, {
                    "success": True,
                    "msg": "Required resources are currently unavailable, state change queued",
                }
            return 400, _err("invalid_args", "state or label required")
        return 405, _err("invalid_request", f"{method} not allowed")

    def _destroy(self, inst: _Instance) -> None:
        now = self.clock()
        self._tick_one(inst, now)
        _kill(inst)
        inst.destroyed_at, inst.cur_state = now, "unloaded"
        offer = self.offers.get(int(inst.offer["id"]))
        if offer is not None and not offer.get("rented_by_other"):
            offer["rentable"] = True

    def _bulk_destroy(self, body: dict[str, Any]) -> tuple[int, Any]:
        """``DELETE /api/v0/instances/`` ``{"instance_ids": [...]}`` (§2.5): unknown or destroyed ids are skipped."""
        raw = body.get("instance_ids")
        if not isinstance(raw, list) or not raw:
            return 400, _err("invalid_args", "instance_ids must be a non-empty list")
        try:
            ids = [int(i) for i in raw]
        except (TypeError, ValueError):
            return 400, _err("invalid_args", "instance_ids must be integers")
        leave: set[int] = set()
        if self._bulk_leaves:
            spec = self._bulk_leaves.pop(0)
            leave = (set(ids[-spec:]) if spec > 0 else set()) if isinstance(spec, int) else spec
        destroyed = []
        for inst_id in ids:
            inst = self._instances.get(inst_id)
            if inst is None or inst.destroyed_at is not None or inst_id in leave:
                continue
            self._destroy(inst)
            destroyed.append(inst_id)
        return 200, {"success": True, "msg": f"destroying {len(destroyed)} instances."}

    def _request_logs(self, inst_id: int, body: dict[str, Any]) -> tuple[int, Any]:
        inst = self._instances.get(inst_id)
        if inst is None or inst.destroyed_at is not None:
            return 404, _err("invalid_id", "Invalid instance id.")
        token = secrets.token_hex(8)
        self._logs[token] = _Logs(inst_id, int(body.get("tail") or 1000), self.clock() + self.logs_delay_s)
        return 200, {"success": True, "result_url": f"{self.url}/_logs/{token}.log", "msg": "logs requested"}

    def _get_logs(self, name: str) -> tuple[int, Any]:
        request = self._logs.get(name.removesuffix(".log"))
        if request is None or self.clock() < request.ready_at:
            return 404, "not uploaded yet"
        log = self._instances[request.instance_id].directory / "output.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return 200, "\n".join(lines[-request.tail :]) + "\n"

    def _charges(self, query: dict[str, str]) -> tuple[int, Any]:
        try:
            day = json.loads(query.get("select_filters") or "{}").get("day") or {}
            lo, hi = float(day["gte"]), float(day["lte"])
        except (ValueError, KeyError, TypeError):
            return 400, _err("invalid_request", "Must provide both 'day' gte and lte filters for instance charges")
        results: list[dict[str, Any]] = []
        total = 0.0
        now = self.clock()
        for inst in sorted(self._instances.values(), key=lambda i: i.id):
            end = inst.destroyed_at or now
            if end < lo or inst.created_at > hi:
                continue
            items = [
                _charge_item("gpu", inst.gpu_s, inst.gpu_dph, inst.gpu_usd),
                _charge_item("disk", inst.disk_s, inst.storage_dph, inst.disk_usd),
                {"type": "bwd", "description": "0.000 GB downloaded", "amount": 0.0},
                {"type": "bwu", "description": "0.000 GB uploaded", "amount": 0.0},
            ]
            total += inst.gpu_usd + inst.disk_usd
            results.append(
                {
                    "start": inst.created_at,
                    "end": end,
                    "type": "instance",
                    "source": f"instance-{inst.id}",
                    "description": f"Instance {inst.id} Charges",
                    "amount": inst.gpu_usd + inst.disk_usd,
                    "metadata": {"label": inst.label},
                    "items": items,
                }
            )
        return 200, {"success": True, "count": len(results), "total": total, "next_token": None, "results": results}

    # -- faults ---------------------------------------------------------------------------------------------
    def take_rule(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.matches(method, path):
                    if rule.skip > 0:
                        rule.skip -= 1
                        continue
                    if rule.every:
                        rule.seen += 1
                        if rule.seen % rule.every:
                            continue
                    rule.remaining -= 1
                    return rule
            self._rules = [r for r in self._rules if r.remaining > 0]
            return None


def _search_view(row: dict[str, Any]) -> dict[str, Any]:
    """The offer as the query language sees it: ``verified`` is ``verification == "verified"``, and so on."""
    view = dict(row)
    view["verified"] = row.get("verification") == "verified"
    view["rented"] = not row.get("rentable", True)
    view.setdefault("external", False)
    view["datacenter"] = row.get("hosting_type") == 1
    geo = str(row.get("geolocation") or "")
    view["geolocation"] = geo[-2:] if len(geo) >= 2 else geo
    view.setdefault("reliability", row.get("reliability2"))
    return view


def _charge_item(kind: str, seconds: float, rate: float, amount: float) -> dict[str, Any]:
    return {"type": kind, "description": f"{seconds / 3600:.6f} hours at ${rate:.4f}/hour", "amount": amount}


def _err(error: str, msg: str, **extra: Any) -> dict[str, Any]:
    return {"success": False, "error": error, "msg": msg, **extra}


def _kill(inst: _Instance) -> None:
    """Stop the instance's process group: SIGTERM, a short grace, then SIGKILL; always reaped."""
    proc = inst.proc
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    app: VastServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return  # tests read server.requests instead of stderr noise

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        app = self.app
        if app.latency_s:
            time.sleep(app.latency_s)
        auth = self.headers.get("Authorization") or ""
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else query.get("api_key")
        identity = key or f"ip:{self.client_address[0]}"
        with app._lock:
            app.requests.append((method, parts.path))
            record = RequestRecord(method, parts.path, query, 0, app.clock(), identity)
            app.request_log.append(record)
        rule = app.take_rule(method, parts.path)
        if rule is not None and rule.delay_s:
            time.sleep(rule.delay_s)
        elif rule is not None and rule.status is not None and not rule.after_handling:
            self._answer(record, rule.status, rule.body or "", injected=True)
            return
        if app.rate_limits:
            with app._lock:
                broken = app._limiter.check(method, parts.path, identity, record.at)
            if broken is not None:
                self._answer(record, 429, broken.body)
                return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._answer(record, 400, _err("invalid_request", "Invalid json body"))
            return
        with app._lock:
            status, payload = app.handle(method, parts.path, query, body, key)
        injected = False
        if rule is not None and rule.status is not None:
            status, payload, injected = rule.status, rule.body or "", True
        self._answer(record, status, payload, injected=injected)

    def _answer(self, record: RequestRecord, status: int, payload: Any, *, injected: bool = False) -> None:
        app = self.app
        with app._lock:
            done = RequestRecord(
                record.method, record.path, record.query, status, record.at, "injected" if injected else record.identity
            )
            index = next((n for n in range(len(app.request_log) - 1, -1, -1) if app.request_log[n] is record), None)
            if index is not None:
                app.request_log[index] = done
        self._send(status, payload)

    def _send(self, status: int, payload: Any) -> None:
        if isinstance(payload, str):
            data, ctype = payload.encode(), "text/plain"
        else:
            # Exactly "application/json": the vastai CLI path rejects any "; charset=..." suffix.
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


def load_offer_book(path: Path) -> list[dict[str, Any]]:
    """Offers from a JSON file shaped like a search answer (``{"offers": [...]}``) or a bare list."""
    data = json.loads(path.read_text())
    offers = data["offers"] if isinstance(data, dict) else data
    return [dict(o) for o in offers]


# -- the query language (search filters and v1 select_filters) ---------------------------------------------
def _coerce(value: Any) -> Any:
    """Clients send numbers as strings ("0.98"); the service compares them as numbers."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op in ("in", "notin"):
        values = expected if isinstance(expected, list) else [expected]
        hit = any(bool(_coerce(actual) == _coerce(v)) for v in values)
        return hit if op == "in" else not hit
    a, b = _coerce(actual), _coerce(expected)
    if op == "eq":
        return bool(a == b)
    if op == "neq":
        return bool(a != b)
    if not isinstance(a, float) or not isinstance(b, float):
        return False
    match op:
        case "gt":
            return a > b
        case "gte":
            return a >= b
        case "lt":
            return a < b
        case "lte":
            return a <= b
    return False


def matches(row: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Whether ``row`` passes every ``{field: {op: value}}`` filter (an unknown op matches nothing)."""
    return all(
        _compare(row.get(name), op, value)
        for name, ops in filters.items()
        if isinstance(ops, dict)
        for op, value in ops.items()
    )


def sort_rows(rows: list[dict[str, Any]], order: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Sort by ``[(field, "asc"|"desc"), ...]``; missing values last whatever the direction."""
    out = list(rows)
    for name, direction in reversed(order):
        present = [r for r in out if r.get(name) is not None]
        missing = [r for r in out if r.get(name) is None]
        present.sort(key=lambda r: _sort_key(r[name]), reverse=direction == "desc")
        out = present + missing
    return out


def _sort_key(value: Any) -> tuple[int, float, str]:
    coerced = _coerce(value)
    if isinstance(coerced, float | bool):
        return (0, float(coerced), "")
    return (1, 0.0, str(coerced))
