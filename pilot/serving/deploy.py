"""Making the registry's champion live on the configured serving target, and putting it back after an incident.

The registry (the ``champion`` alias in the store) is the source of truth for what should serve; the target
only reports what it has. ``sync_champion`` makes the target agree with the registry: the champion's adapter
is fetched from the artifact store, verified (sha256 of every file, safetensors/json only) and deployed; with
no champion the base model serves, so whatever adapter the target has is taken down. It is idempotent: a target
that already serves the champion is left alone. ``revert_to_stable`` is what the kill switch calls: it never
promotes or rolls back in the registry (that is a human's or the monitor's call), it only re-asserts the last
stable champion on the target, undoing a half-finished canary or a manual edit.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilot.context import PilotContext
from pilot.serving import registry
from pilot.settings import Settings
from pilot.spend.effects import Effect, EffectRefused, authorize
from pilot.store import Store
from pilot.store.models import ModelVersion
from pilot.store.status import Alias, EntityType, ModelStatus
from pilot.store.writers import alias_target, record_event
from tools.artifacts.base import ArtifactStore
from tools.errors import DeployError, PilotError
from tools.serving.base import DeployTarget
from tools.serving.ollama import OllamaTarget
from tools.serving.pointer import PointerFileTarget
from tools.serving.vllm import VllmTarget

logger = logging.getLogger(__name__)

CHAMPION = Alias.CHAMPION


@dataclass(frozen=True)
class DeployOutcome:
    """What the target serves after the call, and what was done to get there."""

    target: str
    wanted: str | None  # the champion version id, None for the base model
    before: str | None  # what the target reported before
    after: str | None  # what the target reports now
    action: str  # "unchanged" | "deployed" | "undeployed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "wanted": self.wanted,
            "before": self.before,
            "after": self.after,
            "action": self.action,
        }


def pointer_path(settings: Settings) -> Path:
    return settings.deploy.pointer_path or settings.data_dir / "serving" / "current.json"


def make_target(settings: Settings) -> DeployTarget:
    """The serving target named by ``settings.deploy`` (the pointer file by default)."""
    deploy = settings.deploy
    match deploy.target:
        case "pointer":
            return PointerFileTarget(pointer_path(settings))
        case "vllm":
            if not deploy.vllm_url:
                raise DeployError("deploy.target is 'vllm' but deploy.vllm_url is empty")
            key = deploy.vllm_api_key.get_secret_value() if deploy.vllm_api_key else None
            return VllmTarget(deploy.vllm_url, key)
        case "ollama":
            if not deploy.ollama_url:
                raise DeployError("deploy.target is 'ollama' but deploy.ollama_url is empty")
            return OllamaTarget(deploy.ollama_url, settings.training.base_model)


def stable_champion(store: Store) -> ModelVersion | None:
    """The champion alias's version when it is in good standing (PROMOTED), else None (the base model)."""
    with store.session() as session:
        version_id = alias_target(session, CHAMPION)
        if version_id is None:
            return None
        version = session.get(ModelVersion, version_id)
    if version is None or version.status != ModelStatus.PROMOTED:
        return None
    return version


def _fetch_adapter(artifacts: ArtifactStore, version: ModelVersion, dest: Path) -> dict[str, str]:
    expected: dict[str, str] = {}
    for name, ref in sorted(version.adapter_files.items()):
        sha = str(ref["sha256"])
        artifacts.get(str(ref["key"]), dest / name, sha256=sha)
        expected[name] = sha
    if not expected:
        raise DeployError(f"model version {version.id} has no stored adapter files")
    return expected


def sync_champion(settings: Settings, store: Store, artifacts: ArtifactStore, target: DeployTarget) -> DeployOutcome:
    """Make ``target`` serve the registry's stable champion (or the base model). Raises DeployError."""
    champion = stable_champion(store)
    wanted = champion.id if champion is not None else None
    before = target.current()
    kind = settings.deploy.target
    if before == wanted:
        return DeployOutcome(kind, wanted, before, before, "unchanged")
    if champion is None:
        assert before is not None
        target.undeploy(before)
        after = target.current()
        logger.warning("Took adapter %s off %s: the base model serves (no stable champion)", before, kind)
        return DeployOutcome(kind, None, before, after, "undeployed")
    workdir = Path(tempfile.mkdtemp(prefix=f"lp-deploy-{champion.id}-", dir=_scratch(settings)))
    try:
        expected = _fetch_adapter(artifacts, champion, workdir)
        target.deploy(champion.id, workdir, expected_sha256=expected)
    finally:
        if kind != "pointer":  # the pointer file names the directory: keep it; other targets copied it
            shutil.rmtree(workdir, ignore_errors=True)
    after = target.current()
    logger.info("Deployed champion %s on %s (was %s)", champion.id, kind, before or "base")
    return DeployOutcome(kind, wanted, before, after, "deployed")


def _scratch(settings: Settings) -> Path:
    path = settings.data_dir / "serving" / "adapters"
    path.mkdir(parents=True, exist_ok=True)
    return path


def revert_to_stable(settings: Settings, store: Store, artifacts: ArtifactStore) -> DeployOutcome:
    """The kill switch's deployment step: the target built from settings serves the last stable champion."""
    target = make_target(settings)
    try:
        return sync_champion(settings, store, artifacts, target)
    finally:
        close = getattr(target, "close", None)
        if callable(close):
            close()


def apply_champion(
    ctx: PilotContext, why: str, *, effect: Effect = Effect.DEPLOY, lease: str | None = None, actor: str = "system"
) -> str:
    """Make the serving target agree with the registry, if the effect gate allows it now; a refused deploy rolls
    the promotion back. Returns the line for the cycle's log. ``effect`` is ``ROLLBACK`` after a rollback (allowed
    while paused), else ``DEPLOY``."""
    settings = ctx.settings
    try:
        authorize(ctx.store, effect, settings, owner=ctx.owner, lease=lease, actor=actor)
    except EffectRefused as exc:
        return f"; not deployed: {exc.reason}"
    try:
        outcome = sync_champion(settings, ctx.store, ctx.artifacts, make_target(settings))
    except PilotError as exc:
        logger.error("Deploy after %s failed: %s", why, exc)
        with ctx.store.session(write=True) as session:
            registry.rollback(session, to_version=None, actor="system", reason=f"deploy failed: {exc}")
        with contextlib.suppress(PilotError):
            sync_champion(settings, ctx.store, ctx.artifacts, make_target(settings))
        return f"; deploy FAILED ({exc}), promotion rolled back"
    with ctx.store.session(write=True) as session:
        record_event(
            session,
            entity_type=EntityType.DEPLOYMENT,
            entity_id=settings.deploy.target,
            actor=actor,
            reason=f"{why}: {outcome.action}",
            old=outcome.before,
            new=outcome.after,
        )
    return f"; serving {outcome.after or 'the base model'} on {outcome.target} ({outcome.action})"
