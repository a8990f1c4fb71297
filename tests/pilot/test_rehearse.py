"""``learning-pilot rehearse``: one loop of the Vast path on a local Vast server and moto S3, through the command.

The full test drives ``rehearse_command`` through typer (as pilot/cli/app.py registers it) with a user config whose base
model is the cached tiny model, and asserts the exit status, the printed ledger-vs-charges line, the approval by the
rehearsal, and that nothing is left on the server or on disk. The fast tests pin what keeps a rehearsal from
touching the user's world: the settings it derives, and the one-line exit when moto is missing.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import SecretStr
from typer.testing import CliRunner

from pilot.cli.rehearse import MOTO_MISSING, RehearsalError, load_records, offer_book_path, rehearsal_settings
from pilot.cli.rehearse_command import rehearse_command
from pilot.settings import Settings, load_settings
from pilot.store import Store
from subagents.data.samples import generate_demo_records
from tests.helpers.tiny_model import tiny_base_model
from tools.gpu.vast_server import load_offer_book

FIXTURE = Path(__file__).parent.parent / "fixtures" / "vast_offers.json"


class _Obj:
    def __init__(self, config: Path) -> None:
        self.config = config

    def settings(self) -> Settings:
        return load_settings(self.config)


def _app(config: Path) -> typer.Typer:
    """The command as pilot/cli/app.py registers it: ``app.command("rehearse")(rehearse_command)`` under a callback
    that puts the settings loader in ``ctx.obj``."""
    app = typer.Typer()

    @app.callback()
    def main(ctx: typer.Context) -> None:
        ctx.obj = _Obj(config)

    app.command("rehearse")(rehearse_command)
    return app


def _config(tmp_path: Path, *, per_run_usd: float = 5.0, **training: Any) -> Path:
    lines = [
        'env = "rh"',
        f'data_dir = "{tmp_path / "user-data"}"',
        "[budget]",
        f"per_run_usd = {per_run_usd}",
        "[training]",
        *(f"{key} = {json.dumps(value)}" for key, value in training.items()),
        "[evaluation]",
        "min_items = 5",
        "max_new_tokens = 8",
        "[slack]",
        "enabled = true",
        "[gpu.vast]",
        'api_key = "the-users-real-vast-key-0123"',
    ]
    path = tmp_path / "pilot.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.train
@pytest.mark.slow
def test_rehearsal_runs_one_loop_and_leaves_nothing_behind(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        base_model=str(tiny_base_model()),
        base_model_params_b=0.001,
        lora_r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        seq_len=64,
        batch_size=8,
        tokens_per_second_estimate=20000,
    )
    result = CliRunner().invoke(_app(config), ["rehearse", "--records", "240", "--max-steps", "4"])
    out = result.output
    assert result.exit_code == 0, out
    # The ledger settled on what the local Vast server billed, to the micro-dollar.
    ledger = re.search(r"ledger: actual \$(\d+\.\d+) for run \S+ vs the server's charges \$(\d+\.\d+) .*: match", out)
    assert ledger is not None, out
    assert float(ledger.group(1)) == pytest.approx(float(ledger.group(2)), abs=1e-6) and float(ledger.group(1)) > 0
    assert "instances: live_instances() == [] (none left)" in out
    assert "approved by the rehearsal itself (actor 'rehearsal')" in out
    assert re.search(r"offer: chosen \d+ .* at \$\d+\.\d+/h: expected total", out), out
    assert re.search(r"heartbeat #\d+ from instance \d+ \(attempt 1\)", out), out
    assert re.search(r"adapter: s3://learning-pilot-rehearsal/runs/\S+ sha256 [0-9a-f]{64} \(downloaded back", out)
    assert re.search(r"^gate: (PROMOTED|REJECTED|INCONCLUSIVE) ", out, re.MULTILINE), out
    assert out.rstrip().endswith("rehearsal OK")
    # The rehearsal dir is gone, and the user's data dir was never created.
    kept = re.search(r"rehearsal dir: (\S+)", out)
    assert kept is not None and not Path(kept.group(1)).exists()
    assert not (tmp_path / "user-data").exists()


def test_rehearsal_settings_replace_every_outward_facing_section(tmp_path: Path) -> None:
    user = load_settings(_config(tmp_path, max_steps=300, epochs=1.0, base_model_params_b=7.0))
    settings = rehearsal_settings(
        user,
        root=tmp_path / "rh",
        vast_url="http://127.0.0.1:1",
        vast_key="rehearsal-key",
        s3_endpoint="http://127.0.0.1:2",
        base_model="/models/tiny",
        max_steps=4,
    )
    assert settings.gpu.provider == "vast" and settings.gpu.vast.api_url == "http://127.0.0.1:1"
    assert isinstance(settings.gpu.vast.api_key, SecretStr)
    assert settings.gpu.vast.api_key.get_secret_value() == "rehearsal-key"  # never the user's key
    assert settings.gpu.remote.python == sys.executable
    assert settings.artifacts.kind == "s3" and settings.artifacts.s3_endpoint_url == "http://127.0.0.1:2"
    assert settings.database_url == f"sqlite:///{tmp_path / 'rh' / 'data' / 'pilot.db'}"
    assert settings.drop_dir == tmp_path / "rh" / "data" / "inbox"
    assert not settings.slack.enabled and settings.llm.model is None and not settings.knowledge.enabled
    assert settings.deploy.target == "pointer" and settings.deploy.pointer_path is not None
    assert settings.deploy.pointer_path.is_relative_to(tmp_path / "rh")
    # The user's money settings and job shape hold; the approval is always asked.
    assert settings.budget == user.budget and settings.evaluation == user.evaluation
    assert settings.training.base_model == "/models/tiny" and settings.training.max_steps == 4
    assert settings.training.base_model_params_b == 7.0 and settings.training.epochs == 1.0
    assert settings.policy.approval_required_above_usd == 0.0


def test_missing_moto_exits_1_with_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "moto.server", None)  # what `import moto.server` sees without the extra
    result = CliRunner().invoke(_app(_config(tmp_path)), ["rehearse"])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {MOTO_MISSING}"
    assert "pip install 'learning-pilot[dev]'" in MOTO_MISSING


def test_the_shipped_offer_book_is_the_recorded_fixture() -> None:
    with offer_book_path() as book:
        shipped = load_offer_book(book)
    assert len(shipped) >= 50
    assert shipped == load_offer_book(FIXTURE)


def test_a_cap_that_denies_the_run_fails_the_rehearsal_before_anything_is_rented(tmp_path: Path) -> None:
    config = _config(tmp_path, per_run_usd=0.0001, base_model=str(tiny_base_model()), base_model_params_b=0.001)
    result = CliRunner().invoke(_app(config), ["rehearse", "--records", "120"])
    assert result.exit_code == 1, result.output
    assert "plan: " in result.output and "per-run cap" in result.output  # the guardrail's own reason
    assert "rehearsal FAILED: the supervisor did not ask to train" in result.output
    assert "approved by the rehearsal" not in result.output


def test_records_0_ingests_the_users_drop_dir_without_touching_it(tmp_path: Path) -> None:
    user = load_settings(_config(tmp_path))
    user.drop_dir.mkdir(parents=True)
    drop_file = user.drop_dir / "agent.jsonl"
    drop_file.write_text("\n".join(generate_demo_records(30, seed=2)) + "\n")
    before = drop_file.read_bytes()
    store = Store(f"sqlite:///{tmp_path / 'rh.db'}")
    store.migrate()
    said: list[str] = []
    try:
        load_records(store, user, 0, said.append)
    finally:
        store.close()
    assert drop_file.read_bytes() == before and sorted(user.drop_dir.iterdir()) == [drop_file]
    ingested = next(line for line in said if line.startswith("ingested:"))
    accepted = int(ingested.split()[1])
    assert 20 <= accepted <= 30


def test_records_0_with_an_empty_drop_dir_is_one_clear_error(tmp_path: Path) -> None:
    user = load_settings(_config(tmp_path))
    store = Store(f"sqlite:///{tmp_path / 'rh.db'}")
    try:
        with pytest.raises(RehearsalError, match=r"has no \*\.jsonl file"):
            load_records(store, user, 0, print)
    finally:
        store.close()
