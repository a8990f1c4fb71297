"""The artifact store interface: content-addressed by sha256, verified on the way back.

Keys are relative POSIX paths (``runs/<run_id>/adapter/adapter_model.safetensors``). A key that is absolute or
contains ``..`` is refused with ``IntegrityError``. ``put`` returns an ``ArtifactRef`` whose sha256 the store
records; ``get`` verifies the bytes against the expected sha256 when given and raises ``IntegrityError`` on a
mismatch, leaving nothing at the destination.

Presigned URLs are how a rented host (untrusted) reads inputs and writes outputs without credentials; the local
store returns ``file://`` URLs, which only the local provider can use.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tools.errors import IntegrityError

SAFE_ADAPTER_SUFFIXES = (".safetensors", ".json", ".txt", ".md", ".model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass(frozen=True)
class ArtifactRef:
    key: str
    uri: str
    sha256: str
    size: int


def check_key(key: str) -> str:
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\\" in key:
        raise IntegrityError(f"unsafe artifact key {key!r}")
    return str(path)


def refuse_pickled(key: str, path: Path | None = None) -> None:
    """Raise ``IntegrityError`` for a pickled weight file: by suffix, or by content (a pickle stream, or a torch
    zip archive holding ``data.pkl``). Pickles run code when loaded; adapters travel as safetensors only."""
    if PurePosixPath(key).suffix.lower() in PICKLE_SUFFIXES:
        raise IntegrityError(f"refusing pickled artifact {key!r} (suffix); use safetensors")
    if path is None or not path.is_file():
        return
    with path.open("rb") as fh:
        head = fh.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise IntegrityError(f"refusing pickled artifact {key!r} (pickle stream)")
    if head == b"PK\x03\x04":
        with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(path) as archive:
            if any(name.endswith("data.pkl") for name in archive.namelist()):
                raise IntegrityError(f"refusing pickled artifact {key!r} (torch archive)")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ArtifactStore(abc.ABC):
    @abc.abstractmethod
    def put(self, key: str, source: Path) -> ArtifactRef:
        """Store a file under ``key``; returns its reference with sha256."""

    @abc.abstractmethod
    def get(self, key: str, dest: Path, *, sha256: str | None = None, max_bytes: int | None = None) -> Path:
        """Copy the artifact to ``dest``; verify ``sha256`` when given. ``max_bytes``: refuse (``ArtifactTooLarge``)
        an artifact whose stored size is larger, before downloading it (and one that grew while it was read)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted."""

    @abc.abstractmethod
    def presign_get(self, key: str, *, expires_s: int = 900) -> str: ...

    @abc.abstractmethod
    def presign_put(self, key: str, *, expires_s: int = 900) -> str: ...

    def delete(self, key: str) -> None:  # pragma: no cover - optional
        raise NotImplementedError
