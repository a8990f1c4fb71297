"""The sandbox contains hostile code and scores it as a failure; a correct solution passes; without isolation
it refuses to run anything.

Each attack is real: a secret in the parent's environment, a listener on 127.0.0.1, a fork bomb, an endless
loop, a 4 GB allocation, a write into a directory outside the sandbox. These run as the test process's user
(root here, so bwrap runs as ``nobody``); tests/tools/test_sandbox_containment.py repeats the attacks as a
non-root daemon user with a data dir and credentials beside it.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tools.sandbox import SandboxLimits, SandboxOutcome, probe_isolation, run_python

FAST = SandboxLimits(cpu_seconds=2, wall_seconds=4, memory_mb=256, max_processes=16)

GOOD_CODE = "def add(a, b):\n    return a + b\n"
ADD_TESTS = "from solution import add\n\nassert add(1, 2) == 3\n\ndef test_more():\n    assert add(-1, 1) == 0\n"


def limits(**overrides: object) -> SandboxLimits:
    values = {**FAST.__dict__, **overrides}
    return SandboxLimits(**values)  # type: ignore[arg-type]


def test_this_machine_can_isolate() -> None:
    # The rest of this file needs a working sandbox: `make unit` installs bubblewrap first.
    isolation = probe_isolation()
    assert isolation.ok, isolation.reason
    assert isolation.mechanism == "bwrap" and not isolation.degraded
    assert isolation.uid != 0  # as root, bwrap runs as nobody


def test_correct_solution_passes() -> None:
    result = run_python(GOOD_CODE, ADD_TESTS, FAST)
    assert result.passed, result
    assert result.outcome is SandboxOutcome.PASSED and result.evaluated
    assert result.exit_code == 0
    assert not result.timed_out and not result.killed
    assert "all tests passed" in result.detail
    assert result.duration_s < FAST.wall_seconds


def test_wrong_solution_fails_with_the_assertion_in_stderr() -> None:
    result = run_python("def add(a, b):\n    return a - b\n", ADD_TESTS, FAST)
    assert not result.passed
    assert result.outcome is SandboxOutcome.FAILED
    assert result.exit_code == 1
    assert "AssertionError" in result.stderr


def test_failing_test_function_fails() -> None:
    tests = "from solution import add\n\ndef test_bad():\n    assert add(2, 2) == 5\n"
    result = run_python(GOOD_CODE, tests, FAST)
    assert not result.passed
    assert "FAILED test_bad" in result.stderr


def test_exiting_zero_early_does_not_pass() -> None:
    result = run_python("import os\nos._exit(0)\n", ADD_TESTS, FAST)
    assert not result.passed
    assert result.exit_code == 0
    assert "before the test runner finished" in result.detail


def test_system_exit_inside_a_test_function_does_not_pass() -> None:
    code = "def add(a, b):\n    raise SystemExit(0)\n"
    result = run_python(code, "from solution import add\n\ndef test_x():\n    add(1, 2)\n", FAST)
    assert not result.passed


def test_environment_secret_is_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LP_FAKE_SECRET", "hunter2-s3cr3t")
    code = (
        "import os\n"
        "def leak():\n"
        "    found = os.environ.get('LP_FAKE_SECRET', '')\n"
        "    try:\n"
        "        found += open(f'/proc/{os.getppid()}/environ').read()\n"
        "    except OSError:\n"
        "        pass\n"
        "    print('ENV', dict(os.environ))\n"
        "    return found\n"
    )
    # The tests only check that *something* leaked, so the secret appears in the output only if it did leak.
    tests = "from solution import leak\n\ndef test_leak():\n    assert leak()\n"
    result = run_python(code, tests, FAST)
    assert not result.passed
    assert "hunter2" not in result.stdout + result.stderr
    assert "ENV {'PATH':" in result.stdout
    seen = ast.literal_eval(next(line for line in result.stdout.splitlines() if line.startswith("ENV "))[4:])
    assert set(seen) <= {"PATH", "HOME", "LANG", "PWD", "LC_CTYPE"}


@pytest.mark.parametrize("where", ["tmp_path", "/etc", "/work-root"])
def test_write_outside_its_directory_is_refused(where: str, tmp_path: Path) -> None:
    parent = {"tmp_path": tmp_path, "/etc": Path("/etc"), "/work-root": Path(__file__).resolve().parents[2]}
    target = parent[where] / f"lp-sandbox-pwned-{os.getpid()}.txt"
    code = f"def write():\n    open({str(target)!r}, 'w').write('x')\n    return True\n"
    result = run_python(code, "from solution import write\n\ndef test_w():\n    assert write()\n", FAST)
    assert not result.passed
    assert "Error" in result.stderr  # PermissionError, or FileNotFoundError behind the private /tmp
    assert not target.exists()


def test_writes_to_shared_tmp_stay_private() -> None:
    name = f"/tmp/lp-sandbox-escape-{os.getpid()}"
    code = f"open({name!r}, 'w').write('x')\n"
    result = run_python(code, "import solution\n", FAST)
    assert result.passed, result  # the write succeeded, but only inside the sandbox's own tmpfs
    assert not os.path.exists(name)


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                received.append(conn.recv(100) or b"<connected>")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()


def test_socket_to_a_loopback_listener_is_blocked(listener: tuple[int, list[bytes]]) -> None:
    port, received = listener
    code = (
        "import socket\n"
        "def call():\n"
        f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "    s.sendall(b'exfiltrated')\n"
        "    return True\n"
    )
    result = run_python(code, "from solution import call\n\ndef test_c():\n    assert call()\n", FAST)
    assert result.network_isolated, result.detail
    assert not result.passed and result.outcome is SandboxOutcome.FAILED
    assert received == []


def test_network_allowed_reaches_the_listener(listener: tuple[int, list[bytes]]) -> None:
    # The control case: the same code connects when limits allow the network, so the test above is meaningful.
    port, received = listener
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"
    result = run_python(code, "import solution\n", limits(network=True))
    assert result.passed, result
    assert not result.network_isolated
    assert "network allowed" in result.detail
    for _ in range(50):
        if received:
            break
        threading.Event().wait(0.05)
    assert received == [b"hi"]


# Other sandboxes (other checkouts' tests) may run as nobody at the same time: ours carry a distinctive
# open-files limit in their argv, so only they are counted.
TAGGED = limits(open_files=16 + 100 + os.getpid() % 800)


def _live_sandbox_processes(uid: int) -> list[str]:
    out = subprocess.run(
        ["ps", "-ww", "-u", str(uid), "-o", "pid=,stat=,args="], capture_output=True, text=True, check=False
    )
    tag = f" {TAGGED.file_size_mb * 1024 * 1024} {TAGGED.open_files} {TAGGED.max_processes}"
    # Killed orphans are zombies until init reaps them; they run nothing, so only live ones count.
    return [line for line in out.stdout.splitlines() if tag in line and line.split()[1][0] != "Z"]


def test_fork_bomb_is_contained_and_cleaned_up() -> None:
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run_python(code, "import solution\n", replace(TAGGED, wall_seconds=2))
    assert not result.passed
    assert result.killed
    uid = probe_isolation().uid
    if uid is not None and uid != os.getuid():
        assert _live_sandbox_processes(uid) == []


def test_setsid_escapee_is_killed() -> None:
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\n"
    result = run_python(code, "import solution\n", TAGGED)
    assert result.passed, result  # the parent finished; the point is what is left behind
    uid = probe_isolation().uid
    if uid is not None and uid != os.getuid():
        assert _live_sandbox_processes(uid) == []


def test_infinite_loop_hits_the_cpu_limit() -> None:
    result = run_python("while True:\n    pass\n", "import solution\n", limits(cpu_seconds=1, wall_seconds=4))
    assert not result.passed
    assert result.killed and not result.timed_out
    assert result.outcome is SandboxOutcome.KILLED
    assert result.exit_code is None
    assert "SIGXCPU" in result.detail or "SIGKILL" in result.detail


def test_sleeping_forever_hits_the_wall_clock() -> None:
    result = run_python("import time\ntime.sleep(60)\n", "import solution\n", limits(wall_seconds=1))
    assert not result.passed
    assert result.timed_out and result.killed
    assert result.outcome is SandboxOutcome.TIMED_OUT
    assert 1 <= result.duration_s < 4


def test_allocating_4gb_fails() -> None:
    result = run_python("buf = bytearray(4 * 1024 ** 3)\n", "import solution\n", FAST)
    assert not result.passed
    assert "MemoryError" in result.stderr or result.killed


def test_huge_output_is_capped_to_a_tail() -> None:
    code = "import sys\nfor _ in range(10000):\n    sys.stdout.write('x' * 100 + '\\n')\n"
    result = run_python(code, "import solution\n", FAST)
    assert result.passed
    assert len(result.stdout) <= 4096


def test_temp_dirs_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    tmp_path.chmod(0o755)
    run_python(GOOD_CODE, ADD_TESTS, FAST)
    run_python("while True:\n    pass\n", "import solution\n", limits(cpu_seconds=1))
    assert list(tmp_path.iterdir()) == []


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        SandboxLimits(cpu_seconds=0)


def test_without_isolation_nothing_runs_and_the_outcome_says_not_evaluated(listener: tuple[int, list[bytes]]) -> None:
    port, received = listener
    isolation = probe_isolation("/nonexistent/python3")
    assert not isolation.ok and isolation.degraded and isolation.mechanism == "none"
    assert "/nonexistent/python3" in isolation.reason
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'ran')\n"
    result = run_python(code, "import solution\n", FAST, python="/nonexistent/python3")
    assert result.outcome is SandboxOutcome.NOT_EVALUATED
    assert not result.evaluated and not result.passed and not result.network_isolated
    assert result.detail.startswith("not evaluated: sandbox isolation unavailable")
    assert result.duration_s == 0.0
    assert received == []


def test_the_probe_is_cached() -> None:
    first = probe_isolation()
    assert probe_isolation() is first
    probe_isolation.cache_clear()
    again = probe_isolation()
    assert again is not first and again.ok == first.ok


def test_threads_and_subprocesses_work_but_nested_user_namespaces_do_not() -> None:
    # The seccomp filter answers clone3 with ENOSYS (glibc falls back to clone) and refuses CLONE_NEWUSER.
    code = (
        "import ctypes, subprocess, threading\n"
        "out = []\n"
        "t = threading.Thread(target=lambda: out.append('thread'))\n"
        "t.start()\n"
        "t.join()\n"
        "assert out == ['thread']\n"
        "assert subprocess.run(['/usr/bin/true']).returncode == 0\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.unshare(0x10000000) == -1 and ctypes.get_errno() == 1\n"
    )
    result = run_python(code, "import solution\n", FAST)
    assert result.passed, result


def test_only_stdin_stdout_and_stderr_are_open_inside() -> None:
    # bwrap's info, seccomp and file descriptors are consumed before the interpreter starts.
    code = "import os\nfds = []\nfor fd in range(256):\n    try:\n        os.fstat(fd)\n        fds.append(fd)\n"
    code += "    except OSError:\n        pass\nassert fds == [0, 1, 2], fds\n"
    result = run_python(code, "import solution\n", FAST)
    assert result.passed, result
