"""The CLI: one clear line and a non-zero exit for every bad input, never a traceback; status stays light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pilot.cli import main
from pilot.settings import load_settings
from pilot.store import Store
from pilot.store.models import Approval
from pilot.store.status import ApprovalKind
from pilot.store.writers import is_paused
from tests import factories

REPO = Path(__file__).resolve().parents[2]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    old = sys.argv
    sys.argv = ["learning-pilot", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "pilot.toml"
    path.write_text(f'env = "test"\ndata_dir = "{tmp_path / "data"}"\n')
    return path


def _pending_approval(config: Path) -> str:
    settings = load_settings(config)
    store = Store(settings.database_url)
    from pilot.supervisor import approvals

    with store.session(write=True) as s:
        decision = factories.decision(s)
        approval = approvals.request_approval(
            s, decision=decision, kind=ApprovalKind.TRAINING, summary={}, cost_ceiling_usd=1.0, expiry_minutes=60
        )
    store.close()
    return approval.id


def test_missing_data_dir(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, err = cli(capsys, "--config", str(config), "status")
    assert code == 1 and err.startswith("error: data dir") and "learning-pilot init" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_invalid_config_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[budget]\nper_day = 3\n")
    code, _, err = cli(capsys, "--config", str(bad), "status")
    assert code == 2 and "budget.per_day: unknown key" in err and err.count("\n") == 1


def test_init_status_json(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    assert cli(capsys, "--config", str(config), "init")[0] == 0
    code, out, _ = cli(capsys, "--config", str(config), "status", "--json")
    report = json.loads(out)
    assert code == 0
    assert {"paused", "champion", "runs", "pending_approvals", "spend", "records"} <= set(report)
    assert report["paused"] is False and report["records"]["total"] == 0


def test_ingest_and_status(capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path) -> None:
    cli(capsys, "--config", str(config), "init")
    records = tmp_path / "r.jsonl"
    records.write_text(factories.record_line() + "\nnot json\n" + factories.record_line() + "\n")
    code, out, _ = cli(capsys, "--config", str(config), "ingest", str(records))
    assert code == 0 and "2 accepted" in out and "1 dead-lettered" in out
    code, out, _ = cli(capsys, "--config", str(config), "status", "--json")
    assert json.loads(out)["records"] == {"total": 2, "dead_letters": 1}
    code, _, err = cli(capsys, "--config", str(config), "ingest", str(tmp_path / "missing.jsonl"))
    assert code == 1 and "does not exist" in err


def test_approve_reject_bad_ids_and_twice(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    cli(capsys, "--config", str(config), "init")
    code, _, err = cli(capsys, "--config", str(config), "approve", "apv-nope")
    assert code == 1 and err == "error: no approval 'apv-nope'\n"
    approval_id = _pending_approval(config)
    code, out, _ = cli(capsys, "--config", str(config), "approve", approval_id, "--by", "ana")
    assert code == 0 and f"approved {approval_id}" in out and "human:ana" in out
    code, _, err = cli(capsys, "--config", str(config), "reject", approval_id, "--by", "bob")
    assert code == 1 and "already approved by human:ana" in err
    settings = load_settings(config)
    store = Store(settings.database_url)
    with store.session() as s:
        approval = s.get(Approval, approval_id)
        assert approval is not None and approval.status == "approved" and approval.decided_by == "human:ana"
    store.close()


def test_status_does_not_import_the_heavy_stack(config: Path) -> None:
    subprocess.run([sys.executable, "-m", "pilot.cli", "--config", str(config), "init"], check=True, cwd=REPO)
    code = (
        "import sys\n"
        "from pilot.cli import main\n"
        f"sys.argv = ['learning-pilot', '--config', {str(config)!r}, 'status', '--json']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('langgraph', 'litellm', 'torch', 'transformers', 'peft') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env={**os.environ}, check=True
    )
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_kill_pauses_even_without_provider_credentials(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpu.provider is vast but no key is set: the provider cannot be reached, and the pause still commits."""
    monkeypatch.delenv("LEARNING_PILOT_GPU__VAST__API_KEY", raising=False)
    path = tmp_path / "pilot.toml"
    path.write_text(f'env = "test"\ndata_dir = "{tmp_path / "data"}"\n[gpu]\nprovider = "vast"\n')
    assert cli(capsys, "--config", str(path), "init")[0] == 0
    code, out, err = cli(capsys, "--config", str(path), "kill", "--reason", "test", "--by", "alice")
    assert code == 1 and "nothing was destroyed" in err and "API key" in err
    assert json.loads(out)["paused"] is True
    settings = load_settings(path)
    store = Store(settings.database_url)
    try:
        with store.session() as s:
            assert is_paused(s)
    finally:
        store.close()
