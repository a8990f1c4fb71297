"""A pointer file as a deploy target: a JSON file that the serving side reads to find the live adapter.

Invariants: the pointer is replaced atomically (temp file in the same directory, fsync, ``os.replace``), so a
reader sees the old pointer or the new one, never a torn file. Before each replace the live pointer is kept
as ``<path>.previous``, which ``revert()`` swaps back.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tools.errors import DeployError
from tools.serving.base import DeployTarget

__all__ = ["PointerFileTarget"]


class PointerFileTarget(DeployTarget):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.previous_path = self.path.with_name(self.path.name + ".previous")

    def _activate(self, name: str, adapter_dir: Path, digests: Mapping[str, str]) -> None:
        pointer = {
            "adapter": name,
            "path": str(adapter_dir),
            "sha256": dict(digests),
            "deployed_at": datetime.now(UTC).isoformat(),
        }
        live = self.read()
        if live is not None:
            self._write(self.previous_path, live)
        self._write(self.path, pointer)

    def undeploy(self, name: str) -> None:
        live = self.read()
        if live is None or live.get("adapter") != name:
            return
        self._write(self.previous_path, live)
        self.path.unlink(missing_ok=True)

    def current(self) -> str | None:
        live = self.read()
        return None if live is None else str(live["adapter"])

    def read(self) -> dict[str, Any] | None:
        """The live pointer, or None when nothing is deployed."""
        return self._read(self.path)

    def revert(self) -> str | None:
        """Make the previous pointer live again (the current one becomes previous); returns the adapter now
        live, or None when there was no previous pointer."""
        previous = self._read(self.previous_path)
        if previous is None:
            return None
        live = self.read()
        self._write(self.path, previous)
        if live is not None:
            self._write(self.previous_path, live)
        else:
            self.previous_path.unlink(missing_ok=True)
        return str(previous["adapter"])

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DeployError(f"pointer file {path} is unreadable: {exc}") from exc
        if not isinstance(data, dict) or "adapter" not in data:
            raise DeployError(f"pointer file {path} has no 'adapter' field")
        return data

    @staticmethod
    def _write(path: Path, data: Mapping[str, Any]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        except OSError as exc:
            raise DeployError(f"cannot write pointer file {path}: {exc}") from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise DeployError(f"cannot write pointer file {path}: {exc}") from exc
            raise
