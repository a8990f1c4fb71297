"""Reproduce, without systemd, the seccomp half of the shipped unit: ``RestrictNamespaces=`` and
``RestrictAddressFamilies=``, read from systemd/learning-pilot.service.

systemd implements both as seccomp filters installed (with no_new_privs) just before it executes the service:
``clone``/``unshare`` with a namespace flag not listed fail with EPERM, ``clone3`` fails with ENOSYS (its flags
are out of a filter's reach), and ``socket()`` with a family not listed fails with EAFNOSUPPORT. ``launcher``
installs the same kind of filter and then executes the daemon, so the containment suite can run the daemon
under the unit's restrictions. setns() and socketpair() are left out: neither bwrap nor the attacks use them.
"""

from __future__ import annotations

import configparser
import errno
import platform
import struct
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "learning-pilot.service"

NAMESPACE_FLAGS = {
    "mnt": 0x00020000,
    "cgroup": 0x02000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "user": 0x10000000,
    "pid": 0x20000000,
    "net": 0x40000000,
}
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}
# machine: (AUDIT_ARCH_*, clone, unshare, clone3, socket)
SYSCALLS = {"x86_64": (0xC000003E, 56, 272, 435, 41), "aarch64": (0xC00000B7, 220, 97, 435, 198)}

# Runs as the daemon user: installs the filter given in hex, then executes the rest of its argv.
LAUNCHER = """
import ctypes, os, sys
bpf = ctypes.create_string_buffer(bytes.fromhex(sys.argv[1]))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(bytes.fromhex(sys.argv[1])) // 8, ctypes.cast(bpf, ctypes.c_void_p))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:
    sys.exit("seccomp: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[2], sys.argv[2:])
"""


def unit_service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def allowed_namespaces(setting: str) -> set[str]:
    if setting in ("", "no", "false"):
        return set(NAMESPACE_FLAGS)
    if setting in ("yes", "true"):
        return set()
    return set(setting.split())


def seccomp_filter(restrict_namespaces: str, address_families: str) -> bytes:
    """A classic BPF program for the native architecture that does what systemd's two settings do."""
    arch, clone, unshare, clone3, sock = SYSCALLS[platform.machine()]
    denied = 0
    for name, flag in NAMESPACE_FLAGS.items():
        if name not in allowed_namespaces(restrict_namespaces):
            denied |= flag
    families = [FAMILIES[name] for name in address_families.split()]
    allow, ret = 0x7FFF0000, 0x06
    eperm, enosys, eafnosupport = (0x00050000 | e for e in (errno.EPERM, errno.ENOSYS, errno.EAFNOSUPPORT))
    n_fam = len(families)
    insns: list[tuple[int, int, int, int]] = [
        (0x20, 0, 0, 4),  # A = arch
        (0x15, 1, 0, arch),
        (ret, 0, 0, allow),  # not ours to police
        (0x20, 0, 0, 0),  # A = nr
        (0x15, 0, 1, clone3),
        (ret, 0, 0, enosys),
        (0x15, 3, 0, clone),  # -> flags check (index 10)
        (0x15, 2, 0, unshare),  # -> flags check
        (0x15, 5, 0, sock),  # -> family check (index 14)
        (ret, 0, 0, allow),
        (0x20, 0, 0, 16),  # flags check: A = arg0 (low 32 bits)
        (0x45, 0, 1, denied),
        (ret, 0, 0, eperm),
        (ret, 0, 0, allow),
        (0x20, 0, 0, 16),  # family check: A = arg0
    ]
    for i, family in enumerate(families):
        insns.append((0x15, n_fam - i, 0, family))  # jump to the final "allow"
    insns += [(ret, 0, 0, eafnosupport), (ret, 0, 0, allow)]
    return b"".join(struct.pack("<HBBI", *insn) for insn in insns)


def under_unit(restrict_namespaces: str | None = None, address_families: str | None = None) -> list[str]:
    """argv prefix that runs a command under the unit's seccomp restrictions (or the ones given)."""
    service = unit_service()
    bpf = seccomp_filter(
        service.get("RestrictNamespaces", "") if restrict_namespaces is None else restrict_namespaces,
        service["RestrictAddressFamilies"] if address_families is None else address_families,
    )
    return ["/usr/bin/python3", "-I", "-S", "-c", LAUNCHER, bpf.hex()]
