"""Everything a cycle needs, built once from the settings and passed in (no module-level globals)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilot.settings import Settings
from pilot.store import Store
from pilot.store.installation import ensure_installation_id
from pilot.store.leases import process_owner
from tools.artifacts.base import ArtifactStore
from tools.artifacts.local import LocalArtifactStore
from tools.gpu.base import GpuProvider, instance_label, label_prefix
from tools.gpu.fake import FakeGpuProvider
from tools.gpu.local import LocalGpuProvider

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostModules:
    """The modules a rented host runs (``python -m <module> --config ...``): the jobs package's own. Tests and the
    rehearsal inject stubs here; they are not settings."""

    train: str = "jobs.finetune_lora"
    preference: str = "jobs.preference"  # DPO / KTO runs
    grpo: str = "jobs.grpo"  # GRPO runs (the records' tests as the reward)
    generate: str = "jobs.generate"

    def for_method(self, method: str) -> str:
        """The module that trains ``method`` (sft, dpo, kto, grpo)."""
        modules = {"sft": self.train, "dpo": self.preference, "kto": self.preference, "grpo": self.grpo}
        if method not in modules:
            raise ValueError(f"unknown training method {method!r}; expected one of {', '.join(modules)}")
        return modules[method]


@dataclass
class PilotContext:
    settings: Settings
    store: Store
    gpu: GpuProvider
    artifacts: ArtifactStore
    local: LocalGpuProvider  # always present: evaluation of small models runs here
    owner: str = field(default_factory=process_owner)  # this process as a lease owner (see pilot/store/leases.py)
    host_modules: HostModules = field(default_factory=HostModules)

    @property
    def label_prefix(self) -> str:
        """Every label of this env, both formats and every installation: filter with ``ownership`` before
        destroying anything listed under it."""
        return label_prefix(self.settings.env)

    @property
    def installation(self) -> str:
        """This store's installation id (``pilot.store.installation``), created on first use when ``learning-pilot
        init`` was not run (said in the log)."""
        if self._installation is None:
            self._installation, created = ensure_installation_id(self.store)
            if created:
                logger.warning(
                    "Created installation id %s in the store (`learning-pilot init` was not run); instance labels "
                    "carry it from now on",
                    self._installation,
                )
        return self._installation

    def instance_label(self, run_id: str) -> str:
        """The label of an instance rented for ``run_id`` (a run or an evaluation stage) by this installation."""
        return instance_label(self.settings.env, run_id, self.installation)

    _kb: Any = None  # the process's one knowledge base, opened by pilot.data.knowledge.knowledge_base(ctx)
    _installation: str | None = None

    def close(self) -> None:
        if self._kb is not None:
            with contextlib.suppress(Exception):
                self._kb.client.close()
        self.store.close()


def make_gpu_provider(settings: Settings, local: LocalGpuProvider) -> GpuProvider:
    match settings.gpu.provider:
        case "local":
            return local
        case "fake":
            return FakeGpuProvider()
        case "vast":
            from tools.gpu.vast import VastGpuProvider  # the vastai client is imported only when configured

            key = settings.gpu.vast.api_key
            if key is None:
                from pilot.errors import ConfigError

                raise ConfigError("gpu.provider is 'vast' but no API key: set LEARNING_PILOT_GPU__VAST__API_KEY")
            return VastGpuProvider(key.get_secret_value(), api_url=settings.gpu.vast.api_url)


def make_artifact_store(settings: Settings) -> ArtifactStore:
    if settings.artifacts.kind == "s3":
        from tools.artifacts.s3 import S3ArtifactStore

        if not settings.artifacts.s3_bucket:
            from pilot.errors import ConfigError

            raise ConfigError("artifacts.kind is 's3' but artifacts.s3_bucket is empty")
        return S3ArtifactStore(
            settings.artifacts.s3_bucket,
            prefix=settings.artifacts.s3_prefix,
            endpoint_url=settings.artifacts.s3_endpoint_url,
            region=settings.artifacts.s3_region,
            # A rented host uploads heartbeats and results until the run's deadline: URLs must outlive it.
            max_presign_s=int(min(7 * 24 * 3600, settings.training.max_duration_minutes * 60 + 3600)),
        )
    return LocalArtifactStore(settings.artifacts_dir)


def build_context(settings: Settings, *, store: Store | None = None) -> PilotContext:
    local = LocalGpuProvider(
        Path(settings.data_dir) / "gpu",
        gpu_name=settings.gpu.local.gpu_name,
        gpu_ram_gb=settings.gpu.local.gpu_ram_gb,
        dph=settings.gpu.local.dph,
    )
    return PilotContext(
        settings=settings,
        store=store or Store(settings.database_url),
        gpu=make_gpu_provider(settings, local),
        artifacts=make_artifact_store(settings),
        local=local,
    )
