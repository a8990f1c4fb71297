"""Settings: TOML file, environment overrides, clear errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilot.errors import ConfigError
from pilot.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.data_dir == tmp_path / "data"
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'pilot.db'}"
    assert settings.gpu.provider == "local" and settings.llm.model is None


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "pilot.toml"
    config.write_text('env = "prod"\n[budget]\nper_day_usd = 3\n[training]\nlora_r = 4\n')
    monkeypatch.setenv("LEARNING_PILOT_BUDGET__PER_DAY_USD", "7.5")
    settings = load_settings(config)
    assert (settings.env, settings.budget.per_day_usd, settings.training.lora_r) == ("prod", 7.5, 4)


def test_secrets_are_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEARNING_PILOT_GPU__VAST__API_KEY", "vast-secret-123")
    settings = load_settings(None, data_dir=tmp_path)
    key = settings.gpu.vast.api_key
    assert key is not None and key.get_secret_value() == "vast-secret-123"
    assert "vast-secret-123" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[budget]\nper_day_usd = 'lots'\n", "budget.per_day_usd"),
        ("[budget]\nper_dya_usd = 3\n", "budget.per_dya_usd: unknown key"),
        ("bogus = 1\n", "bogus: unknown key"),
        ("[gpu]\nprovider = 'aws'\n", "gpu.provider"),
        ("[policy]\nmin_new_examples = 0\n", "policy.min_new_examples"),
        ("[[[", "not valid TOML"),
    ],
)
def test_an_invalid_file_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")) as info:
        load_settings(config)
    assert str(config) in str(info.value) and "\n" not in str(info.value)


def test_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_search_path_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "x.toml"
    config.write_text('env = "from-env-var"\n')
    monkeypatch.setenv("LEARNING_PILOT_CONFIG", str(config))
    assert load_settings().env == "from-env-var"


def test_relative_base_model_path_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(None, training={"base_model": "./models/tiny"}).training.base_model == str(
        tmp_path / "models" / "tiny"
    )
    assert load_settings(None, training={"base_model": "org/model"}).training.base_model == "org/model"


@pytest.mark.parametrize("name", ["demo.toml", "pilot.example.toml"])
def test_shipped_configs_load(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(REPO / "config" / name)
    assert settings.env


def test_the_example_config_lists_every_key() -> None:
    from pilot.cli.config_doc import example_toml

    assert (REPO / "config" / "pilot.example.toml").read_text() == example_toml(), (
        "config/pilot.example.toml is stale: run `python -m pilot.cli.config_doc`"
    )


def test_systemd_credentials_fill_nested_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gpu__vast__api_key").write_text("vast-from-credential\n")
    (creds / "LEARNING_PILOT_SLACK__SIGNING_SECRET").write_text("signing-from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_settings(None, data_dir=tmp_path)
    assert settings.gpu.vast.api_key is not None
    assert settings.gpu.vast.api_key.get_secret_value() == "vast-from-credential"
    assert settings.slack.signing_secret is not None
    assert settings.slack.signing_secret.get_secret_value() == "signing-from-credential"
    monkeypatch.setenv("LEARNING_PILOT_GPU__VAST__API_KEY", "from-env")
    key = load_settings(None, data_dir=tmp_path).gpu.vast.api_key
    assert key is not None and key.get_secret_value() == "from-env"  # the environment wins


def test_every_environment_variable_the_docs_name_is_read() -> None:
    """A documented variable that the settings do not read is silently ignored: a kill switch without its key."""
    import re

    from pydantic import BaseModel

    from pilot.settings import Settings

    # the config file's path; the crash tests' hook; the producer client's token (pilot/client.py)
    special = {"LEARNING_PILOT_CONFIG", "LEARNING_PILOT_CRASH_AT", "LEARNING_PILOT_PRODUCER_TOKEN"}
    named: set[str] = set()
    for doc in (REPO / "README.md", REPO / "config" / "pilot.example.toml", *sorted((REPO / "systemd").glob("*"))):
        named |= set(re.findall(r"LEARNING_PILOT_[A-Z0-9_]*[A-Z0-9]", doc.read_text()))
    assert named, "the docs name no variable at all?"
    for name in sorted(named - special):
        model: type[BaseModel] = Settings
        path = name.removeprefix("LEARNING_PILOT_").lower().split("__")
        for i, key in enumerate(path):
            assert key in model.model_fields, f"{name}: the settings have no {'.'.join(path[: i + 1])}"
            annotation = model.model_fields[key].annotation
            if i < len(path) - 1:
                assert isinstance(annotation, type) and issubclass(annotation, BaseModel), f"{name}: not a section"
                model = annotation
