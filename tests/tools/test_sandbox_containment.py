"""The containment suite: every attack runs as the daemon runs in production, and is contained or refused.

Each case starts a "daemon" process — ``/usr/bin/python3`` importing ``tools.sandbox`` from this checkout —
as a non-root uid (a dedicated system user ``lp-sandbox-test``, created when the tests run as root, entered
with ``setpriv --reuid --regid --init-groups`` and no capabilities; the current user when the tests already run
as non-root). Beside it, as under the shipped unit: a data dir (the working directory, owned by that user)
holding a real ``pilot.db`` with a pending approval, a ``$CREDENTIALS_DIRECTORY`` with a kill token and a
Vast key (mode 0400, owned by that user), and the same secrets in the daemon's environment. The tests start
loopback TCP, UDP and unix-socket listeners. The attacking code *passes its tests only if the attack worked*,
so each must be scored as a failure, its output must not carry a secret, no listener may see a byte, and
every file of the data and credentials dirs must be byte-for-byte unchanged.

Every case runs under what can be reproduced of the shipped unit without systemd: ``User=`` (a non-root
uid), ``CapabilityBoundingSet=`` (none), ``NoNewPrivileges=``, the seccomp filters behind its
``RestrictNamespaces=`` and ``RestrictAddressFamilies=`` (tests/tools/unit_restrictions.py reads them from the
unit file and installs the same kind of filter), and the read-only ``/proc/sys`` that ``ProtectKernelTunables=``
leaves (root only: it needs a mount namespace).

Fail closed: under the previous unit (``RestrictNamespaces=yes``), under the shipped unit minus any one of its
namespace or ``AF_NETLINK`` grants, and with user namespaces unavailable — simulated as in
shared/reference/dependencies-2.md §1, a child user namespace with ``user.max_user_namespaces=0`` and every
capability dropped — the probe reports degraded and the run returns NOT_EVALUATED without running anything.

What CI here cannot reproduce: PID 1 is not systemd (``systemd-run`` fails), so the unit itself never runs:
``ProtectSystem=strict``, ``ProtectHome=``, ``PrivateTmp=``, ``PrivateDevices=`` (bwrap's ``--dev`` binds
/dev/null and friends from it), ``ProtectClock=``/``ProtectKernelLogs=`` filters, ``TasksMax=``, and systemd's
own ``$CREDENTIALS_DIRECTORY`` (a ramfs) are not exercised; tests/tools/test_sandbox_unit.py checks the unit
with ``systemd-analyze`` instead. A real kernel or LSM that forbids user namespaces
(``kernel.unprivileged_userns_clone=0``, Ubuntu's AppArmor ``restrict_unprivileged_userns``) is only simulated.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.tools.unit_restrictions import under_unit, unit_service

ROOT = Path(__file__).resolve().parents[2]
DAEMON_USER = "lp-sandbox-test"
SYSTEM_PYTHON = "/usr/bin/python3"
VAST_KEY = "vast-key-5f3a9c1e7d"
KILL_TOKEN = "kill-token-b81d44e0a2"
SECRETS = (VAST_KEY, KILL_TOKEN)
LIMITS = {"cpu_seconds": 2, "wall_seconds": 3, "memory_mb": 256, "max_processes": 32}

pytestmark = [
    pytest.mark.skipif(
        not (os.path.exists(SYSTEM_PYTHON) and shutil.which("setpriv") and shutil.which("unshare")),
        reason="needs /usr/bin/python3, setpriv and unshare (util-linux)",
    ),
    # One worker under pytest-xdist: the cases share the dedicated uid, whose process list they check.
    pytest.mark.xdist_group("sandbox-uid"),
]

# The daemon side: what pilot does, in a process of its own. Reads {"cases": [...]} on stdin.
DRIVER = """
import dataclasses, json, sys
sys.path.insert(0, ROOT)
from tools.sandbox import SandboxLimits, probe_isolation, run_python
spec = json.load(sys.stdin)
isolation = probe_isolation()
results = []
for case in spec["cases"]:
    r = run_python(case["code"], case["tests"], SandboxLimits(**case["limits"]))
    results.append({**dataclasses.asdict(r), "outcome": r.outcome.value, "evaluated": r.evaluated})
print(json.dumps({"isolation": dataclasses.asdict(isolation), "results": results}))
""".replace("ROOT", repr(str(ROOT)))


@dataclass(frozen=True)
class Production:
    """The daemon's world: its uid, data dir with pilot.db, credentials dir, and listeners to phone home to."""

    uid: int
    gid: int
    base: Path
    data_dir: Path
    creds_dir: Path
    drop_dir: Path  # world-writable: where code run unisolated could leave a mark
    tcp_port: int
    udp: socket.socket
    unix_path: Path
    received: list[bytes]

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin",
            "LEARNING_PILOT_DATA_DIR": str(self.data_dir),
            "CREDENTIALS_DIRECTORY": str(self.creds_dir),
            "LEARNING_PILOT_GPU__VAST__API_KEY": VAST_KEY,
            "LEARNING_PILOT_API__KILL_TOKEN": KILL_TOKEN,
        }

    def snapshot(self) -> dict[str, str]:
        files = {}
        for path in sorted([*self.data_dir.rglob("*"), *self.creds_dir.rglob("*"), *self.drop_dir.rglob("*")]):
            files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        return files

    def udp_received(self) -> bool:
        self.udp.setblocking(False)
        try:
            self.udp.recv(100)
            return True
        except BlockingIOError:
            return False


def _daemon_uid() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    try:
        entry = pwd.getpwnam(DAEMON_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            pytest.skip("running as root without useradd: cannot create the non-root daemon user")
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", DAEMON_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(DAEMON_USER)
    return entry.pw_uid, entry.pw_gid


def _accept(server: socket.socket, received: list[bytes], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with conn:
            received.append(conn.recv(100) or b"<connected>")


@pytest.fixture(scope="module")
def production() -> Iterator[Production]:
    uid, gid = _daemon_uid()
    base = Path(tempfile.mkdtemp(prefix="lp-containment-"))
    base.chmod(0o755)
    data_dir, creds_dir, drop_dir = base / "data", base / "credentials", base / "drop"
    data_dir.mkdir(mode=0o750)
    creds_dir.mkdir(mode=0o700)
    drop_dir.mkdir()
    drop_dir.chmod(0o777)
    with sqlite3.connect(data_dir / "pilot.db") as db:
        db.execute("CREATE TABLE approvals (id TEXT PRIMARY KEY, status TEXT, actor TEXT)")
        db.execute("INSERT INTO approvals VALUES ('ap-1', 'pending', NULL)")
    db.close()
    (data_dir / "kill_switch").write_text("paused\n")
    (creds_dir / "gpu__vast__api_key").write_text(VAST_KEY)
    (creds_dir / "api__kill_token").write_text(KILL_TOKEN)
    for path in [data_dir, creds_dir, *data_dir.iterdir(), *creds_dir.iterdir()]:
        os.chown(path, uid, gid)
    for path in creds_dir.iterdir():
        path.chmod(0o400)
    creds_dir.chmod(0o500)

    received: list[bytes] = []
    stop = threading.Event()
    tcp = socket.create_server(("127.0.0.1", 0))
    tcp.settimeout(0.2)
    unix_path = drop_dir / "daemon.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(unix_path))
    unix.listen()
    unix.settimeout(0.2)
    unix_path.chmod(0o777)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    threads = [threading.Thread(target=_accept, args=(s, received, stop), daemon=True) for s in (tcp, unix)]
    for thread in threads:
        thread.start()
    try:
        yield Production(uid, gid, base, data_dir, creds_dir, drop_dir, tcp.getsockname()[1], udp, unix_path, received)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=2)
        for sock in (tcp, unix, udp):
            sock.close()
        shutil.rmtree(base, ignore_errors=True)


# ProtectKernelTunables=yes leaves read-only overmounts in /proc (here: /proc/sys), which also makes the kernel
# refuse a fresh procfs inside a user namespace and bwrap's --disable-userns; root only (a mount namespace).
RO_PROC_SYS = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "--",
    "sh",
    "-c",
    'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"',
    "sh",
]


def _as_daemon(
    prod: Production, *, restrict_namespaces: str | None = None, address_families: str | None = None
) -> list[str]:
    """The command line that starts the driver as the unit would: the daemon user, no capabilities,
    no_new_privs, the unit's RestrictNamespaces=/RestrictAddressFamilies= filter (or the ones given), and a
    read-only /proc/sys."""
    driver = [SYSTEM_PYTHON, "-I", "-B", "-c", DRIVER]
    seccomp = under_unit(restrict_namespaces, address_families)
    if os.geteuid() != 0:
        return [*seccomp, *driver]
    drop = ["setpriv", f"--reuid={prod.uid}", f"--regid={prod.gid}", "--init-groups", "--inh-caps=-all"]
    return [*RO_PROC_SYS, *drop, "--bounding-set=-all", "--", *seccomp, *driver]


def run_as_daemon(prod: Production, cases: list[dict[str, Any]], **unit: str) -> dict[str, Any]:
    spec = json.dumps({"cases": [{"limits": LIMITS, **case} for case in cases]})
    proc = subprocess.run(
        _as_daemon(prod, **unit),
        input=spec,
        capture_output=True,
        text=True,
        env=prod.env(),
        cwd=prod.data_dir,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _attack(body: str) -> dict[str, str]:
    """``body`` defines ``attack()``, true only when it got what it was after; the tests pass only then."""
    return {"code": body, "tests": "from solution import attack\n\ndef test_attack():\n    assert attack()\n"}


def _at_import(body: str) -> dict[str, str]:
    return {"code": body, "tests": "import solution\n"}


def cases(prod: Production) -> dict[str, dict[str, str]]:
    data, creds, drop = str(prod.data_dir), str(prod.creds_dir), str(prod.drop_dir)
    secrets_repr = repr(SECRETS)
    return {
        "environment": _attack(
            f"import os\ndef attack():\n    blob = repr(dict(os.environ))\n    print(blob)\n"
            f"    return any(s in blob for s in {secrets_repr}) or 'CREDENTIALS_DIRECTORY' in os.environ\n"
        ),
        "proc environ": _attack(
            "import glob, os\ndef attack():\n    got = ''\n"
            "    for p in glob.glob('/proc/*/environ') + [f'/proc/{os.getppid()}/environ', '/proc/1/environ']:\n"
            "        try:\n            got += open(p, 'rb').read().decode(errors='replace')\n"
            "        except OSError as exc:\n            print(p, exc)\n"
            f"    print(got)\n    return any(s in got for s in {secrets_repr})\n"
        ),
        "credentials dir": _attack(
            f"import os\ndef attack():\n    d = os.environ.get('CREDENTIALS_DIRECTORY') or {creds!r}\n"
            "    got = ''.join(open(os.path.join(d, n)).read() for n in os.listdir(d))\n"
            "    print(got)\n    return got\n"
        ),
        "data dir and pilot.db": _attack(
            f"import os, sqlite3\ndef attack():\n    print(os.listdir({data!r}))\n"
            f"    db = sqlite3.connect(os.path.join({data!r}, 'pilot.db'))\n"
            "    print(db.execute('SELECT * FROM approvals').fetchall())\n"
            "    db.execute(\"UPDATE approvals SET status = 'approved', actor = 'human:alice'\")\n"
            "    db.commit()\n    return True\n"
        ),
        "write outside its directory": _attack(
            # /tmp inside is the sandbox's own tmpfs: a write there succeeds and must not reach the host's.
            "def attack():\n    wrote = 0\n    open('/tmp/lp-pwned', 'w').write('x')\n"
            f"    for p in ({data + '/kill_switch'!r}, {data + '/pwned'!r}, {drop + '/pwned'!r}, '/var/tmp/lp-pwned',\n"
            "              '/usr/lp-pwned', '/etc/lp-pwned', '/lp-pwned', '/dev/lp-pwned', '/dev/shm/../lp-pwned'):\n"
            "        try:\n            open(p, 'w').write('x')\n            wrote += 1\n"
            "        except OSError as exc:\n            print(p, exc)\n    return wrote\n"
        ),
        "tcp socket": _attack(
            "import socket\ndef attack():\n"
            f"    s = socket.create_connection(('127.0.0.1', {prod.tcp_port}), timeout=1)\n"
            "    s.sendall(b'exfiltrated')\n    return True\n"
        ),
        "udp socket": _attack(
            "import socket\ndef attack():\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"    s.sendto(b'exfiltrated', ('127.0.0.1', {prod.udp.getsockname()[1]}))\n"
            "    s.settimeout(1)\n    return s.recv(10)\n"
        ),
        "unix socket": _attack(
            "import socket\ndef attack():\n    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            f"    s.settimeout(1)\n    s.connect({str(prod.unix_path)!r})\n    s.sendall(b'exfiltrated')\n"
            "    return True\n"
        ),
        "nested user namespace": _attack(
            "import ctypes\ndef attack():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    return libc.unshare(0x10000000) == 0 or libc.syscall(250, 0, 0) != -1  # CLONE_NEWUSER, keyctl\n"
        ),
        "fork bomb": _at_import(
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
        ),
        "4 GB allocation": _attack("def attack():\n    buf = bytearray(4 * 1024 ** 3)\n    return len(buf)\n"),
        "endless loop": _at_import("while True:\n    pass\n"),
        "sleep past the timeout": _at_import("import time\ntime.sleep(60)\n"),
    }


CASE_NAMES = [
    "environment",
    "proc environ",
    "credentials dir",
    "data dir and pilot.db",
    "write outside its directory",
    "tcp socket",
    "udp socket",
    "unix socket",
    "nested user namespace",
    "fork bomb",
    "4 GB allocation",
    "endless loop",
    "sleep past the timeout",
]


def _live_processes_of(uid: int) -> list[str]:
    out = subprocess.run(["ps", "-u", str(uid), "-o", "pid=,stat=,cmd="], capture_output=True, text=True, check=False)
    return [line for line in out.stdout.splitlines() if line.strip() and line.split()[1][0] != "Z"]


def _survivors_of(uid: int) -> list[str]:
    """The processes of ``uid`` still alive, with their state, parent and pid namespace ids. ``run_python`` returns
    only once the sandbox's init has exited, which the kernel allows after it killed and reaped every process of
    the namespace, and once bwrap's own group is reaped: nothing of the uid may be left. (The module's
    ``xdist_group`` keeps every test that runs as this uid on one worker; tests/conftest.py checks it is applied.)"""
    live = _live_processes_of(uid)
    details = []
    for line in live:
        pid = line.split()[0]
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue  # exited between ps and here
        details.append(line + " " + " ".join(f for f in status if f.startswith(("PPid:", "NSpid:", "State:"))))
    return details


@pytest.mark.parametrize("name", CASE_NAMES)
def test_attack_is_contained_and_scored_as_a_failure(production: Production, name: str) -> None:
    before = production.snapshot()
    received_before = len(production.received)

    out = run_as_daemon(production, [cases(production)[name]])

    isolation, (result,) = out["isolation"], out["results"]
    assert isolation["ok"], isolation["reason"]
    assert isolation["uid"] == production.uid != 0
    assert result["evaluated"] and not result["passed"], result
    assert result["outcome"] in ("failed", "killed", "timed_out"), result
    assert result["network_isolated"]
    assert not any(s in result["stdout"] + result["stderr"] for s in SECRETS), result
    assert production.snapshot() == before
    assert len(production.received) == received_before and not production.udp_received()
    assert not Path("/tmp/lp-pwned").exists() and not Path("/var/tmp/lp-pwned").exists()
    with sqlite3.connect(production.data_dir / "pilot.db") as db:
        assert db.execute("SELECT status, actor FROM approvals").fetchall() == [("pending", None)]
    db.close()
    if name == "sleep past the timeout":
        assert result["outcome"] == "timed_out" and result["duration_s"] < LIMITS["wall_seconds"] + 2
    if name == "endless loop":  # the CPU limit, or the wall clock on a machine too busy to give 2 CPU-seconds
        assert result["outcome"] in ("killed", "timed_out"), result
        assert result["outcome"] == "timed_out" or "CPU or memory limit" in result["detail"]
    if name in ("fork bomb", "sleep past the timeout") and production.uid != os.getuid():
        assert _survivors_of(production.uid) == []  # the pid namespace died with its init


def test_a_correct_solution_passes_as_the_daemon_user(production: Production) -> None:
    good = {"code": "def add(a, b):\n    return a + b\n", "tests": "from solution import add\nassert add(2, 2) == 4\n"}
    out = run_as_daemon(production, [good])
    assert out["isolation"]["ok"], out["isolation"]["reason"]
    assert out["results"][0]["outcome"] == "passed", out["results"][0]


def test_the_control_attack_works_without_the_sandbox(production: Production) -> None:
    # Proof that the attacks are real: the same daemon user, unsandboxed, reads the credentials and the store.
    probe = (
        "import os, sqlite3\n"
        "print(''.join(open(os.path.join(os.environ['CREDENTIALS_DIRECTORY'], n)).read()"
        " for n in sorted(os.listdir(os.environ['CREDENTIALS_DIRECTORY']))))\n"
        "print(sqlite3.connect(os.path.join(os.environ['LEARNING_PILOT_DATA_DIR'], 'pilot.db'))"
        ".execute('SELECT status FROM approvals').fetchall())\n"
    )
    cmd = _as_daemon(production)
    cmd[cmd.index(DRIVER)] = probe
    proc = subprocess.run(cmd, capture_output=True, text=True, env=production.env(), cwd="/", timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert KILL_TOKEN in proc.stdout and VAST_KEY in proc.stdout and "pending" in proc.stdout


def test_without_user_namespaces_the_probe_is_degraded_and_nothing_runs(production: Production) -> None:
    # A child user namespace that may not create another one, and no capabilities: what a non-root service
    # sees on a kernel (or under a unit) that refuses user namespaces.
    no_userns = [
        "unshare",
        "--user",
        "--map-root-user",
        "--",
        "sh",
        "-c",
        'echo 0 > /proc/sys/user/max_user_namespaces && exec setpriv --bounding-set=-all --inh-caps=-all -- "$@"',
        "sh",
    ]
    before = production.snapshot()
    marker = production.drop_dir / "ran-unisolated"
    code = (
        f"import socket\nopen({str(marker)!r}, 'w').write('x')\n"
        f"socket.create_connection(('127.0.0.1', {production.tcp_port}), timeout=1).sendall(b'ran')\n"
    )
    received_before = len(production.received)
    proc = subprocess.run(
        [*no_userns, SYSTEM_PYTHON, "-I", "-B", "-c", DRIVER],
        input=json.dumps({"cases": [{"code": code, "tests": "import solution\n", "limits": LIMITS}]}),
        capture_output=True,
        text=True,
        env=production.env(),
        cwd="/",
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    isolation, (result,) = out["isolation"], out["results"]
    assert not isolation["ok"] and isolation["mechanism"] == "none"
    assert "bwrap refused to build the sandbox" in isolation["reason"], isolation["reason"]
    assert result["outcome"] == "not_evaluated" and not result["evaluated"] and not result["passed"]
    assert result["detail"].startswith("not evaluated: sandbox isolation unavailable")
    assert not marker.exists()
    assert len(production.received) == received_before
    assert production.snapshot() == before


def test_the_previous_unit_restrict_namespaces_yes_makes_the_sandbox_refuse(production: Production) -> None:
    # The unit as it shipped before (RestrictNamespaces=yes): the old sandbox ran the code with network and
    # as the daemon user; this one reports degraded and runs nothing.
    code = _at_import(f"open({str(production.drop_dir / 'ran')!r}, 'w').write('x')\n")
    out = run_as_daemon(production, [code], restrict_namespaces="yes")
    assert not out["isolation"]["ok"] and "bwrap refused" in out["isolation"]["reason"]
    assert out["results"][0]["outcome"] == "not_evaluated"
    assert not (production.drop_dir / "ran").exists()


@pytest.mark.parametrize("dropped", ["user", "pid", "net", "mnt", "ipc", "uts", "AF_NETLINK"])
def test_every_permission_the_unit_grants_is_needed(production: Production, dropped: str) -> None:
    # The shipped unit minus one grant: the sandbox cannot be built and says so (the suite above shows the
    # grants suffice). Together: the unit allows what bwrap needs and only that.
    service = unit_service()
    namespaces = service["RestrictNamespaces"].split()
    families = service["RestrictAddressFamilies"].split()
    unit = {
        "restrict_namespaces": " ".join(n for n in namespaces if n != dropped),
        "address_families": " ".join(f for f in families if f != dropped),
    }
    good = {"code": "def add(a, b):\n    return a + b\n", "tests": "from solution import add\nassert add(1, 1) == 2\n"}
    out = run_as_daemon(production, [good], **unit)
    assert not out["isolation"]["ok"], out["isolation"]
    assert out["results"][0]["outcome"] == "not_evaluated"


def test_the_process_limit_counts_the_sandbox_not_the_daemons_threads(production: Production) -> None:
    # RLIMIT_NPROC is charged per (user namespace, uid): a daemon with 100 threads still leaves each sandbox
    # its own budget, and the budget still stops a sandbox that forks past it.
    busy_daemon = (
        "import threading\nstop = threading.Event()\n"
        "for _ in range(100):\n    threading.Thread(target=stop.wait, daemon=True).start()\n"
    )
    forks = (
        "import os\ndef attack():\n    pids = []\n    for _ in range({n}):\n        pid = os.fork()\n"
        "        if pid == 0:\n            os._exit(0)\n        pids.append(pid)\n"
        "    for pid in pids:\n        os.waitpid(pid, 0)\n    return True\n"
    )
    limits = {**LIMITS, "max_processes": 16}
    within, beyond = _attack(forks.format(n=10)), _attack(forks.format(n=20))
    cmd = _as_daemon(production)
    cmd[cmd.index(DRIVER)] = busy_daemon + DRIVER
    proc = subprocess.run(
        cmd,
        input=json.dumps({"cases": [{**within, "limits": limits}, {**beyond, "limits": limits}]}),
        capture_output=True,
        text=True,
        env=production.env(),
        cwd=production.data_dir,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    assert [r["outcome"] for r in results] == ["passed", "failed"], results
    assert "BlockingIOError" in results[1]["stderr"] or "Resource temporarily unavailable" in results[1]["stderr"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hide bwrap in a mount namespace")
def test_without_bwrap_the_probe_is_degraded_and_nothing_runs(production: Production) -> None:
    hide_bwrap = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c"]
    hide_bwrap += ['for b in /usr/bin/bwrap /bin/bwrap; do mount --bind /dev/null "$b" 2>/dev/null; done; exec "$@"']
    code = _at_import(f"open({str(production.drop_dir / 'ran')!r}, 'w').write('x')\n")
    cmd = [*hide_bwrap, "sh", *_as_daemon(production)]
    proc = subprocess.run(
        cmd,
        input=json.dumps({"cases": [{**code, "limits": LIMITS}]}),
        capture_output=True,
        text=True,
        env=production.env(),
        cwd=production.data_dir,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["isolation"]["ok"] and "bwrap is not installed" in out["isolation"]["reason"]
    assert out["results"][0]["outcome"] == "not_evaluated"
    assert not (production.drop_dir / "ran").exists()
