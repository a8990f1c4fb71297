"""The GPU provider interface: the contract every provider (local, fake, Vast.ai) passes.

Instances are identified by the provider's id (a string) and labelled
``learning-pilot/<env>/<installation>/<run_id>`` (or, from before installation ids, ``learning-pilot/<env>/<run_id>``)
so that the reconciler can find instances the store does not know about (orphans) with ``list_owned``, and tell its
own from another deployment's on the same account (``parse_label``, ``label_owner``).

Contract (tests/contracts/test_gpu_provider.py runs it against every implementation):

- ``search_offers`` returns offers meeting the requirements; it never rents anything.
- ``launch`` returns as soon as the provider has accepted the request. If the provider reports failure but
  created an instance anyway, the implementation destroys it *before* raising ``LaunchFailed``.
- ``poll`` returns the instance's current state; an instance the provider no longer knows is ``GONE``.
- ``terminate`` is idempotent: terminating an unknown or already destroyed instance is not an error.
- ``terminate_many(ids, deadline_s=...)`` destroys many instances and says, per id, whether it is confirmed gone
  (the provider no longer lists it) or not and why. It never raises for a provider failure: what it could not
  confirm by the deadline is in ``TerminateReport.not_gone``. Unknown ids count as gone.
- ``terminate_owned(known, is_owned, deadline_s=...)`` does the same for the known ids plus every live instance whose
  label ``is_owned`` (found by listing the account); a list it cannot complete is ``list_error``, never "all gone".
- ``list_owned(label_prefix)`` lists every live instance whose label starts with the prefix; a list it could not
  complete raises ``ProviderError``, never returns a partial list as if complete.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from tools.errors import ProviderError


class InstanceState(enum.StrEnum):
    LOADING = "loading"  # accepted, image pulling or booting
    RUNNING = "running"  # the job's process is running
    EXITED = "exited"  # the job finished; exit_code says how
    STOPPED = "stopped"  # stopped by the provider (outbid, host offline); may still bill storage
    GONE = "gone"  # destroyed or unknown to the provider


@dataclass(frozen=True)
class OfferRequirements:
    min_gpu_ram_gb: float = 0.0
    num_gpus: int = 1
    min_cuda: float = 0.0
    min_disk_gb: float = 10.0
    min_reliability: float = 0.0
    min_inet_down_mbps: float = 0.0
    max_dph: float | None = None  # $/hour cap for the whole instance
    verified: bool = True
    interruptible: bool = False


@dataclass(frozen=True)
class Offer:
    id: str
    gpu_name: str
    num_gpus: int
    gpu_ram_gb: float
    dph_total: float  # $/hour, on-demand price of the whole instance
    storage_cost_per_gb_month: float = 0.0
    inet_down_cost_per_gb: float = 0.0
    inet_up_cost_per_gb: float = 0.0
    reliability: float = 1.0
    cuda_max_good: float = 0.0
    inet_down_mbps: float = 0.0
    disk_gb: float = 0.0
    tflops: float = 0.0  # advertised total FLOPS (for throughput estimates)
    dlperf: float = 0.0
    min_bid: float | None = None
    verified: bool = True
    raw: Mapping[str, object] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class LaunchSpec:
    """What to run. ``command`` runs in ``workdir`` with exactly ``env`` (plus PATH/HOME from the host)."""

    label: str
    offer_id: str | None
    image: str
    command: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    disk_gb: float = 10.0
    bid_price: float | None = None  # set for interruptible (bid) instances
    onstart: str | None = None  # shell script for providers that boot a fresh host


@dataclass(frozen=True)
class Instance:
    id: str
    label: str
    state: InstanceState
    exit_code: int | None = None
    dph_total: float = 0.0
    started_at: float | None = None  # unix seconds
    detail: str = ""  # provider's status message, for humans


@dataclass(frozen=True)
class TerminateReport:
    """The outcome of ``terminate_many``: every requested id is in exactly one of ``gone`` and ``not_gone``.

    ``gone``: the provider confirmed the instance no longer exists (or never did). ``not_gone``: id -> why it could
    not be confirmed gone by the deadline (still listed, the provider kept answering 429, the list failed...).
    These may still bill: the caller keeps their reservations and retries or tells a human.
    """

    gone: tuple[str, ...] = ()
    not_gone: Mapping[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    found: Mapping[str, str] = field(default_factory=dict)  # terminate_owned: id -> label of owned ids nobody named
    labels: Mapping[str, int] = field(default_factory=dict)  # terminate_owned: label -> live count, last look
    list_error: str | None = None  # terminate_owned: the account could not be listed (only known ids destroyed)

    @property
    def ok(self) -> bool:
        return not self.not_gone


class GpuProvider(abc.ABC):
    """Rents compute and runs one job per instance. See the module docstring for the contract."""

    name: str = "abstract"

    @abc.abstractmethod
    def search_offers(self, requirements: OfferRequirements, *, limit: int = 64) -> list[Offer]:
        """Offers that meet ``requirements``. Rents nothing."""

    @abc.abstractmethod
    def launch(self, spec: LaunchSpec) -> Instance:
        """Start an instance and return as soon as the provider accepted it."""

    @abc.abstractmethod
    def poll(self, instance_id: str) -> Instance:
        """Current state. An unknown id is returned with state GONE, never raised."""

    @abc.abstractmethod
    def terminate(self, instance_id: str) -> None:
        """Destroy the instance. Idempotent: an unknown id returns silently."""

    def terminate_many(
        self,
        instance_ids: Iterable[str],
        *,
        deadline_s: float = 30.0,
    ) -> TerminateReport:
        """Destroy every instance and confirm each gone within ``deadline_s``; never raises for a provider failure.

        The default terminates one by one and confirms with ``poll``, retrying what is not gone until the deadline.
        Providers with a bulk destroy (Vast) override it with one bulk call verified by one list.
        """
        clock, sleep = time.monotonic, time.sleep
        started = clock()
        deadline = started + deadline_s
        pending = list(dict.fromkeys(instance_ids))
        why: dict[str, str] = {}
        gone: list[str] = []
        delay = 0.05
        while pending:
            for instance_id in pending:
                try:
                    self.terminate(instance_id)
                    if self.poll(instance_id).state is InstanceState.GONE:
                        gone.append(instance_id)
                        why.pop(instance_id, None)
                    else:
                        why[instance_id] = "still listed after terminate"
                except ProviderError as exc:
                    why[instance_id] = f"{type(exc).__name__}: {exc}"
            pending = [i for i in pending if i not in gone]
            if not pending or clock() + delay > deadline:
                break
            sleep(delay)
            delay = min(delay * 2, 1.0)
        return TerminateReport(tuple(gone), {i: why[i] for i in pending}, clock() - started)

    def terminate_owned(
        self,
        known: Mapping[str, str | None] | Iterable[str],
        is_owned: Callable[[str], bool],
        *,
        deadline_s: float = 30.0,
    ) -> TerminateReport:
        """Destroy the ``known`` ids (id -> label, None when unknown) and every live instance whose label
        ``is_owned``, and confirm each gone; the kill switch's one call. Never raises for a provider failure: a list
        that fails is ``list_error`` (the known ids are still destroyed), the owned ids nobody named are ``found``.

        The default lists the account once, then ``terminate_many``; Vast overrides it with a cheaper look.
        """
        known_ids = list(known)
        try:
            listed = [i for i in self.list_owned("") if i.state is not InstanceState.GONE]
        except ProviderError as exc:
            report = self.terminate_many(known_ids, deadline_s=deadline_s)
            return dataclasses.replace(report, list_error=f"{type(exc).__name__}: {exc}")
        found = {i.id: i.label for i in listed if is_owned(i.label) and i.id not in set(known_ids)}
        report = self.terminate_many([*known_ids, *found], deadline_s=deadline_s)
        left = {i.id for i in listed} - set(report.gone)
        return dataclasses.replace(report, found=found, labels=dict(Counter(i.label for i in listed if i.id in left)))

    @abc.abstractmethod
    def list_owned(self, label_prefix: str) -> list[Instance]:
        """Live instances (not GONE) whose label starts with ``label_prefix``; raises if the list is incomplete."""

    def logs(self, instance_id: str, *, tail: int = 200) -> str:
        """The last lines of the job's output, for humans. Optional."""
        return ""


LABEL_ROOT = "learning-pilot"
# Vast: at most 256 characters on create (create_instance.yaml:307-308; 1024 on a label update, "ideally less than
# 128"). Ours stay under 128: env <= 32, installation <= 32, run id <= 40, plus the root and slashes (121).
MAX_LABEL_CHARS = 128
MAX_ENV_CHARS = 32
MAX_INSTALLATION_CHARS = 32
MAX_RUN_ID_CHARS = 40
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class ParsedLabel:
    env: str
    installation: str | None  # None: an old-format label, written before installation ids
    run_id: str


class LabelOwner(enum.StrEnum):
    OURS = "ours"  # our env and our installation (or an old-format label of our env, where accepted)
    OTHER_INSTALLATION = "other_installation"  # our env, another deployment's installation id: never destroy
    FOREIGN = "foreign"  # not a learning-pilot label, or another env


def _check_segment(kind: str, value: str, limit: int) -> None:
    if not _SEGMENT.fullmatch(value) or len(value) > limit:
        raise ValueError(f"{kind} must be 1-{limit} characters of [A-Za-z0-9._-], not starting with . _ -: {value!r}")


def instance_label(env: str, run_id: str, installation: str | None = None) -> str:
    """``learning-pilot/<env>/<installation>/<run_id>``, or the old ``learning-pilot/<env>/<run_id>`` without one.

    Installation ids are at most ``MAX_INSTALLATION_CHARS`` (32) characters of ``[A-Za-z0-9._-]``; the label stays
    within ``MAX_LABEL_CHARS`` (128, well under Vast's 256). With an installation id, raises ``ValueError`` on a
    segment that breaks that (env <= 32, run id <= 40 characters).
    """
    if installation is None:  # unchecked, as before installation ids: pilot/ relies on it for every id it makes
        return f"{LABEL_ROOT}/{env}/{run_id}"
    _check_segment("env", env, MAX_ENV_CHARS)
    _check_segment("run id", run_id, MAX_RUN_ID_CHARS)
    _check_segment("installation id", installation, MAX_INSTALLATION_CHARS)
    return f"{LABEL_ROOT}/{env}/{installation}/{run_id}"


def parse_label(label: str | None) -> ParsedLabel | None:
    """Either label format back into its parts; ``None`` for anything that is not a learning-pilot label."""
    if not label:
        return None
    parts = label.split("/")
    if parts[0] != LABEL_ROOT or len(parts) not in (3, 4) or not all(_SEGMENT.fullmatch(p) for p in parts[1:]):
        return None
    if len(parts) == 3:
        return ParsedLabel(env=parts[1], installation=None, run_id=parts[2])
    return ParsedLabel(env=parts[1], installation=parts[2], run_id=parts[3])


def label_owner(label: str | None, env: str, installation: str | None, *, old_format_ok: bool = True) -> LabelOwner:
    """Whose instance this is, from its label alone.

    ``OURS`` needs our env and our installation id; an old-format label (no installation) of our env counts as ours
    only with ``old_format_ok`` (this installation wrote such labels before it had an id). Our env with any other
    installation id is ``OTHER_INSTALLATION``: report it, never destroy it. With ``installation=None`` (a caller with
    no id yet) only old-format labels are ours.
    """
    parsed = parse_label(label)
    if parsed is None or parsed.env != env:
        return LabelOwner.FOREIGN
    if parsed.installation is None:
        return LabelOwner.OURS if old_format_ok else LabelOwner.OTHER_INSTALLATION
    return LabelOwner.OURS if parsed.installation == installation else LabelOwner.OTHER_INSTALLATION


def is_ours(label: str | None, env: str, installation: str | None, *, old_format_ok: bool = True) -> bool:
    """``label_owner(...) is LabelOwner.OURS``: the only instances a reconciler or kill switch may destroy."""
    return label_owner(label, env, installation, old_format_ok=old_format_ok) is LabelOwner.OURS


def label_prefix(env: str, installation: str | None = None) -> str:
    """The prefix ``list_owned`` filters on: every label of ``env`` (both formats), or one installation's new ones.

    ``label_prefix(env)`` matches other installations of the same env too: filter with ``is_ours`` before destroying.
    """
    if installation is None:
        return f"{LABEL_ROOT}/{env}/"
    return f"{LABEL_ROOT}/{env}/{installation}/"
