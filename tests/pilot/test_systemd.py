"""The unit file: the directives the operator relies on, and ``systemd-analyze verify`` where it is installed."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "learning-pilot.service"


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_unit_has_the_hardening_and_lifecycle_directives() -> None:
    service = _service()
    expected = {
        "Type": "notify",
        "Restart": "on-failure",
        "User": "learning-pilot",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/learning-pilot",
        "PrivateTmp": "yes",
        "KillSignal": "SIGTERM",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert int(service["WatchdogSec"]) > 0 and int(service["TimeoutStopSec"]) >= 60
    assert service["EnvironmentFile"].startswith("-/etc/learning-pilot/")
    assert service["ExecStart"].endswith(" run")
    assert service["Environment"]  # at least one default (configparser keeps the last)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this interpreter, keep every other line as shipped.
    text = UNIT.read_text()
    shipped = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    unit = tmp_path / "learning-pilot.service"
    unit.write_text(text.replace(shipped, f"ExecStart={sys.executable} -m pilot.cli run"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "learning-pilot.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
