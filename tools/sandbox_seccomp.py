"""The seccomp filter bubblewrap installs (``--seccomp FD``) right before it runs the sandboxed interpreter.

It does what Flatpak's filter does for the calls that matter here, as a classic BPF program built by hand (no
libseccomp binding is needed):

- **No nested user namespaces.** ``clone`` and ``unshare`` with ``CLONE_NEWUSER`` fail with EPERM, and
  ``clone3`` (whose flags live in memory a filter cannot read) fails with ENOSYS so glibc falls back to
  ``clone``. bwrap's own ``--disable-userns`` would do the first, but it writes ``/proc/sys/user/...``, which
  systemd's ``ProtectKernelTunables=yes`` makes read-only, so the filter is used instead.
- **No kernel keyring, bpf, perf, userfaultfd or io_uring**: large attack surface, no use to a unit test (EPERM).
- **Only the native ABI.** Another architecture's calls (and x32 on x86-64) kill the process.

``program()`` returns None on an architecture without a table here; the sandbox then reports itself degraded.
"""

from __future__ import annotations

import errno
import platform
import struct

__all__ = ["program"]

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
_CLONE_NEWUSER = 0x10000000
_X32_BIT = 0x40000000
_OFF_NR, _OFF_ARCH, _OFF_ARG0_LOW = 0, 4, 16  # struct seccomp_data, little-endian

# machine: (AUDIT_ARCH_*, syscall numbers)
_TABLES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {
            "clone": 56,
            "unshare": 272,
            "clone3": 435,
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "perf_event_open": 298,
            "bpf": 321,
            "userfaultfd": 323,
            "io_uring_setup": 425,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "clone": 220,
            "unshare": 97,
            "clone3": 435,
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "perf_event_open": 241,
            "bpf": 280,
            "userfaultfd": 282,
            "io_uring_setup": 425,
        },
    ),
}
_DENIED = ("add_key", "request_key", "keyctl", "perf_event_open", "bpf", "userfaultfd", "io_uring_setup")


def program(machine: str | None = None) -> bytes | None:
    """The filter as bwrap reads it: an array of ``struct sock_filter`` (u16 code, u8 jt, u8 jf, u32 k)."""
    table = _TABLES.get(machine or platform.machine())
    if table is None:
        return None
    arch, nr = table
    # (code, jt label or offset, jf label or offset, k); labels are resolved to relative offsets below.
    code: list[tuple[int, int | str, int | str, int]] = [
        (_LD_W_ABS, 0, 0, _OFF_ARCH),
        (_JEQ_K, 1, 0, arch),
        (_RET_K, 0, 0, _RET_KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _OFF_NR),
    ]
    if (machine or platform.machine()) == "x86_64":
        code.append((_JGE_K, "kill", 0, _X32_BIT))
    code.append((_JEQ_K, "enosys", 0, nr["clone3"]))
    code += [(_JEQ_K, "eperm", 0, nr[name]) for name in _DENIED]
    code += [(_JEQ_K, "flags", 0, nr["clone"]), (_JEQ_K, "flags", 0, nr["unshare"])]
    labels: dict[str, int] = {}
    tail: list[tuple[str | None, tuple[int, int | str, int | str, int]]] = [
        (None, (_RET_K, 0, 0, _RET_ALLOW)),
        ("flags", (_LD_W_ABS, 0, 0, _OFF_ARG0_LOW)),
        (None, (_JSET_K, "eperm", 0, _CLONE_NEWUSER)),
        (None, (_RET_K, 0, 0, _RET_ALLOW)),
        ("eperm", (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM)),
        ("enosys", (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)),
        ("kill", (_RET_K, 0, 0, _RET_KILL_PROCESS)),
    ]
    for label, insn in tail:
        if label:
            labels[label] = len(code)
        code.append(insn)

    def offset(target: int | str, at: int) -> int:
        if isinstance(target, int):
            return target
        jump = labels[target] - at - 1
        assert 0 <= jump <= 255, (target, jump)
        return jump

    return b"".join(struct.pack("<HBBI", op, offset(jt, i), offset(jf, i), k) for i, (op, jt, jf, k) in enumerate(code))
