"""The hand-built seccomp program: well-formed for each supported architecture, absent for others.

What it blocks is attacked for real in tests/tools/test_sandbox.py and the containment suite.
"""

from __future__ import annotations

import struct

import pytest

from tools.sandbox_seccomp import program


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_program_is_a_sock_filter_array_that_checks_the_arch_first(machine: str) -> None:
    bpf = program(machine)
    assert bpf is not None and len(bpf) % 8 == 0
    insns = [struct.unpack("<HBBI", bpf[i : i + 8]) for i in range(0, len(bpf), 8)]
    assert insns[0] == (0x20, 0, 0, 4)  # load seccomp_data.arch
    assert insns[2] == (0x06, 0, 0, 0x80000000)  # a foreign arch is killed
    assert insns[-1] == (0x06, 0, 0, 0x80000000)
    for i, (code, jt, jf, _) in enumerate(insns):
        if code & 0x07 == 0x05:  # a jump stays inside the program
            assert i + 1 + max(jt, jf) < len(insns)


def test_unknown_architecture_has_no_program() -> None:
    assert program("riscv64") is None
