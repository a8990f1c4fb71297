"""The deploy-target interface, and the adapter check every target runs first.

Contract (tests/contracts/test_deploy_target.py runs it against every target):

- ``deploy(name, adapter_dir, expected_sha256=...)`` first verifies the directory — every regular file is
  listed in ``expected_sha256`` with a matching sha256 and vice versa, no symlinks, only ``.safetensors`` and
  ``.json`` files (pickled weights ``.bin/.pt/.pth/.pkl/...`` are refused) — and raises
  ``tools.errors.IntegrityError`` *before* the target is touched. Deploying the same name again replaces it.
- ``undeploy(name)`` is idempotent: removing what is not there returns silently.
- ``current()`` is what the target itself reports as live (the last adapter this target deployed, when the
  target still has it), or ``None``. The registry in the store is the source of truth; this is for
  reconciliation and status.
- Target failures (connection refused, non-2xx) raise ``tools.errors.DeployError``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from pathlib import Path

from tools.artifacts.base import PICKLE_SUFFIXES, sha256_file
from tools.errors import IntegrityError

__all__ = ["ALLOWED_SUFFIXES", "DeployTarget", "check_adapter_name", "verify_adapter_dir"]

ALLOWED_SUFFIXES = (".safetensors", ".json")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def check_adapter_name(name: str) -> str:
    if not _NAME.match(name):
        raise IntegrityError(f"unsafe adapter name {name!r}")
    return name


def verify_adapter_dir(adapter_dir: Path, expected_sha256: Mapping[str, str]) -> dict[str, str]:
    """Return ``{relative posix path: sha256}`` for a directory that matches ``expected_sha256`` exactly.

    Raises ``IntegrityError`` naming the first problem: missing directory, symlink, pickled or unknown file
    type, a file not in the manifest, a manifest entry with no file, a sha256 mismatch, or no weights at all.
    """
    if not adapter_dir.is_dir():
        raise IntegrityError(f"adapter directory {adapter_dir} does not exist")
    found: dict[str, Path] = {}
    for path in sorted(adapter_dir.rglob("*")):
        rel = path.relative_to(adapter_dir).as_posix()
        if path.is_symlink():
            raise IntegrityError(f"adapter file {rel!r} is a symlink")
        if path.is_dir():
            continue
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise IntegrityError(f"adapter file {rel!r} is pickled weights; only safetensors are accepted")
        if suffix not in ALLOWED_SUFFIXES:
            raise IntegrityError(f"adapter file {rel!r} is not safetensors or json")
        found[rel] = path
    missing = sorted(set(expected_sha256) - set(found))
    if missing:
        raise IntegrityError(f"adapter files missing from {adapter_dir}: {missing}")
    unexpected = sorted(set(found) - set(expected_sha256))
    if unexpected:
        raise IntegrityError(f"adapter files not in the manifest: {unexpected}")
    if not any(rel.endswith(".safetensors") for rel in found):
        raise IntegrityError(f"adapter directory {adapter_dir} has no .safetensors weights")
    digests: dict[str, str] = {}
    for rel, path in found.items():
        actual = sha256_file(path)
        if actual != expected_sha256[rel].lower():
            raise IntegrityError(f"sha256 mismatch for {rel!r}: expected {expected_sha256[rel]}, got {actual}")
        digests[rel] = actual
    return digests


class DeployTarget(abc.ABC):
    """Where an adapter goes live. Subclasses implement ``_activate``; ``deploy`` verifies first."""

    def deploy(self, name: str, adapter_dir: Path, *, expected_sha256: Mapping[str, str]) -> None:
        check_adapter_name(name)
        digests = verify_adapter_dir(adapter_dir, expected_sha256)
        self._activate(name, adapter_dir.resolve(), digests)

    @abc.abstractmethod
    def _activate(self, name: str, adapter_dir: Path, digests: Mapping[str, str]) -> None:
        """Make the verified adapter live under ``name``; replace an adapter of the same name."""

    @abc.abstractmethod
    def undeploy(self, name: str) -> None:
        """Remove ``name``; return silently when it is not deployed."""

    @abc.abstractmethod
    def current(self) -> str | None:
        """The adapter this target reports as live, or None."""
