"""One gateway per port: the exclusive locks that keep a second process off a live gateway's spool and figures.

A second ``learning-pilot gateway`` on a port that one already serves (by hand next to the systemd unit, or a
second ``--workers`` supervisor, which ``SO_REUSEPORT`` would let bind the same port) would otherwise "recover"
the live process's half-written spool segments, ingest the same segments twice over, and wipe its workers'
/metrics figures. It now stops before touching any of them, with an error naming the holder.

``flock`` locks belong to the open file: the kernel releases them when the process dies (``kill -9`` included),
so a restart or a replacement worker never finds a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import weakref
from pathlib import Path

from pilot.errors import InUseError


class ProcessLock:
    def __init__(self, path: Path, what: str) -> None:
        """Take the exclusive lock on ``path`` (created 0600, holding the holder's pid) or raise ``InUseError``."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InUseError(
                f"{what} is in use by another gateway process (pid {holder}, lock {path}): one gateway per port; "
                "stop that one, or give this one another --port"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._finalizer = weakref.finalize(self, _close, fd)  # a lock dropped without release() is released too

    def release(self) -> None:
        self._finalizer()


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
