"""Start one bubblewrap sandbox, feed it, bound it in time, and reap everything it started.

tools/sandbox.py is the interface (what is isolated, the probe, the outcome); this module is the mechanism: the
bwrap command line, the uid it runs as, the rlimits prelude the in-sandbox Python runs before anything else,
the memfds that carry files in, and the pidfd kill of the sandbox's pid namespace. See tools/sandbox.py for
the invariants and docs/sandbox.md for what the host needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import pwd
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tools import sandbox_seccomp

logger = logging.getLogger(__name__)

__all__ = ["WORKDIR", "Raw", "SandboxLimits", "bwrap", "command", "launch", "run_as", "signal_of"]

WORKDIR = "/sandbox"
_TAIL_BYTES = 4096
_BOOT_TIMEOUT_S = 10.0  # bwrap reports its child's pid within milliseconds; this only bounds a hung setup
_MERGED_USR = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")

# Applied by the in-sandbox Python before anything untrusted is read. argv: cpu, address space, file size,
# open files, processes. A limit can only be lowered, so we clamp to the hard limit we were given.
LIMITS_PRELUDE = r"""
import resource as _r, sys as _s
def _apply_limits():
    cpu, mem, fsize, nofile, nproc = (int(v) for v in _s.argv[1:6])
    for what, soft, hard in ((_r.RLIMIT_CPU, cpu, cpu + 1), (_r.RLIMIT_AS, mem, mem),
                             (_r.RLIMIT_FSIZE, fsize, fsize), (_r.RLIMIT_NOFILE, nofile, nofile),
                             (_r.RLIMIT_NPROC, nproc, nproc), (_r.RLIMIT_CORE, 0, 0)):
        cur = _r.getrlimit(what)[1]
        if cur != _r.RLIM_INFINITY:
            soft, hard = min(soft, cur), min(hard, cur)
        _r.setrlimit(what, (soft, hard))
_apply_limits()
del _apply_limits, _r, _s
"""


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 5
    wall_seconds: float = 10
    memory_mb: int = 512
    file_size_mb: int = 16
    max_processes: int = 64
    open_files: int = 256
    network: bool = False  # True shares the host network namespace (trusted code only); all else stays isolated

    def __post_init__(self) -> None:
        if self.cpu_seconds < 1 or self.wall_seconds <= 0 or self.memory_mb < 32:
            raise ValueError(f"unusable sandbox limits: {self}")
        if self.file_size_mb < 1 or self.max_processes < 1 or self.open_files < 16:
            raise ValueError(f"unusable sandbox limits: {self}")


@dataclass(frozen=True)
class Raw:
    started: bool  # bwrap reported its child: the sandbox was set up
    returncode: int
    timed_out: bool
    stdout: str
    stderr: str
    duration_s: float


def bwrap() -> str | None:
    return shutil.which("bwrap") or shutil.which("bwrap", path="/usr/bin:/bin")


def _capabilities() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def run_as() -> tuple[int, int] | None:
    """``(uid, gid)`` of ``nobody`` when we are root and able to switch; None to run bwrap as ourselves."""
    if os.geteuid() != 0:
        return None
    cap_setgid_setuid = (1 << 6) | (1 << 7)
    if _capabilities() & cap_setgid_setuid != cap_setgid_setuid:
        return None  # a root without CAP_SETUID (e.g. in a namespace with caps dropped): bwrap decides
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _root_links() -> list[str]:
    """Recreate /bin, /lib, ... as on the host: symlinks into /usr (merged /usr) or read-only binds."""
    args: list[str] = []
    for name in _MERGED_USR:
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{name}"]
    return args


def command(
    bwrap: str, python: str, script: str, argv: list[str], limits: SandboxLimits, fds: dict[str, int]
) -> list[str]:
    size = str(limits.file_size_mb * 1024 * 1024)
    cmd = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    if not limits.network:
        cmd.append("--unshare-net")
    cmd += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv", "--hostname", "sandbox"]
    cmd += ["--ro-bind", "/usr", "/usr", *_root_links()]
    cmd += ["--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    cmd += ["--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", WORKDIR]
    for name, fd in fds.items():
        cmd += ["--perms", "0644", "--file", str(fd), f"{WORKDIR}/{name}"]
    cmd += ["--remount-ro", "/", "--chdir", WORKDIR]
    cmd += ["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORKDIR, "--setenv", "LANG", "C.UTF-8"]
    rlimits = [
        limits.cpu_seconds,
        limits.memory_mb * 1024 * 1024,
        limits.file_size_mb * 1024 * 1024,
        limits.open_files,
        limits.max_processes,
    ]
    return [*cmd, "--", python, "-I", "-S", "-B", "-c", script, *map(str, rlimits), *argv]


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_info(fd: int, deadline: float) -> int | None:
    """The sandbox's pid-1 (host pid) from bwrap's ``--info-fd``, or None when bwrap closed it without one."""
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        with contextlib.suppress(ValueError):
            return int(json.loads(data)["child-pid"])
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return int(json.loads(data)["child-pid"])
    return None


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _tail(fh: IO[bytes]) -> str:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - _TAIL_BYTES))
    return fh.read().decode("utf-8", errors="replace")


def launch(
    python: str,
    script: str,
    argv: list[str],
    limits: SandboxLimits,
    files: dict[str, str],
    stdin: bytes,
    env: dict[str, str],
) -> Raw:
    """Start bwrap with ``files`` in the work dir, feed ``stdin``, enforce the wall clock, reap everything.
    Raises OSError when bwrap cannot even be executed."""
    bwrap_path = bwrap()
    if bwrap_path is None:
        raise FileNotFoundError("bwrap is not installed (Debian package bubblewrap)")
    bpf = sandbox_seccomp.program()
    if bpf is None:
        raise OSError(f"no seccomp filter for this architecture ({platform.machine()})")
    fds = {name: _memfd(name, text.encode("utf-8")) for name, text in files.items()}
    seccomp_fd = _memfd("seccomp", bpf)
    info_r, info_w = os.pipe()
    as_user = run_as()
    start = time.monotonic()
    timed_out = False
    child_pid: int | None = None
    try:
        cmd = command(bwrap_path, python, LIMITS_PRELUDE + script, argv, limits, fds)
        cmd[1:1] = ["--info-fd", str(info_w), "--seccomp", str(seccomp_fd)]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd="/",
                env=env,
                start_new_session=True,
                close_fds=True,
                pass_fds=(info_w, seccomp_fd, *fds.values()),
                user=as_user[0] if as_user else None,
                group=as_user[1] if as_user else None,
                extra_groups=[] if as_user else None,
            )
            os.close(info_w)
            info_w = -1
            pidfd: int | None = None
            try:
                deadline = start + limits.wall_seconds
                child_pid = _read_info(info_r, start + _BOOT_TIMEOUT_S)
                if child_pid is not None:
                    with contextlib.suppress(OSError):
                        pidfd = os.pidfd_open(child_pid)
                    if pidfd is not None and _parent_of(child_pid) != proc.pid:
                        os.close(pidfd)  # already gone and the pid reused: never signal a stranger
                        pidfd = None
                assert proc.stdin is not None
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(stdin)
                    proc.stdin.close()
                # A pidfd wakes us the moment bwrap exits (Popen.wait(timeout) polls with growing sleeps).
                bwrap_fd = os.pidfd_open(proc.pid)
                try:
                    timed_out = not select.select([bwrap_fd], [], [], max(0.0, deadline - time.monotonic()))[0]
                finally:
                    os.close(bwrap_fd)
            finally:
                # The pid namespace's init first: its death makes the kernel kill everything inside. Then the
                # bwrap monitor's group, then reap it.
                if pidfd is not None:
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    # Readable once init has exited, which the kernel allows only after it killed and reaped
                    # every other process of the namespace.
                    if not select.select([pidfd], [], [], _BOOT_TIMEOUT_S)[0]:
                        logger.warning("sandbox pid %s did not exit after SIGKILL", child_pid)
                    os.close(pidfd)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            duration = time.monotonic() - start
            stdout, stderr = _tail(out), _tail(err)
    finally:
        for fd in (info_r, info_w, seccomp_fd, *fds.values()):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
    return Raw(child_pid is not None, proc.returncode, timed_out, stdout, stderr, duration)


def signal_of(returncode: int) -> signal.Signals | None:
    """bwrap reports a child killed by signal N as exit status 128 + N (a negative code is bwrap itself)."""
    number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    try:
        return signal.Signals(number) if number else None
    except ValueError:
        return None
