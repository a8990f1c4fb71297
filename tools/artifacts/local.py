"""The local-directory artifact store (the embedded default).

Files are written to a temporary name and renamed into place, so a reader never sees half an artifact; ``get``
verifies sha256 before the destination appears.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from tools.artifacts.base import ArtifactRef, ArtifactStore, check_key, refuse_pickled, sha256_file
from tools.errors import ArtifactNotFound, ArtifactTooLarge, IntegrityError


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise IntegrityError(f"artifact key {key!r} escapes the store")
        return path

    def put(self, key: str, source: Path) -> ArtifactRef:
        dest = self._path(key)
        refuse_pickled(key, source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".put-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            shutil.copyfile(source, tmp)
            digest = sha256_file(tmp)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return ArtifactRef(key=check_key(key), uri=dest.as_uri(), sha256=digest, size=dest.stat().st_size)

    def get(self, key: str, dest: Path, *, sha256: str | None = None, max_bytes: int | None = None) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise ArtifactNotFound(f"no artifact {key!r}")
        if max_bytes is not None and (size := src.stat().st_size) > max_bytes:
            raise ArtifactTooLarge(f"artifact {key!r} has {size} bytes, over the {max_bytes} accepted")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.partial")
        shutil.copyfile(src, tmp)
        if max_bytes is not None and (size := tmp.stat().st_size) > max_bytes:
            tmp.unlink(missing_ok=True)
            raise ArtifactTooLarge(f"artifact {key!r} has {size} bytes, over the {max_bytes} accepted")
        if sha256 is not None and (actual := sha256_file(tmp)) != sha256:
            tmp.unlink(missing_ok=True)
            raise IntegrityError(f"artifact {key!r} has sha256 {actual}, expected {sha256}")
        tmp.replace(dest)
        return dest

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root
        keys = [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()]
        return sorted(k for k in keys if k.startswith(prefix) and not Path(k).name.startswith(".put-"))

    def presign_get(self, key: str, *, expires_s: int = 900) -> str:
        return self._path(key).as_uri()

    def presign_put(self, key: str, *, expires_s: int = 900) -> str:
        return self._path(key).as_uri()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()
