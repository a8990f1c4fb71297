"""Run untrusted Python (model answers, record-supplied tests) against tests inside bubblewrap, or not at all.

The isolation is bubblewrap (``bwrap``, Debian package ``bubblewrap``, the tool Flatpak relies on), run
unprivileged; the mechanism (command line, uid, rlimits, kill) is tools/sandbox_bwrap.py, the seccomp filter
tools/sandbox_seccomp.py. Invariants (each is what a case in tests/tools/test_sandbox*.py attacks):

- **Fail closed.** ``probe_isolation()`` (cached per interpreter) runs a tiny probe through the very command
  line real runs use and checks that it cannot reach a loopback TCP/UDP/unix listener, see a variable planted
  in our environment, or read a file planted on the host. When that cannot be shown (no ``bwrap``, user
  namespaces refused, e.g. ``RestrictNamespaces=yes`` or ``user.max_user_namespaces=0``), ``run_python`` does
  not run the code: it returns ``SandboxOutcome.NOT_EVALUATED`` with the reason. It never runs unisolated.
  A run whose sandbox bwrap could not set up (it reports its child's pid before the code starts) is
  NOT_EVALUATED too: nothing the code does can produce that outcome.
- **Namespaces.** New user, pid, net, mount, ipc and uts namespaces (``--unshare-*``), ``--cap-drop ALL``,
  ``--new-session`` (no TIOCSTI into our terminal), ``--die-with-parent``, and a seccomp filter
  (tools/sandbox_seccomp.py) that refuses nested user namespaces, keyrings, bpf, perf and io_uring.
- **No secrets.** ``--clearenv``: the child sees ``PATH``, ``HOME``, ``LANG`` and what bwrap/Python add
  (``PWD``, ``LC_CTYPE``). No ``/proc`` is mounted (so no ``/proc/<daemon>/environ``; a fresh procfs is also
  refused under systemd's ``ProtectKernelTunables``), no ``/etc``, no home, no data dir, no
  ``$CREDENTIALS_DIRECTORY``: the root is an empty read-only tmpfs with only ``/usr`` bound read-only.
- **Runs as nobody, never as root.** When the daemon is root (with CAP_SETUID) bwrap is started as
  ``nobody``; otherwise as the daemon's own (non-root) uid, in a user namespace of its own.
- **Writes stay inside.** The work dir ``/sandbox`` (holding only ``solution.py`` and ``test_solution.py``,
  copied in from memfds), ``/tmp`` and ``/dev/shm`` are private, size-capped tmpfs mounts (``file_size_mb``
  each); ``/`` and ``/dev`` are remounted read-only, ``/usr`` is read-only. The only host files are our two
  unlinked temp files for stdout/stderr, which RLIMIT_FSIZE bounds.
- **Bounded resources.** The in-sandbox runner sets rlimits before any untrusted code runs: CPU seconds
  (SIGXCPU, then SIGKILL), address space, file size, open files, core=0, and processes. RLIMIT_NPROC is
  counted per (user namespace, uid) on Linux >= 5.14, so each sandbox gets its own process budget; the hard
  limits cannot be raised again without CAP_SYS_RESOURCE in the initial namespace.
- **Wall clock.** On timeout the sandbox's pid-1 (bwrap's init) is SIGKILLed through a pidfd, which makes the
  kernel kill every process in its pid namespace (``setsid`` escapees included); then bwrap's own process
  group is killed and reaped. Nothing started here outlives ``run_python``. (If the daemon itself is killed,
  ``--die-with-parent`` does not cover the gap between the daemon and bwrap; under systemd the unit's cgroup
  is killed with the daemon.)
- **Pass means the runner finished.** ``passed`` needs exit status 0 *and* a per-run nonce line that the
  runner prints only after every test ran; a solution that calls ``os._exit(0)`` at import does not pass.
  (Code in the same process could in principle dig the nonce out of memory; this guards against accidents
  and reward hacking, not a determined adversary — the isolation above is what contains those.)

The interpreter inside is Debian's ``/usr/bin/python3`` (``SANDBOX_PYTHON``), bound read-only with the rest of
``/usr``: the daemon's own venv usually lives under a root-only home that a non-root bwrap cannot bind, and
code under test needs only the standard library. Interpreters outside ``/usr`` are refused by the probe.

Tests are a Python file: top-level ``assert`` statements and/or ``test*`` functions (called with no
arguments, in definition order); it imports the candidate as ``solution``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from tools import sandbox_seccomp
from tools.sandbox_bwrap import SandboxLimits, bwrap, launch, run_as, signal_of

logger = logging.getLogger(__name__)

__all__ = [
    "SANDBOX_PYTHON",
    "Isolation",
    "SandboxLimits",
    "SandboxOutcome",
    "SandboxResult",
    "probe_isolation",
    "run_python",
]

SANDBOX_PYTHON = "/usr/bin/python3"
_PASS_MARKER = "LP-SANDBOX-PASS"

# The in-sandbox driver. The nonce arrives on stdin and lives only in a local, so the candidate's module-level
# code cannot print the pass line by accident.
_RUNNER = r"""
import sys
def _main():
    nonce = sys.stdin.readline().strip()
    sys.path.insert(0, '.')
    # What runpy.run_path does (the tests become __main__), without importing runpy; traceback is imported
    # only on failure: ~15 ms less start-up per run.
    main = type(sys)('__main__')
    main.__file__ = 'test_solution.py'
    main.__builtins__ = __builtins__
    sys.modules['__main__'] = main
    ns = main.__dict__
    try:
        with open('test_solution.py', encoding='utf-8') as f:
            source = f.read()
        exec(compile(source, 'test_solution.py', 'exec'), ns)
    except BaseException:
        import traceback
        traceback.print_exc()
        return 1
    failed = 0
    for name, fn in list(ns.items()):
        if name.startswith('test') and callable(fn) and getattr(fn, '__module__', None) == '__main__':
            try:
                fn()
            except BaseException:
                import traceback
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

# The isolation probe: tries what an attacker would, prints what it got. argv after the limits: env var name,
# planted file, tcp port, udp port, unix socket path.
_PROBE = r"""
import json, os, socket, sys
var, path, tcp, udp, unix = sys.argv[6:11]
got = {"env": var in os.environ, "proc": os.path.exists("/proc/1/environ")}
try:
    open(path).read()
    got["file"] = True
except OSError:
    got["file"] = False
for name, family, addr in (("tcp", socket.AF_INET, ("127.0.0.1", int(tcp))), ("unix", socket.AF_UNIX, unix)):
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(addr)
            s.send(b"probe")
        got[name] = True
    except OSError:
        got[name] = False
try:  # a datagram "succeeds" with or without a listener: only the listener can tell
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"probe", ("127.0.0.1", int(udp)))
except OSError:
    pass
print(json.dumps(got))
"""


class SandboxOutcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"  # tests failed, the code raised, or it exited before the runner finished
    TIMED_OUT = "timed_out"  # the wall clock ran out; the whole sandbox was killed
    KILLED = "killed"  # a signal, usually the CPU or memory limit
    NOT_EVALUATED = "not_evaluated"  # isolation could not be established: the code was not run


@dataclass(frozen=True)
class Isolation:
    """Whether untrusted code can be contained here. ``ok`` False means runs return NOT_EVALUATED."""

    ok: bool
    mechanism: str  # "bwrap" when ok, else "none"
    reason: str  # what was shown, or why it could not be
    python: str
    uid: int | None  # the uid bwrap runs as (outside its namespace); None when unknown
    probe_ms: float

    @property
    def degraded(self) -> bool:
        return not self.ok


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
    outcome: SandboxOutcome

    @property
    def evaluated(self) -> bool:
        """False when the code was not run (isolation unavailable): count the item as not evaluated."""
        return self.outcome is not SandboxOutcome.NOT_EVALUATED


def _not_evaluated(reason: str) -> SandboxResult:
    return SandboxResult(
        passed=False,
        exit_code=None,
        timed_out=False,
        killed=False,
        stdout="",
        stderr="",
        network_isolated=False,
        duration_s=0.0,
        detail=f"not evaluated: {reason}",
        outcome=SandboxOutcome.NOT_EVALUATED,
    )


class _Listeners:
    """Loopback TCP, UDP and unix-socket listeners that record whether anything reached them."""

    def __init__(self, directory: str) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix_path = os.path.join(directory, "probe.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        self.unix.listen()
        os.chmod(self.unix_path, 0o777)  # reachable by the sandbox uid were it not isolated

    def reached(self) -> list[str]:
        hit = []
        for name, sock in (("tcp", self.tcp), ("udp", self.udp), ("unix", self.unix)):
            if select.select([sock], [], [], 0)[0]:
                hit.append(name)
        return hit

    def close(self) -> None:
        for sock in (self.tcp, self.udp, self.unix):
            sock.close()


def _probe(python: str) -> tuple[bool, str, int | None]:
    if not sys.platform.startswith("linux"):
        return False, f"the sandbox needs Linux namespaces; this is {sys.platform}", None
    if bwrap() is None:
        return False, "bwrap is not installed (apt-get install bubblewrap)", None
    if sandbox_seccomp.program() is None:
        return False, f"no seccomp filter for this architecture ({platform.machine()})", None
    real = os.path.realpath(python)
    if not real.startswith("/usr/") or not os.access(real, os.X_OK):
        return False, f"interpreter {python} is not an executable under /usr (only /usr is bound)", None
    as_user = run_as()
    uid = as_user[0] if as_user else os.geteuid()
    var = f"LP_SANDBOX_PROBE_{secrets.token_hex(4).upper()}"
    directory = tempfile.mkdtemp(prefix="lp-sandbox-probe-")
    listeners: _Listeners | None = None
    try:
        os.chmod(directory, 0o755)  # the planted file is readable by the sandbox uid were it visible
        planted = os.path.join(directory, "planted-secret")
        Path(planted).write_text("planted")
        os.chmod(planted, 0o644)
        listeners = _Listeners(directory)
        argv = [var, planted, str(listeners.tcp.getsockname()[1]), str(listeners.udp.getsockname()[1])]
        argv.append(listeners.unix_path)
        # Only the planted variable: bwrap itself (trusted) must not carry the daemon's secrets either, since
        # other processes of its uid could read its /proc/<pid>/environ while it runs.
        env = {"PATH": "/usr/bin:/bin", var: "planted"}
        limits = SandboxLimits(cpu_seconds=5, wall_seconds=15, memory_mb=256, max_processes=8)
        try:
            raw = launch(python, _PROBE, argv, limits, {}, b"", env)
        except OSError as exc:
            return False, f"bwrap could not be started as uid {uid}: {exc}", uid
        if not raw.started or raw.returncode != 0:
            why = raw.stderr.strip().splitlines()[-1:] or [f"exit {raw.returncode}"]
            return False, f"bwrap refused to build the sandbox as uid {uid}: {why[0]}", uid
        try:
            seen = json.loads(raw.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return False, f"the isolation probe printed no verdict: {raw.stdout[-200:]!r} {raw.stderr[-200:]!r}", uid
        leaks = sorted({k for k, v in seen.items() if v} | set(listeners.reached()))
        if leaks:
            return False, f"the isolation probe reached what it must not: {', '.join(leaks)}", uid
        return True, f"bwrap: user, pid, net, mount, ipc, uts namespaces; no caps; seccomp; runs as uid {uid}", uid
    finally:
        if listeners is not None:
            listeners.close()
        shutil.rmtree(directory, ignore_errors=True)


@lru_cache(maxsize=8)
def probe_isolation(python: str = SANDBOX_PYTHON) -> Isolation:
    """Whether network, filesystem and secret isolation can be established here; probed once per interpreter
    per process (``probe_isolation.cache_clear()`` forgets). Never raises."""
    start = time.monotonic()
    try:
        ok, reason, uid = _probe(python)
    except OSError as exc:  # no temp dir, no loopback listener: then nothing can be shown either
        ok, reason, uid = False, f"the isolation probe could not be set up: {exc}", None
    isolation = Isolation(ok, "bwrap" if ok else "none", reason, python, uid, (time.monotonic() - start) * 1000)
    if ok:
        logger.info("sandbox isolation established: %s (probe %.0f ms)", reason, isolation.probe_ms)
    else:
        logger.error("SANDBOX DEGRADED: %s; untrusted code will not be run (counted as not evaluated)", reason)
    return isolation


def run_python(code: str, tests: str, limits: SandboxLimits, *, python: str = SANDBOX_PYTHON) -> SandboxResult:
    """Run ``tests`` against ``code`` (importable as ``solution``) under ``limits`` in bubblewrap. Never raises
    for anything the code does. When isolation cannot be established the code is not run and the outcome is
    ``NOT_EVALUATED`` (``passed`` False, ``evaluated`` False)."""
    isolation = probe_isolation(python)
    if not isolation.ok:
        return _not_evaluated(f"sandbox isolation unavailable: {isolation.reason}")
    nonce = secrets.token_hex(16)
    files = {"solution.py": code, "test_solution.py": tests}
    try:
        raw = launch(python, _RUNNER, [], limits, files, nonce.encode() + b"\n", {"PATH": "/usr/bin:/bin"})
    except OSError as exc:
        logger.error("sandbox: bwrap could not be started: %s", exc)
        return _not_evaluated(f"bwrap could not be started: {exc}")
    if not raw.started:
        logger.error("sandbox: bwrap did not set up the sandbox: %s", raw.stderr.strip()[-300:])
        return _not_evaluated(f"bwrap did not set up the sandbox: {raw.stderr.strip()[-200:]}")
    notes = ["network allowed by limits"] if limits.network else []
    marker_ok = f"{_PASS_MARKER} {nonce}" in raw.stdout.splitlines()
    sig = signal_of(raw.returncode)
    if raw.timed_out:
        outcome = SandboxOutcome.TIMED_OUT
        notes.insert(0, f"killed after the {limits.wall_seconds:g}s wall-clock limit")
    elif sig is not None:
        outcome = SandboxOutcome.KILLED
        why = " (CPU or memory limit)" if sig in (signal.SIGXCPU, signal.SIGKILL) else ""
        notes.insert(0, f"killed by {sig.name}{why}")
    elif raw.returncode == 0 and marker_ok:
        outcome = SandboxOutcome.PASSED
        notes.insert(0, "all tests passed")
    else:
        outcome = SandboxOutcome.FAILED
        early = raw.returncode == 0
        notes.insert(
            0, "exited 0 before the test runner finished" if early else f"tests failed (exit {raw.returncode})"
        )
    return SandboxResult(
        passed=outcome is SandboxOutcome.PASSED,
        exit_code=None if sig is not None or raw.timed_out else raw.returncode,
        timed_out=raw.timed_out,
        killed=outcome in (SandboxOutcome.TIMED_OUT, SandboxOutcome.KILLED),
        stdout=raw.stdout.replace(f"{_PASS_MARKER} {nonce}", _PASS_MARKER),
        stderr=raw.stderr,
        network_isolated=not limits.network,
        duration_s=raw.duration_s,
        detail="; ".join(notes),
        outcome=outcome,
    )
