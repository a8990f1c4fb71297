"""Run untrusted, model-generated Python against tests, contained.

Invariants (each is what a test in tests/tools/test_sandbox.py attacks):

- **No secrets.** The child gets an empty environment except ``PATH``; when the parent is root the child runs
  as ``nobody`` so it cannot read ``/proc/<parent>/environ`` or root-owned files either.
- **No network.** The child is put in a fresh network namespace (only a downed loopback) via ``unshare(2)``
  in ``preexec_fn``. Where the kernel refuses, ``SandboxResult.network_isolated`` is False, ``detail`` says so
  and a warning is logged: the caller decides whether to trust such a score.
- **Writes stay inside its own directory.** As root we also unshare the mount namespace and mount fresh,
  size-capped tmpfs over ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (the world-writable places ``nobody`` could
  reach); the work directory is bind-mounted back in at ``/tmp/sandbox``. Everything else is protected by the
  ``nobody`` uid and file permissions. The work directory is always removed afterwards.
- **Bounded resources.** rlimits: CPU seconds (SIGXCPU, then SIGKILL), address space, file size, core=0,
  process count. RLIMIT_NPROC counts per *user* and the kernel does not enforce it for root, so we (a) drop
  to ``nobody`` as root, where RLIMIT_NPROC is enforced, and (b) put the child in a fresh ``pids`` cgroup with
  ``pids.max`` when the cgroup tree is writable; after the run every process left in that cgroup is killed,
  including ones that escaped the process group with ``setsid``. Note that RLIMIT_NPROC for ``nobody``
  counts all of ``nobody``'s processes on the machine: concurrent sandboxes share that budget.
- **Wall clock.** The child leads a new session; on timeout SIGKILL goes to the whole process group (and the
  cgroup), then we reap it. Nothing we started outlives ``run_python``.
- **Pass means the runner finished.** ``passed`` needs exit status 0 *and* a per-run nonce line that the
  runner prints only after every test ran; a solution that calls ``os._exit(0)`` at import does not pass.
  (Code in the same process could in principle dig the nonce out of memory; this guards against accidents
  and reward hacking, not a determined adversary — the isolation above is what contains those.)

Tests are a Python file: top-level ``assert`` statements and/or ``test*`` functions (called with no
arguments, in definition order); it imports the candidate as ``solution``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import pwd
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

__all__ = ["SandboxLimits", "SandboxResult", "isolation_support", "run_python"]

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

_TAIL_BYTES = 4096
_PASS_MARKER = "LP-SANDBOX-PASS"
_MOUNTED_WORKDIR = "/tmp/sandbox"
_SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
_CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))

# The in-sandbox driver. The nonce arrives on stdin and lives only in a local, so the candidate's module-level
# code cannot print the pass line by accident.
_RUNNER = r"""
import sys, runpy, traceback
def _main():
    nonce = sys.stdin.readline().strip()
    sys.path.insert(0, '.')
    try:
        ns = runpy.run_path('test_solution.py', run_name='__main__')
    except BaseException:
        traceback.print_exc()
        return 1
    failed = 0
    for name, fn in list(ns.items()):
        if name.startswith('test') and callable(fn) and getattr(fn, '__module__', None) == '__main__':
            try:
                fn()
            except BaseException:
                print('FAILED ' + name, file=sys.stderr)
                traceback.print_exc()
                failed += 1
    if failed:
        return 1
    sys.stdout.flush()
    sys.stdout.write('\n%s %s\n' % (MARKER, nonce))
    sys.stdout.flush()
    return 0
sys.exit(_main())
""".replace("MARKER", repr(_PASS_MARKER))


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 5
    wall_seconds: float = 10
    memory_mb: int = 512
    file_size_mb: int = 16
    max_processes: int = 64
    network: bool = False

    def __post_init__(self) -> None:
        if self.cpu_seconds < 1 or self.wall_seconds <= 0 or self.memory_mb < 32:
            raise ValueError(f"unusable sandbox limits: {self}")
        if self.file_size_mb < 1 or self.max_processes < 1:
            raise ValueError(f"unusable sandbox limits: {self}")


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    exit_code: int | None
    timed_out: bool
    killed: bool
    stdout: str
    stderr: str
    network_isolated: bool
    duration_s: float
    detail: str


@dataclass(frozen=True)
class IsolationSupport:
    """What this machine lets the sandbox do; probed once per process."""

    as_root: bool
    netns: bool
    mountns: bool
    user_namespace: bool
    drop_to_uid: int | None
    drop_to_gid: int | None


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _unshare(flags: int) -> None:
    if _libc().unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _libc().mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _probe(preexec: Callable[[], None]) -> bool:
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", "exit 0"] if os.path.exists("/bin/sh") else [sys.executable, "-c", "pass"],
            preexec_fn=preexec,
            env={},
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (subprocess.SubprocessError, OSError):
        return False
    return proc.returncode == 0


@lru_cache(maxsize=1)
def isolation_support() -> IsolationSupport:
    if not sys.platform.startswith("linux"):
        return IsolationSupport(False, False, False, False, None, None)
    as_root = os.geteuid() == 0
    uid: int | None = None
    gid: int | None = None
    if as_root:
        try:
            entry = pwd.getpwnam("nobody")
            uid, gid = entry.pw_uid, entry.pw_gid
        except KeyError:
            uid, gid = 65534, 65534
        netns = _probe(lambda: _unshare(CLONE_NEWNET))
        mountns = _probe(lambda: _unshare(CLONE_NEWNS))
        return IsolationSupport(True, netns, mountns, False, uid, gid)
    # Unprivileged: a user namespace may grant the capability to make a network namespace.
    userns = _probe(lambda: _unshare(CLONE_NEWUSER | CLONE_NEWNET))
    return IsolationSupport(False, userns, False, userns, None, None)


def _make_cgroup(max_processes: int) -> Path | None:
    """A fresh pids cgroup, or None when no writable pids controller exists (then rlimits alone apply)."""
    name = f"learning-pilot-sandbox-{uuid.uuid4().hex[:12]}"
    for root in _CGROUP_ROOTS:
        if not (root / "cgroup.procs").exists():
            continue
        path = root / name
        try:
            path.mkdir()
        except OSError:
            continue
        try:
            (path / "pids.max").write_text(str(max_processes))
            return path
        except OSError:
            _remove_cgroup(path)
    return None


def _cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _kill_cgroup(path: Path) -> None:
    # Forked children may appear while we kill: repeat until the cgroup is empty (pids.max bounds the work).
    for _ in range(200):
        pids = _cgroup_pids(path)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    logger.warning("sandbox cgroup %s still has processes after kill; they are capped by pids.max", path)


def _remove_cgroup(path: Path) -> None:
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
    logger.warning("could not remove sandbox cgroup %s", path)


def _preexec(limits: SandboxLimits, support: IsolationSupport, cgroup: Path | None) -> Callable[[], None]:
    """Build the function the forked child runs before exec. Order matters: privileged steps come first."""
    cgroup_procs = str(cgroup / "cgroup.procs") if cgroup else None
    isolate_net = not limits.network and support.netns
    isolate_mounts = support.as_root and support.mountns
    tmpfs_opts = f"size={limits.file_size_mb}m,mode=1777"
    memory = limits.memory_mb * 1024 * 1024
    fsize = limits.file_size_mb * 1024 * 1024

    def child() -> None:
        if cgroup_procs:
            fd = os.open(cgroup_procs, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        flags = 0
        if isolate_net:
            flags |= CLONE_NEWNET | (CLONE_NEWUSER if support.user_namespace else 0)
        if isolate_mounts:
            flags |= CLONE_NEWNS
        if flags:
            _unshare(flags)
        if isolate_mounts:
            workdir = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
            _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
            for scratch in _SCRATCH_DIRS:
                if os.path.isdir(scratch):
                    _mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_opts)
            os.mkdir(_MOUNTED_WORKDIR, 0o755)
            _mount(f"/proc/self/fd/{workdir}", _MOUNTED_WORKDIR, None, MS_BIND, None)
            os.close(workdir)
            os.chdir(_MOUNTED_WORKDIR)
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
        if support.drop_to_uid is not None and support.drop_to_gid is not None:
            os.setgroups([])
            os.setgid(support.drop_to_gid)
            os.setuid(support.drop_to_uid)

    return child


def _tail(fh: IO[bytes]) -> str:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - _TAIL_BYTES))
    return fh.read().decode("utf-8", errors="replace")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _candidate_interpreters() -> list[str]:
    found = [os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)]
    for name in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if name and os.path.exists(name):
            found.append(os.path.realpath(name))
    return list(dict.fromkeys(found))


@lru_cache(maxsize=1)
def _interpreter_for(uid: int | None, gid: int | None) -> str | None:
    """The first Python that ``uid`` can actually run (``-I -S``); our own may live under a root-only home."""

    def drop() -> None:
        if uid is not None and gid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

    for candidate in _candidate_interpreters():
        try:
            proc = subprocess.run(
                [candidate, "-I", "-S", "-c", "import runpy, traceback"],
                preexec_fn=drop,
                env={"PATH": "/usr/bin:/bin"},
                cwd="/",
                capture_output=True,
                timeout=20,
                check=False,
            )
        except (subprocess.SubprocessError, OSError):
            continue
        if proc.returncode == 0:
            return candidate
    return None


def run_python(code: str, tests: str, limits: SandboxLimits) -> SandboxResult:
    """Run ``tests`` against ``code`` (importable as ``solution``) under ``limits``. Never raises for
    anything the code does; raises ``OSError`` only if the sandbox itself cannot be set up."""
    support = isolation_support()
    notes: list[str] = []
    python = _interpreter_for(support.drop_to_uid, support.drop_to_gid)
    if python is None and support.drop_to_uid is not None:
        logger.warning("sandbox: no Python interpreter is executable by uid %s; running as root", support.drop_to_uid)
        notes.append(f"RUNNING AS ROOT: no Python interpreter executable by uid {support.drop_to_uid}")
        support = replace(support, drop_to_uid=None, drop_to_gid=None)
        python = _interpreter_for(None, None)
    if python is None:
        raise OSError("sandbox: no usable Python interpreter found")
    network_isolated = not limits.network and support.netns
    if limits.network:
        notes.append("network allowed by limits")
    elif not support.netns:
        notes.append("NETWORK NOT ISOLATED: this machine refused a new network namespace")
        logger.warning(
            "sandbox: cannot create a network namespace here (root=%s); untrusted code runs with network",
            support.as_root,
        )
    cgroup = _make_cgroup(limits.max_processes) if support.as_root else None
    if support.as_root and cgroup is None:
        notes.append("no writable pids cgroup; process count bounded by RLIMIT_NPROC only")

    workdir = Path(tempfile.mkdtemp(prefix="lp-sandbox-"))
    nonce = secrets.token_hex(16)
    start = time.monotonic()
    timed_out = False
    try:
        (workdir / "solution.py").write_text(code, encoding="utf-8")
        (workdir / "test_solution.py").write_text(tests, encoding="utf-8")
        if support.drop_to_uid is not None and support.drop_to_gid is not None:
            os.chown(workdir, support.drop_to_uid, support.drop_to_gid)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [python, "-I", "-S", "-B", "-c", _RUNNER],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env={"PATH": "/usr/bin:/bin"},
                start_new_session=True,
                close_fds=True,
                preexec_fn=_preexec(limits, support, cgroup),
            )
            try:
                assert proc.stdin is not None
                try:
                    proc.stdin.write(nonce.encode() + b"\n")
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                try:
                    proc.wait(timeout=limits.wall_seconds)
                except subprocess.TimeoutExpired:
                    timed_out = True
            finally:
                # Whatever happened, nothing the code started survives: the group first, then the cgroup
                # (which also holds anything that left the group with setsid), then reap the leader.
                _kill_group(proc.pid)
                if cgroup is not None:
                    _kill_cgroup(cgroup)
                proc.wait()
            duration = time.monotonic() - start
            stdout, stderr = _tail(out), _tail(err)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if cgroup is not None:
            _remove_cgroup(cgroup)

    returncode = proc.returncode
    killed = timed_out or returncode < 0
    marker_ok = f"{_PASS_MARKER} {nonce}" in stdout.splitlines()
    passed = returncode == 0 and not timed_out and marker_ok
    if timed_out:
        notes.insert(0, f"killed after the {limits.wall_seconds:g}s wall-clock limit")
    elif returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else "?"
        why = " (CPU or memory limit)" if sig in ("SIGXCPU", "SIGKILL") else ""
        notes.insert(0, f"killed by {sig}{why}")
    elif returncode == 0 and not marker_ok:
        notes.insert(0, "exited 0 before the test runner finished")
    elif returncode != 0:
        notes.insert(0, f"tests failed (exit {returncode})")
    else:
        notes.insert(0, "all tests passed")
    return SandboxResult(
        passed=passed,
        exit_code=None if returncode < 0 else returncode,
        timed_out=timed_out,
        killed=killed,
        stdout=stdout.replace(f"{_PASS_MARKER} {nonce}", _PASS_MARKER),
        stderr=stderr,
        network_isolated=network_isolated,
        duration_s=duration,
        detail="; ".join(notes),
    )
