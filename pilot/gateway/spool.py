"""The gateway's local spool: calls wait here, on the gateway's own disk, until they are ingested into the store.

Invariants:
- ``append`` never blocks and never raises: it puts the call in memory, or, when the spool is full (more than
  ``max_bytes`` on disk, or more than ``max_pending`` calls waiting in memory), drops it and counts the drop. A
  request never waits on the disk or the store.
- The writer thread turns what is waiting into one segment per fsync interval: written to ``<name>.tmp``,
  fsynced, renamed to ``<name>.jsonl`` (a complete segment); a ``kill -9`` loses at most the calls of the last
  interval. The directory is 0700 and every file 0600: segments hold raw (unscrubbed) text.
- A segment is deleted only after its calls are committed to the store (``done``). A segment left by a crashed
  process (``.jsonl``, or a ``.tmp`` whose fsync may not have finished) is picked up at start; a torn last line is
  discarded and counted (``recovered``/``torn``), and start-up says how many.
- One process owns a spool directory: the owner holds ``.lock`` (pilot/gateway/locks.py) from before recovery
  until ``close``, so a second gateway on the same port stops instead of recovering the live one's segments.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pilot.gateway.locks import ProcessLock

logger = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
LOCK_NAME = ".lock"


@dataclass
class SpoolCounters:
    spooled: int = 0  # calls written and fsynced
    dropped_full: int = 0  # refused because the spool was full
    dropped_error: int = 0  # lost because the disk refused the write
    recovered: int = 0  # calls found at start, left by an earlier process
    torn: int = 0  # partial lines discarded at start


def _line(call: dict[str, Any]) -> bytes:
    """One call as a JSONL line: orjson (this thread holds the GIL the event loop needs), else the standard
    library for what orjson refuses (an integer over 64 bits in a request)."""
    try:
        return orjson.dumps(call, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return (json.dumps(call, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


_LONG_DIGITS = re.compile(rb"\d{20}")


def _parse(line: bytes) -> Any:
    """orjson, or the standard library where orjson would change a value (an integer over 64 bits)."""
    if not _LONG_DIGITS.search(line):
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
    return json.loads(line)


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        fsync_interval_s: float = 0.2,
        max_bytes: int = 512 << 20,
        max_pending: int = 200_000,
        recover: bool = True,
    ) -> None:
        self.directory = directory
        self.fsync_interval_s = fsync_interval_s
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self.counters = SpoolCounters()
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._bytes = 0
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flushed = threading.Condition()
        self._thread: threading.Thread | None = None
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self._owner: ProcessLock | None = None
        if recover:  # the gateway's own spool; its ingester process only reads complete segments
            self._owner = ProcessLock(directory / LOCK_NAME, f"The spool {directory}")
            self._recover()

    # -- the hot path -----------------------------------------------------------------------------------------
    def append(self, call: dict[str, Any]) -> bool:
        if len(self._pending) >= self.max_pending or self._bytes >= self.max_bytes:
            self.counters.dropped_full += 1
            return False
        self._pending.append(call)
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def bytes_on_disk(self) -> int:
        return self._bytes

    # -- the writer -------------------------------------------------------------------------------------------
    def start(self) -> Spool:
        self._thread = threading.Thread(target=self._run, name="gateway-spool", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Write what is waiting and stop the writer (a clean shutdown loses nothing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()

    def close(self) -> None:
        """Hand the directory over: another process may own it from now on (after ``stop`` and the last ingest)."""
        if self._owner is not None:
            self._owner.release()

    def _run(self) -> None:
        while not self._stop.wait(self.fsync_interval_s):
            if not self.flush():
                self._bytes = self._measure()  # nothing written (maybe all dropped): see what the ingester freed

    def flush(self) -> int:
        """Write and fsync one segment of everything waiting; returns how many calls it holds."""
        with self._lock:
            calls: list[dict[str, Any]] = []
            while self._pending:
                calls.append(self._pending.popleft())
            if not calls:
                return 0
            self._seq += 1
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:08d}"
            tmp = self.directory / f"{name}.tmp"
            data = b"".join([_line(c) for c in calls])
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, tmp.with_suffix(SEGMENT_SUFFIX))
                self._fsync_dir()
            except OSError as exc:
                self.counters.dropped_error += len(calls)
                logger.warning("Spool write to %s failed; %d calls not recorded: %s", self.directory, len(calls), exc)
                return 0
            self.counters.spooled += len(calls)
        self._bytes = self._measure()  # the ingester (another process) deletes what it stored
        with self._flushed:
            self._flushed.notify_all()
        return len(calls)

    def wait_flushed(self, timeout: float) -> None:
        with self._flushed:
            self._flushed.wait(timeout)

    def _measure(self) -> int:
        total = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name == LOCK_NAME:
                    continue
                with contextlib.suppress(FileNotFoundError):  # ingested and deleted meanwhile
                    total += entry.stat().st_size
        return total

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- the reader (the ingester) ----------------------------------------------------------------------------
    def segments(self) -> list[Path]:
        """Complete segments, oldest first."""
        return sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}"))

    def read(self, segment: Path) -> list[dict[str, Any]]:
        calls = []
        with segment.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # only a recovered segment can end in a torn line, and _recover already cut it
                calls.append(_parse(line))
        return calls

    def done(self, segment: Path) -> None:
        """The segment's calls are in the store: delete it."""
        with contextlib.suppress(FileNotFoundError):  # another ingester (a clean stop, a restart) took it first
            segment.unlink()

    def _recover(self) -> None:
        for tmp in sorted(self.directory.glob("*.tmp")):
            raw = tmp.read_bytes()
            keep, _, tail = raw.rpartition(b"\n")
            good = [line for line in (keep + b"\n").splitlines() if line.strip()] if keep else []
            valid = []
            for line in good:
                try:
                    json.loads(line)
                except ValueError:
                    self.counters.torn += 1
                    continue
                valid.append(line)
            if tail.strip():
                self.counters.torn += 1
            if valid:
                target = tmp.with_suffix(SEGMENT_SUFFIX)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, b"".join(line + b"\n" for line in valid))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            tmp.unlink()
        for segment in self.segments():
            os.chmod(segment, 0o600)
            with segment.open("rb") as fh:
                self.counters.recovered += sum(1 for _ in fh)
        self._bytes = self._measure()
        if self.counters.recovered or self.counters.torn:
            logger.warning(
                "Spool %s: recovered %d calls left by an earlier gateway process; %d torn lines discarded. A process "
                "killed without a clean stop also loses the calls of its last fsync interval (%.0f ms), which no "
                "file holds.",
                self.directory,
                self.counters.recovered,
                self.counters.torn,
                self.fsync_interval_s * 1000,
            )
