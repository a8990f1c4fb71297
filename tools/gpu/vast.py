"""The Vast.ai GPU provider, on the real ``vastai`` client (the only module that imports it).

Invariants:

- Every ``requests``/``vastai`` failure is translated here (``raise X(...) from exc``): 429, 5xx, timeouts and
  connection errors -> ``ProviderUnavailable``; an offer gone (404/410 ``no_such_ask``) -> ``OfferUnavailable``;
  create refused -> ``LaunchFailed``; anything else -> ``ProviderError``. A 200 answer with ``success: false`` is a
  failure too.
- 429 carries no Retry-After: we back off exponentially with jitter (``backoff_base_s`` x 2^n, capped at
  ``backoff_max_s``, then a random 50-100 % of that), through the injectable ``sleep``. Reads and destroys also
  retry 5xx and timeouts. Create retries only 429 (the request was refused before it was processed); after any other
  failure an instance may exist, so every instance carrying our label is destroyed *before* the error is raised.
  The same cleanup runs when create answers ``success: false``; then ``LaunchFailed`` is raised.
- Calls are paced per endpoint to the contract's minimum intervals (``VAST_MIN_INTERVALS``, reference/vast-api.md
  §1.3: destroy 3 s, list 1 s, show 2 s, create 4.5 s...), so a burst of our own calls does not earn 429s; a 429
  still waits at least the endpoint's interval. Pacing and backoff go through the injectable ``sleep``/``clock``.
- ``terminate`` is idempotent (unknown id, ``no_such_instance``: fine) and never reports "destroyed" on a 429: it
  retries, and raises ``ProviderUnavailable`` if the instance may still exist.
- ``terminate_many`` is one bulk destroy (``DELETE /api/v0/instances/`` ``{"instance_ids": [...]}``, §2.5) verified by
  ONE paginated list of those ids; single destroys only for what the bulk call did not remove; rounds repeat with
  backoff until the deadline (not a fixed count). It reports each id gone or not (and why); it never raises.
- Listing pages ``GET /api/v1/instances/`` itself: each page is retried on its own (backoff, until the list's
  deadline), resuming at its ``after_token``, never restarting from page 1. A list that cannot be completed by its
  deadline raises ``ProviderUnavailable``: never an empty or partial list taken as complete.
- Many instances are polled with ONE paginated ``GET /api/v1/instances/`` (``poll_many``), never N single GETs.
- The Vast API key never leaves this process: ``launch`` refuses a spec whose env, script, image or label contains
  it. The host gets only what the spec says (presigned URLs, not credentials).
- The job runs as the container's entrypoint (``runtype: args``; ``/bin/bash -c <script>``), so the container exits
  when the job does, and ``poll`` reports ``EXITED``.
"""

from __future__ import annotations

import logging
import random
import re
import shlex
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
from vastai import VastAI
from vastai.api import instances as vast_instances

from tools.errors import LaunchFailed, OfferUnavailable, ProviderError, ProviderUnavailable
from tools.gpu.base import (
    GpuProvider,
    Instance,
    InstanceState,
    LaunchSpec,
    Offer,
    OfferRequirements,
    TerminateReport,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_IMAGE = "pytorch/pytorch:2.4.1-cuda12.4-cudnn9-runtime"
# create_instance.yaml: args + args_str + onstart <= 4096 characters.
MAX_ENTRYPOINT_CHARS = 4096
_LOADING_STATES = {None, "", "created", "loading", "rebooting", "starting", "restarting", "scheduling"}
_EXIT_CODE = re.compile(r"exit(?:ed)?(?: with)?(?: code)?[ (]+(-?\d+)", re.IGNORECASE)
_PACE_MARGIN_S = 0.05
_PAGE_LIMIT = 25  # the v1 list's maximum page size (show_instances.yaml)
_MAX_PAGES = 10_000  # a safety bound on a paginated list (250,000 instances), not a retry budget
# Names or ids in one ``in`` filter: the filter travels in the query string (labels <= 128 chars: ~5 KB encoded).
_MAX_LABELS_PER_QUERY = 25
_MAX_IDS_PER_QUERY = 200

# Minimum seconds between two calls to one endpoint with one key: reference/vast-api.md §1.3 (x-rate-limit).
# Search is "10 requests/minute per IP": not paced (a search is rare), a 429 on it waits 6 s.
# The bulk destroy is not in the table: paced like the single destroy.
VAST_MIN_INTERVALS: Mapping[str, float] = {
    "create": 4.5,
    "list": 1.0,
    "show": 2.0,
    "manage": 1.0,
    "destroy": 3.0,
    "bulk_destroy": 3.0,
    "charges": 1.0,
}
_RETRY_FLOOR_S: Mapping[str, float] = {**VAST_MIN_INTERVALS, "search": 6.0}


@dataclass(frozen=True)
class VastAccount:
    username: str
    credit: float  # spendable dollars (falls back to ``balance`` when the answer has no ``credit``)
    balance: float


@dataclass(frozen=True)
class InstanceCharge:
    instance_id: str
    label: str
    amount_usd: float
    items: Mapping[str, float] = field(default_factory=dict)  # gpu, disk, bwd, bwu -> dollars
    start: float | None = None
    end: float | None = None


def offer_from_row(row: Mapping[str, Any]) -> Offer:
    """An ``Offer`` from one Vast search row (``gpu_ram`` is MiB per GPU; costs as Vast quotes them)."""
    min_bid = row.get("min_bid")
    return Offer(
        id=str(row["id"]),
        gpu_name=str(row.get("gpu_name", "")),
        num_gpus=int(row.get("num_gpus") or 1),
        gpu_ram_gb=float(row.get("gpu_ram") or 0) / 1024,
        dph_total=float(row.get("dph_total") or 0),
        storage_cost_per_gb_month=float(row.get("storage_cost") or 0),
        inet_down_cost_per_gb=float(row.get("inet_down_cost") or 0),
        inet_up_cost_per_gb=float(row.get("inet_up_cost") or 0),
        reliability=float(row.get("reliability2") or row.get("reliability") or 0),
        cuda_max_good=float(row.get("cuda_max_good") or 0),
        inet_down_mbps=float(row.get("inet_down") or 0),
        disk_gb=float(row.get("disk_space") or 0),
        tflops=float(row.get("total_flops") or 0),
        dlperf=float(row.get("dlperf") or 0),
        min_bid=float(min_bid) if min_bid is not None else None,
        verified=row.get("verification") == "verified",
        raw=dict(row),
    )


def instance_from_row(row: Mapping[str, Any]) -> Instance:
    """Map a Vast instance row (actual_status / intended_status / cur_state / status_msg) to an ``Instance``."""
    actual = row.get("actual_status")
    intended = row.get("intended_status")
    cur_state = row.get("cur_state")
    msg = str(row.get("status_msg") or "")
    exit_code: int | None = None
    if cur_state == "unloaded":
        state = InstanceState.GONE  # destroyed; the row lingers until the destroy completes
    elif actual in ("offline", "unknown"):
        state = InstanceState.STOPPED
        msg = msg or f"host {actual}"
    elif actual == "created" and "OCI runtime create failed" in msg:
        state = InstanceState.EXITED  # the container never started; it never will on this host
    elif intended == "stopped" or cur_state == "stopped" or actual in ("stopped", "frozen"):
        state = InstanceState.STOPPED  # outbid, stopped, out of credit: storage still bills
    elif actual == "exited":
        state = InstanceState.EXITED
        if found := _EXIT_CODE.search(msg):
            exit_code = int(found.group(1))
    elif actual == "running":
        state = InstanceState.RUNNING
    elif actual in _LOADING_STATES:
        state = InstanceState.LOADING
    else:
        state = InstanceState.LOADING
        msg = msg or f"unrecognised Vast status {actual!r}"
    start = row.get("start_date")
    return Instance(
        id=str(row["id"]),
        label=str(row.get("label") or ""),
        state=state,
        exit_code=exit_code,
        dph_total=float(row.get("dph_total") or 0),
        started_at=float(start) if isinstance(start, int | float) else None,
        detail=msg,
    )


@dataclass(frozen=True)
class _View:
    """What one look at the account found: live rows by id, and every label's instance count."""

    rows: dict[str, dict[str, Any]]
    labels: Mapping[str, int]


class _PastDeadline(ProviderUnavailable):
    """A paced call that could not be sent before its deadline (nothing was sent)."""


def _label(row: Mapping[str, Any]) -> str:
    return str(row.get("label") or "")


def _new_found(pending: Iterable[str], why: Mapping[str, str]) -> bool:
    return any(why.get(i, "").startswith("found on the account") for i in pending)


def _vast_id(instance_id: str) -> int | None:
    return int(instance_id) if instance_id.isdigit() else None


class VastGpuProvider(GpuProvider):
    name = "vast"

    def __init__(
        self,
        api_key: str,
        *,
        api_url: str = "https://console.vast.ai",
        image: str = DEFAULT_IMAGE,
        retry_attempts: int = 5,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        request_timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_intervals: Mapping[str, float] | None = None,
        list_deadline_s: float = 60.0,
    ) -> None:
        """``retry_attempts`` bounds the retries of one ordinary call; listing and ``terminate_many`` retry until a
        deadline instead (``list_deadline_s``, ``deadline_s``). ``min_intervals`` (default ``VAST_MIN_INTERVALS``;
        ``{}`` for none) paces our calls per endpoint; ``clock`` (seconds, any origin) measures windows and deadlines.
        """
        if not api_key:
            raise ValueError("a Vast API key is required")
        if retry_attempts < 1:
            raise ValueError("retry_attempts must be at least 1")
        self._api_key = api_key
        # retry=1: one HTTP attempt per call; this class owns retries (the client's own ignore jitter and caps).
        self._client = VastAI(api_key=api_key, server_url=api_url.rstrip("/"), retry=1)
        self._client.client.timeout = request_timeout_s
        self.image = image
        self.retry_attempts = retry_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self._skew = 0.0  # waits that returned early, still counted as time spent (see ``_wait``)
        self.min_intervals = dict(VAST_MIN_INTERVALS if min_intervals is None else min_intervals)
        # A 429 waits at least the endpoint's window (search: 6 s, its 10/min); custom intervals replace the floors.
        self._retry_floors = dict(_RETRY_FLOOR_S if min_intervals is None else min_intervals)
        self.list_deadline_s = list_deadline_s
        self._next_slot: dict[str, float] = {}
        self._pace_lock = threading.Lock()
        self._offer_prices: dict[str, float] = {}

    def __repr__(self) -> str:  # never print the key
        return f"VastGpuProvider(api_url={self._client.client.server_url!r})"

    # -- offers ---------------------------------------------------------------------------------------------
    def search_offers(self, requirements: OfferRequirements, *, limit: int = 64) -> list[Offer]:
        query: dict[str, Any] = {
            "external": {"eq": False},
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "num_gpus": {"eq": requirements.num_gpus},
            "gpu_ram": {"gte": requirements.min_gpu_ram_gb * 1024},
            "disk_space": {"gte": requirements.min_disk_gb},
        }
        if requirements.verified:
            query["verified"] = {"eq": True}
        if requirements.min_cuda:
            query["cuda_max_good"] = {"gte": requirements.min_cuda}
        if requirements.min_reliability:
            query["reliability"] = {"gte": requirements.min_reliability}
        if requirements.min_inet_down_mbps:
            query["inet_down"] = {"gte": requirements.min_inet_down_mbps}
        if requirements.max_dph is not None:
            query["dph_total"] = {"lte": requirements.max_dph}
        rows = self._call(
            "search offers",
            endpoint="search",
            fn=lambda: self._client.search_offers(
                query=query,
                type="bid" if requirements.interruptible else "on-demand",
                order="dph_total",
                limit=min(limit, 64),
                storage=requirements.min_disk_gb,  # price storage for the disk we will ask for
                no_default=True,
            ),
        )
        offers = [offer_from_row(r) for r in rows or []]
        for offer in offers:
            self._offer_prices[offer.id] = offer.dph_total
        return offers

    # -- lifecycle ------------------------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Instance:
        if not spec.offer_id or not spec.offer_id.isdigit():
            raise OfferUnavailable(f"not a Vast offer id: {spec.offer_id!r}")
        script = spec.onstart or shlex.join(spec.command)
        if not script:
            raise LaunchFailed(f"nothing to run for {spec.label}: no command and no onstart")
        if len(script) + len("/bin/bash -c") > MAX_ENTRYPOINT_CHARS:
            raise LaunchFailed(f"the entrypoint for {spec.label} is longer than Vast's {MAX_ENTRYPOINT_CHARS} chars")
        self._refuse_api_key(spec, script)
        offer_id = int(spec.offer_id)

        def create() -> Any:
            return self._client.create_instance(
                offer_id,
                image=spec.image or self.image,
                disk=spec.disk_gb,
                env=dict(spec.env),
                price=spec.bid_price,
                label=spec.label,
                onstart_cmd="/bin/bash",
                args=["-c", script],
                runtype="args",
                cancel_unavail=True,
            )

        try:
            answer = self._call(
                "create instance", create, endpoint="create", idempotent=False, gone=OfferUnavailable, check=False
            )
        except OfferUnavailable:
            raise
        except ProviderError:
            # The answer was lost after the request may have been acted on: no paid instance may stay behind.
            self._destroy_label(spec.label)
            raise
        contract = answer.get("new_contract") if isinstance(answer, dict) else None
        if not isinstance(answer, dict) or answer.get("success") is False or contract is None:
            if contract is not None:
                self._destroy_quietly(str(contract))
            self._destroy_label(spec.label)
            error = answer.get("error") if isinstance(answer, dict) else None
            msg = answer.get("msg") if isinstance(answer, dict) else answer
            raise LaunchFailed(f"Vast refused to create {spec.label} on offer {offer_id}: {error}: {msg}")
        logger.info("Created Vast instance %s for %s on offer %s", contract, spec.label, offer_id)
        return Instance(
            id=str(contract),
            label=spec.label,
            state=InstanceState.LOADING,
            dph_total=self._offer_prices.get(spec.offer_id, 0.0),
            started_at=time.time(),
        )

    def poll(self, instance_id: str) -> Instance:
        vast_id = _vast_id(instance_id)
        if vast_id is None:
            return Instance(instance_id, "", InstanceState.GONE)
        row = self._call("show instance", lambda: self._client.show_instance(vast_id), endpoint="show")
        if not row:
            return Instance(instance_id, "", InstanceState.GONE)
        return instance_from_row(row)

    def poll_many(self, instance_ids: Iterable[str]) -> dict[str, Instance]:
        """The state of many instances with one paginated list call; unknown ids come back ``GONE``."""
        ids = list(instance_ids)
        wanted = sorted({v for i in ids if (v := _vast_id(i)) is not None})
        rows = self._list_rows({"id": {"in": wanted}}) if wanted else []
        found = {str(r["id"]): instance_from_row(r) for r in rows}
        return {i: found.get(i, Instance(i, "", InstanceState.GONE)) for i in ids}

    def terminate(self, instance_id: str) -> None:
        self._terminate_by(instance_id, None)

    def _terminate_by(self, instance_id: str, deadline: float | None) -> None:
        vast_id = _vast_id(instance_id)
        if vast_id is None:
            return
        answer = self._call(
            "destroy instance",
            lambda: self._client.destroy_instance(vast_id),
            endpoint="destroy",
            missing_ok=True,
            check=False,
            deadline=deadline,
        )
        if isinstance(answer, dict) and answer.get("success") is False and answer.get("error") != "no_such_instance":
            raise ProviderError(f"Vast did not destroy instance {instance_id}: {answer.get('msg')}")
        logger.info("Destroyed Vast instance %s", instance_id)

    def terminate_many(self, instance_ids: Iterable[str], *, deadline_s: float = 30.0) -> TerminateReport:
        """One bulk destroy, verified by one paginated list of those ids; singles for what it left; until the deadline.

        Never raises for a provider failure: ids not confirmed gone by the deadline are in ``not_gone`` with the
        reason from the last round (bulk or single destroy failed, still listed, list failed). Ids that are not Vast
        ids are gone (Vast cannot know them). A quarter of the deadline (at most 5 s) is kept for the last
        verification, so a 429 storm on destroy still ends with an answer about each id.
        """
        return self._sweep(dict.fromkeys(str(i) for i in instance_ids), None, deadline_s)

    def terminate_owned(
        self,
        known: Mapping[str, str | None] | Iterable[str],
        is_owned: Callable[[str], bool],
        *,
        deadline_s: float = 30.0,
    ) -> TerminateReport:
        """The known ids destroyed at once (one bulk call), then ONE view of the account (``_owned_view``: the first
        list page's ``label_counts`` name every label, so only the pages of owned labels are read) that both verifies
        them and finds the owned instances nobody knew; those are bulk-destroyed and the next view verifies them."""
        known_map = dict(known) if isinstance(known, Mapping) else dict.fromkeys(known)
        return self._sweep({str(k): v for k, v in known_map.items()}, is_owned, deadline_s)

    def _sweep(
        self, known: dict[str, str | None], is_owned: Callable[[str], bool] | None, deadline_s: float
    ) -> TerminateReport:
        started = self._now()
        deadline = started + deadline_s
        destroy_by = deadline - min(0.25 * deadline_s, 5.0)
        requested = list(known)
        labels: dict[str, str | None] = {i: known[i] for i in requested if _vast_id(i) is not None}
        pending = list(labels)
        found: dict[str, str] = {}  # owned instances nobody asked for, discovered by a view
        why: dict[str, str] = {}
        seen: Mapping[str, int] = {}
        list_error: str | None = None
        use_singles = False  # after an accepted (or unsupported) bulk call: single destroys for what is left
        rounds = 0
        verified_once = is_owned is None  # terminate_owned: look at the account even when nothing is known
        while pending or not verified_once:
            rounds += 1
            failed: dict[str, str] = {}
            out_of_time: set[str] = set()  # not attempted this round: the deadline came first
            if pending and not use_singles:
                try:
                    self._call(
                        "bulk destroy",
                        lambda ids=[int(i) for i in pending]: self._client.destroy_instances(ids),  # type: ignore[misc]
                        endpoint="bulk_destroy",
                        deadline=destroy_by,
                    )
                    use_singles = True
                except ProviderUnavailable as exc:
                    failed = dict.fromkeys(pending, f"bulk destroy failed: {exc}")
                except ProviderError as exc:  # refused outright: singles will do it
                    failed = dict.fromkeys(pending, f"bulk destroy refused: {exc}")
                    use_singles = True
                if failed:
                    logger.warning(
                        "Vast bulk destroy of %d instances failed: %s", len(pending), next(iter(failed.values()))
                    )
            elif pending:
                for n, instance_id in enumerate(pending):
                    try:
                        self._terminate_by(instance_id, destroy_by)
                    except _PastDeadline:
                        out_of_time.update(pending[n:])
                        break
                    except ProviderError as exc:
                        failed[instance_id] = f"destroy failed: {exc}"
                        if self._now() >= destroy_by:
                            out_of_time.update(pending[n + 1 :])
                            break
            try:
                if is_owned is None:
                    rows = {
                        str(r["id"]): r
                        for r in self._list_rows({"id": {"in": [int(i) for i in pending]}}, deadline=deadline)
                    }
                else:
                    view = self._owned_view(is_owned, labels, deadline)
                    rows, seen = view.rows, view.labels
                    list_error = None
            except ProviderError as exc:
                if is_owned is not None:
                    list_error = str(exc)
                for i in pending:
                    why[i] = f"could not verify with a list: {exc}; before that: {failed.get(i, 'destroy sent')}"
                if not pending:
                    break  # nothing known to destroy and the account cannot be listed: list_error says so
            else:
                verified_once = True
                still = {i for i, r in rows.items() if instance_from_row(r).state is not InstanceState.GONE}
                new = [i for i in sorted(still - set(labels), key=int) if is_owned and is_owned(_label(rows[i]))]
                for i in new:
                    labels[i] = found[i] = _label(rows[i])
                    failed[i] = "found on the account, not destroyed yet"
                pending = [i for i in labels if i in still]
                if new:
                    use_singles = False  # newly found instances: one more bulk call for everything left
                for i in pending:
                    if i in out_of_time:
                        why[i] = f"{why.get(i, 'still listed')}; no time left for another destroy before the deadline"
                    else:
                        why[i] = failed.get(i, "still listed after destroy")
            if not pending:
                break
            # Just discovered: destroy them now (the bulk endpoint's pacing still applies); else back off.
            delay = 0.0 if _new_found(pending, why) else self._backoff_delay(rounds - 1)
            if self._now() + delay >= destroy_by:
                break
            if delay:
                logger.warning(
                    "Vast: %d instances not gone yet; destroy round %d in %.2fs", len(pending), rounds + 1, delay
                )
            else:
                logger.warning("Vast: %d instances of ours nobody knew are live; destroying them", len(found))
            self._wait(delay)
        for i in pending:
            logger.error(
                "Failed to terminate instance %s (%s). Terminate it manually to avoid accumulating charges.",
                i,
                why.get(i, "not confirmed gone"),
            )
        gone = tuple(i for i in [*requested, *found] if i not in pending)
        return TerminateReport(
            gone,
            {i: why.get(i, "not confirmed gone") for i in pending},
            self._now() - started,
            found=found,
            labels=dict(seen),
            list_error=list_error,
        )

    def _owned_view(
        self, is_owned: Callable[[str], bool], known: Mapping[str, str | None], deadline: float | None
    ) -> _View:
        """Every live row whose label ``is_owned`` plus the rows of ``known`` ids still live, in as few calls as the
        account allows: page 1 of the unfiltered list, whose ``label_counts`` count every label on the account
        (all pages, show_instances.yaml), then only what page 1 did not hold: ``label in [...]`` for owned labels
        with more rows than page 1 showed, ``id in [...]`` for known ids whose label cannot tell. A known id whose
        label no longer appears in ``label_counts`` is gone. Without ``label_counts`` (or with too many labels to
        name in one query) the list simply continues from page 2 to the end: never restarted, never partial."""
        params = {"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}], "limit": _PAGE_LIMIT}
        first = self._list_page(params, 1, deadline)
        rows = {str(r["id"]): r for r in first.get("instances") or [] if isinstance(r, dict)}
        token = first.get("next_token")
        counts = first.get("label_counts")
        if token and isinstance(counts, dict):
            seen = {str(k or ""): int(v or 0) for k, v in counts.items()}
            on_page = Counter(_label(r) for r in rows.values())
            wanted = sorted(lbl for lbl, n in seen.items() if lbl and n > on_page[lbl] and is_owned(lbl))
            unsure = sorted(
                int(i)
                for i, lbl in known.items()
                if i not in rows
                and _vast_id(i) is not None
                and (lbl is None or (lbl not in wanted and seen.get(lbl, 0) > on_page[lbl]))
            )
            if len(wanted) <= _MAX_LABELS_PER_QUERY and len(unsure) <= _MAX_IDS_PER_QUERY:
                if wanted:
                    rows.update(
                        (str(r["id"]), r) for r in self._list_rows({"label": {"in": wanted}}, deadline=deadline)
                    )
                if unsure:
                    rows.update((str(r["id"]), r) for r in self._list_rows({"id": {"in": unsure}}, deadline=deadline))
                return _View(rows, seen)
        if token:
            rows.update((str(r["id"]), r) for r in self._list_rows({}, deadline=deadline, after=(str(token), 2)))
        return _View(rows, dict(Counter(_label(r) for r in rows.values())))

    def list_owned(self, label_prefix: str) -> list[Instance]:
        rows = self._owned_view(lambda label: label.startswith(label_prefix), {}, None).rows
        owned = [instance_from_row(r) for r in rows.values()]
        return sorted(
            (i for i in owned if i.label.startswith(label_prefix) and i.state is not InstanceState.GONE),
            key=lambda i: int(i.id) if i.id.isdigit() else 0,
        )

    def logs(self, instance_id: str, *, tail: int = 200) -> str:
        vast_id = _vast_id(instance_id)
        if vast_id is None:
            return ""
        try:
            text = self._call("logs", lambda: self._client.logs(vast_id, tail=str(tail)), endpoint="logs")
        except TimeoutError as exc:
            raise ProviderUnavailable(f"the logs of instance {instance_id} were not uploaded in time") from exc
        return text if isinstance(text, str) else ""

    # -- money ----------------------------------------------------------------------------------------------
    def current_user(self) -> VastAccount:
        user = self._call("show user", self._client.show_user, endpoint="user")
        balance = float(user.get("balance") or 0.0)
        credit = user.get("credit")
        return VastAccount(str(user.get("username") or ""), float(credit) if credit is not None else balance, balance)

    def charges(self, start: float, end: float) -> list[InstanceCharge]:
        """Per-instance charges Vast billed between ``start`` and ``end`` (unix seconds), every page."""
        out: list[InstanceCharge] = []
        token: str | None = None
        for _ in range(1000):  # bounded: at most 100 rows per page
            params: dict[str, Any] = {"charges": True, "start_date": int(start), "end_date": int(end), "limit": 100}
            if token:
                params["next_token"] = token
            page = self._call(
                "show charges",
                lambda p=params: self._client.show_invoices_v1(**p),  # type: ignore[misc]
                endpoint="charges",
            )
            for row in page.get("results") or []:
                source = str(row.get("source") or "")
                if not source.startswith("instance-"):
                    continue
                items = {str(i.get("type")): float(i.get("amount") or 0) for i in row.get("items") or []}
                out.append(
                    InstanceCharge(
                        instance_id=source.removeprefix("instance-"),
                        label=str((row.get("metadata") or {}).get("label") or ""),
                        amount_usd=float(row.get("amount") or 0),
                        items=items,
                        start=row.get("start"),
                        end=row.get("end"),
                    )
                )
            token = page.get("next_token")
            if not token:
                break
        return out

    def instance_cost(self, instance_id: str, *, since: float | None = None) -> float | None:
        """What Vast charged for one instance so far (None if it has no charge row in the window)."""
        now = time.time()
        start = since if since is not None else now - 31 * 86400
        rows = [c for c in self.charges(start - 86400, now + 86400) if c.instance_id == instance_id]
        return sum(c.amount_usd for c in rows) if rows else None

    # -- helpers --------------------------------------------------------------------------------------------
    def _list_page(self, params: dict[str, Any], page_no: int, deadline: float | None) -> dict[str, Any]:
        """One page of ``GET /api/v1/instances/``, retried on its own (pacing, backoff, until ``deadline``)."""
        client = self._client.client
        page = self._call(
            f"list instances (page {page_no})",
            lambda p=dict(params): vast_instances.show_instances_v1(client, p),  # type: ignore[misc]
            endpoint="list",
            deadline=self._now() + self.list_deadline_s if deadline is None else deadline,
        )
        if not isinstance(page, dict):
            raise ProviderError(f"Vast list instances (page {page_no}): unexpected answer {str(page)[:200]!r}")
        return page

    def _list_rows(
        self, filters: dict[str, Any], *, deadline: float | None = None, after: tuple[str, int] | None = None
    ) -> list[dict[str, Any]]:
        """Every row of ``GET /api/v1/instances/`` matching ``filters``, page by page (see the module docstring);
        ``after`` = (a ``next_token`` already received, the number of the page it leads to) continues a list."""
        deadline = self._now() + self.list_deadline_s if deadline is None else deadline
        params: dict[str, Any] = {
            "select_filters": filters,
            "order_by": [{"col": "id", "dir": "asc"}],
            "limit": _PAGE_LIMIT,
        }
        first_page = 1
        seen_tokens: set[str] = set()
        if after is not None:
            params["after_token"], first_page = after
            seen_tokens.add(after[0])
        rows: list[dict[str, Any]] = []
        for page_no in range(first_page, _MAX_PAGES + 1):
            page = self._list_page(params, page_no, deadline)
            rows.extend(r for r in page.get("instances") or [] if isinstance(r, dict))
            token = page.get("next_token")
            if not token:
                return rows
            if token in seen_tokens:
                raise ProviderError(f"Vast list instances: page {page_no} repeated a next_token")
            seen_tokens.add(str(token))
            params["after_token"] = token
        raise ProviderError(f"Vast list instances: more than {_MAX_PAGES} pages")

    def _destroy_label(self, label: str) -> None:
        try:
            leftovers = [i for i in self._list_rows({"label": {"eq": label}}) if i.get("cur_state") != "unloaded"]
        except ProviderError:
            logger.exception("Could not list instances labelled %s to clean up a failed launch", label)
            return
        for row in leftovers:
            self._destroy_quietly(str(row["id"]))

    def _destroy_quietly(self, instance_id: str) -> None:
        try:
            self.terminate(instance_id)
        except ProviderError:
            logger.exception(
                "Failed to terminate instance %s. Terminate it manually to avoid accumulating charges.", instance_id
            )

    def _refuse_api_key(self, spec: LaunchSpec, script: str) -> None:
        sent = [script, spec.label, spec.image, *spec.env.keys(), *spec.env.values(), *spec.command]
        if any(self._api_key in s for s in sent):
            raise LaunchFailed(f"refusing to send the Vast API key to a rented host (launch {spec.label})")

    def _now(self) -> float:
        return self._clock() + self._skew

    def _wait(self, seconds: float) -> None:
        """Sleep, and count at least ``seconds`` against every deadline even if the sleep returned early (a test's
        no-op sleep, an interrupted one): a deadline is spent waiting, never hammering the API."""
        before = self._clock()
        self._sleep(seconds)
        short = seconds - (self._clock() - before)
        if short > 0:
            with self._pace_lock:
                self._skew += short

    def _backoff_delay(self, attempt: int) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        return ceiling * (0.5 + 0.5 * self._rng.random())

    def _pace(self, endpoint: str, what: str, deadline: float | None) -> None:
        """Wait for this endpoint's next free slot (per key: this client has one key), reserving it first.

        Raises ``_PastDeadline`` (a ``ProviderUnavailable``) instead of waiting past ``deadline``."""
        interval = self.min_intervals.get(endpoint, 0.0)
        if interval <= 0:
            return
        with self._pace_lock:
            now = self._now()
            slot = max(now, self._next_slot.get(endpoint, now))
            if deadline is not None and slot > deadline:
                raise _PastDeadline(f"Vast {what}: the next free {endpoint} slot is past the deadline")
            # The margin absorbs jitter between our clock and the request's arrival, so pacing never earns a 429.
            self._next_slot[endpoint] = slot + interval + _PACE_MARGIN_S
        if slot > now:
            self._wait(slot - now)

    def _retry_or_raise(
        self, attempt: int, last: bool, deadline: float | None, what: str, why: str, floor: float
    ) -> bool:
        """Back off and return True to retry, or False when the budget (count, or deadline) is spent."""
        delay = max(self._backoff_delay(attempt), floor)
        if deadline is not None:
            if self._now() + delay > deadline:
                return False
        elif last:
            return False
        logger.warning("Vast %s: %s; retrying in %.2fs (attempt %d)", what, why, delay, attempt + 1)
        self._wait(delay)
        return True

    def _call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        endpoint: str,
        idempotent: bool = True,
        gone: type[ProviderError] = ProviderError,
        missing_ok: bool = False,
        check: bool = True,
        deadline: float | None = None,
    ) -> T:
        """Run one client call: pacing, retries (``retry_attempts``, or until ``deadline`` on our clock), then
        translation into tools.errors (see the module docstring)."""
        for attempt in range(1_000_000):
            last = deadline is None and attempt + 1 >= self.retry_attempts
            self._pace(endpoint, what, deadline)
            try:
                result = fn()
            except requests.HTTPError as exc:
                response = exc.response
                status = response.status_code if response is not None else 0
                body = _error_text(response)
                if missing_ok and status == 404:
                    return None  # type: ignore[return-value]
                floor = self._retry_floors.get(endpoint, 0.0) if status == 429 else 0.0
                if (status == 429 or (idempotent and status >= 500)) and self._retry_or_raise(
                    attempt, last, deadline, what, f"HTTP {status}", floor
                ):
                    continue
                if status == 429 or status >= 500:
                    raise ProviderUnavailable(f"Vast {what}: HTTP {status}: {body}") from exc
                if status in (404, 410):
                    raise gone(f"Vast {what}: HTTP {status}: {body}") from exc
                raise ProviderError(f"Vast {what}: HTTP {status}: {body}") from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                if idempotent and self._retry_or_raise(attempt, last, deadline, what, type(exc).__name__, 0.0):
                    continue
                raise ProviderUnavailable(f"Vast {what}: {type(exc).__name__}: {exc}") from exc
            except (requests.RequestException, ValueError, KeyError) as exc:
                raise ProviderError(f"Vast {what}: unexpected answer: {exc!r}") from exc
            if check and isinstance(result, dict) and result.get("success") is False:
                raise ProviderError(f"Vast {what}: {result.get('error')}: {result.get('msg')}")
            return result
        raise ProviderUnavailable(f"Vast {what}: gave up after a million attempts")  # only with a broken clock


def _error_text(response: requests.Response | None) -> str:
    if response is None:
        return ""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return f"{body.get('error', '')} {body.get('msg') or body.get('message') or body.get('detail') or ''}".strip()
    return str(body)[:200]
