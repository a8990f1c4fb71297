"""The rented host's sandbox for generated code: run a line's tests against a completion, count what passed.

jobs/ cannot import tools/sandbox.py (the control plane's bubblewrap sandbox), so this is a compact one for the
GRPO reward. Two kinds:

- ``bwrap``: bubblewrap with new user, pid, net, ipc and uts namespaces, ``--clearenv``, ``--die-with-parent``,
  ``--new-session``, ``/usr`` read-only, the two source files bound read-only at ``/src`` and a private tmpfs
  work dir ``/work`` (the cwd). Usable when ``bwrap`` is on PATH and a probe run through the same command line
  passes its tests and cannot reach a loopback listener nor see a variable of ours.
- ``process``: a child in its own session (process group), a cleared environment, a private temp cwd,
  rlimits (CPU, address space, file size, processes, core 0), a wall-clock SIGKILL of its whole process group.
  Weaker isolation on purpose (docs/reinforcement.md: the host holds no credentials, the reward only steers
  training, the control plane evaluates the candidate again in its own sandbox and gates it).

``auto`` picks bwrap when its probe passes, else process; ``bwrap`` asked for but unusable is a JobError (fail
closed). Either way a root host runs the child as ``nobody`` (``Popen(user=...)``, no ``preexec_fn``: the job has
threads), so RLIMIT_NPROC applies (root is exempt from it).

Tests are a Python file (as tools/sandbox.py runs them): top-level ``assert`` statements and/or ``test*``
functions called without arguments, importing the candidate as ``solution``. The top-level asserts count as
one test, each ``test*`` function as one. The runner executes the file statement by statement: a failing
top-level assert fails that one test and the rest still runs; any other failing statement (the import of a
solution that does not compile, a crash at import) scores 0 of total. Counts are believed only from a line
carrying a per-run nonce that the runner prints after every test ran (the nonce comes on stdin and lives in a
local), so ``os._exit(0)`` at import or in a test scores 0. This guards against accidents and reward hacking
by a small policy, not a determined adversary: the control plane's gate is what a candidate must pass.
"""

from __future__ import annotations

import ast
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from jobs.common import JobConfigError, JobError

KINDS = ("auto", "bwrap", "process")
_MARKER = "LP-HOST-SANDBOX-DONE"
_NOBODY = 65534
_BWRAP_PYTHON = "/usr/bin/python3"

# argv: src dir, cpu s, address space MiB, file size MiB, processes. Sets the rlimits before any untrusted code.
_RUNNER = r"""
import ast, resource, sys
def _main():
    nonce = sys.stdin.readline().strip()
    src, cpu, mem, fsize, nproc = sys.argv[1], *map(int, sys.argv[2:6])
    for lim, val in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, mem << 20), (resource.RLIMIT_CORE, 0),
                     (resource.RLIMIT_FSIZE, fsize << 20), (resource.RLIMIT_NPROC, nproc)):
        resource.setrlimit(lim, (val, val))
    sys.path.insert(0, src)
    main = type(sys)('__main__')
    main.__file__ = 'test_solution.py'
    main.__builtins__ = __builtins__
    sys.modules['__main__'] = main
    ns = main.__dict__
    with open(src + '/test_solution.py', encoding='utf-8') as f:
        tree = ast.parse(f.read())
    has_asserts = any(isinstance(s, ast.Assert) for s in tree.body)
    asserts_ok = True
    for stmt in tree.body:
        code = compile(ast.Module([stmt], []), 'test_solution.py', 'exec')
        try:
            exec(code, ns)
        except AssertionError:
            if not isinstance(stmt, ast.Assert):
                return 3
            asserts_ok = False
        except BaseException:
            return 3
    passed, total = int(has_asserts and asserts_ok), int(has_asserts)
    for name, fn in list(ns.items()):
        if name.startswith('test') and callable(fn) and getattr(fn, '__module__', None) == '__main__':
            total += 1
            try:
                fn()
                passed += 1
            except BaseException:
                pass
    sys.stdout.flush()
    sys.stdout.write('\nMARKER %s %d %d\n' % (nonce, passed, total))
    sys.stdout.flush()
    return 0
sys.exit(_main())
""".replace("MARKER", _MARKER)


@dataclass(frozen=True)
class Limits:
    wall_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_size_mb: int = 16
    processes: int = 32


@dataclass(frozen=True)
class TestRun:
    passed: int
    total: int
    outcome: str  # "ran" (the runner finished; passed/total hold), "error" (crashed, exited early), "timeout"
    duration_s: float

    @property
    def reward(self) -> float:
        """Fraction of tests passed; 0 when the runner did not finish (compile error, crash, timeout)."""
        return self.passed / self.total if self.outcome == "ran" and self.total else 0.0


def count_tests(tests: str) -> int:
    """How many tests a test file holds (top-level asserts = one, each ``test*`` function one); SyntaxError
    propagates. For validating train lines before any run."""
    body = ast.parse(tests).body
    funcs = {
        s.name for s in body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef) and s.name.startswith("test")
    }
    return int(any(isinstance(s, ast.Assert) for s in body)) + len(funcs)


def _user_tasks() -> int:
    """Tasks (threads count: RLIMIT_NPROC counts them) of our uid, when not root: the process budget is on top."""
    if os.geteuid() == 0:
        return 0
    n = 0
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == os.getuid():
                n += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return n


def _process_python() -> str:
    """The system interpreter when there is one (the tests need only the standard library, and a venv under a
    root-only home is not executable by ``nobody``), else our own."""
    return _BWRAP_PYTHON if Path(_BWRAP_PYTHON).is_file() else sys.executable


def _bwrap_argv(src: str) -> list[str]:
    argv = ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    argv += ["--die-with-parent", "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin"]
    argv += ["--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64"]
    argv += ["--symlink", "usr/bin", "/bin", "--dev", "/dev", "--ro-bind", src, "/src", "--tmpfs", "/work"]
    return [*argv, "--chdir", "/work", _BWRAP_PYTHON]


class HostSandbox:
    """Runs test files against completions; ``kind`` is "bwrap" or "process" once resolved."""

    def __init__(self, kind: str = "auto", *, limits: Limits | None = None, workers: int = 2) -> None:
        if kind not in KINDS:
            raise JobConfigError(f"sandbox must be one of {', '.join(KINDS)}; got {kind!r}")
        self.limits = limits or Limits()
        self.workers = workers
        self.fallback_reason: str | None = None
        if kind == "process":
            self.kind = "process"
        else:
            ok, why = probe_bwrap()
            if not ok and kind == "bwrap":
                raise JobError(f"sandbox 'bwrap' was asked for but is unusable: {why}")
            self.kind = "bwrap" if ok else "process"
            if not ok:
                self.fallback_reason = why

    def run(self, code: str, tests: str) -> TestRun:
        return _run_one(self.kind, code, tests, self.limits)

    def run_many(self, pairs: list[tuple[str, str]]) -> list[TestRun]:
        """(code, tests) pairs, ``workers`` at a time; results in order."""
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(lambda p: self.run(*p), pairs))


def _run_one(kind: str, code: str, tests: str, limits: Limits) -> TestRun:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="lp-grpo-"))
    try:
        src = tmp / "src"
        src.mkdir()
        (src / "solution.py").write_text(code, encoding="utf-8")
        (src / "test_solution.py").write_text(tests, encoding="utf-8")
        os.chmod(tmp, 0o755)
        os.chmod(src, 0o755)
        nproc = limits.processes + _user_tasks()
        rl = [str(limits.cpu_s), str(limits.memory_mb), str(limits.file_size_mb), str(nproc)]
        if kind == "bwrap":
            argv = [*_bwrap_argv(str(src)), "-I", "-c", _RUNNER, "/src", *rl]
            cwd, env = str(tmp), {"PATH": "/usr/bin:/bin"}
        else:
            work = tmp / "work"
            work.mkdir()
            if os.geteuid() == 0:
                os.chown(work, _NOBODY, _NOBODY)
            argv = [_process_python(), "-I", "-S", "-c", _RUNNER, str(src), *rl]
            cwd, env = str(work), {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8"}
        nonce = secrets.token_hex(16)
        with tempfile.TemporaryFile() as out:
            root = os.geteuid() == 0
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.DEVNULL, cwd=cwd, env=env,
                start_new_session=True, close_fds=True, user=_NOBODY if root else None,
                group=_NOBODY if root else None, extra_groups=[] if root else None,
            )  # fmt: skip
            timed_out = False
            try:
                assert proc.stdin is not None
                proc.stdin.write(nonce.encode() + b"\n")
                proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc)
            out.seek(max(0, out.seek(0, os.SEEK_END) - 4096))
            tail = out.read().decode("utf-8", "replace").splitlines()
        duration = time.monotonic() - started
        if timed_out:
            return TestRun(0, 0, "timeout", duration)
        for line in reversed(tail):
            parts = line.split()
            if proc.returncode == 0 and len(parts) == 4 and parts[:2] == [_MARKER, nonce]:
                return TestRun(int(parts[2]), int(parts[3]), "ran", duration)
        return TestRun(0, 0, "error", duration)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group (bwrap: its pid namespace dies with its init), then reap."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@lru_cache(maxsize=1)
def probe_bwrap() -> tuple[bool, str]:
    """(usable, reason): bwrap is on PATH and a probe through the real command line passes its tests, sees none
    of our environment and cannot connect to a loopback listener of ours."""
    if shutil.which("bwrap") is None:
        return False, "bwrap is not on PATH"
    if not Path(_BWRAP_PYTHON).is_file():
        return False, f"{_BWRAP_PYTHON} is missing"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        tests = (
            "import os, socket\nfrom solution import f\nassert f() == 1\n"
            "assert set(os.environ) <= {'PATH', 'PWD', 'LC_CTYPE'}, sorted(os.environ)\n"
            f"def test_no_network():\n    s = socket.socket()\n    try:\n        s.connect(('127.0.0.1', {port}))\n"
            "    except OSError:\n        return\n    raise AssertionError('connected')\n"
        )
        result = _run_one("bwrap", "def f():\n    return 1\n", tests, Limits(wall_s=20))
    if result.outcome == "ran" and result.passed == result.total == 2:
        return True, "probe passed"
    return False, f"probe run failed ({result.outcome}, {result.passed}/{result.total} tests)"
