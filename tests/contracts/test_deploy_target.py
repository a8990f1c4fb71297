"""The DeployTarget contract, run against every target: pointer file, vLLM (fake server), Ollama (fake server).

The contract (tools/serving/base.py): verify before touching the target; same-name redeploy replaces;
idempotent undeploy; current() tracks what is live; target failures are DeployError.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.errors import DeployError, IntegrityError
from tools.serving import DeployTarget, OllamaTarget, PointerFileTarget, VllmTarget
from tools.serving.fakes import FakeOllamaServer, FakeVllmServer


@dataclass
class Harness:
    target: DeployTarget
    touched: Callable[[], bool]  # has anything reached the target?
    fail_next: Callable[[int], None]  # make the target fail (HTTP status for servers)


def make_adapter(root: Path, name: str = "adapter", *, weights: bytes = b"weights-v1") -> tuple[Path, dict[str, str]]:
    """A PEFT-shaped adapter directory and its sha256 manifest."""
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (path / "adapter_model.safetensors").write_bytes(weights)
    manifest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in path.iterdir()}
    return path, manifest


@pytest.fixture(params=["pointer", "vllm", "ollama"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "pointer":
        pointer = tmp_path / "serving" / "live.json"

        def block_directory(_status: int) -> None:
            pointer.parent.write_text("a file where the pointer's directory should be")

        yield Harness(PointerFileTarget(pointer), lambda: pointer.parent.exists(), block_directory)
    elif request.param == "vllm":
        with FakeVllmServer() as vllm:
            target = VllmTarget(vllm.url, api_key="k", timeout=5)
            yield Harness(target, lambda: bool(vllm.requests), vllm.fail_next)
            target.close()
    else:
        with FakeOllamaServer() as ollama:
            otarget = OllamaTarget(ollama.url, base_model="llama3.2:1b", timeout=5)
            yield Harness(otarget, lambda: bool(ollama.requests), ollama.fail_next)
            otarget.close()


def test_deploy_makes_it_current(harness: Harness, tmp_path: Path) -> None:
    adapter, manifest = make_adapter(tmp_path)
    assert harness.target.current() is None
    harness.target.deploy("lp-v1", adapter, expected_sha256=manifest)
    assert harness.target.current() == "lp-v1"


def test_second_deploy_becomes_current(harness: Harness, tmp_path: Path) -> None:
    first, m1 = make_adapter(tmp_path, "a1")
    second, m2 = make_adapter(tmp_path, "a2", weights=b"weights-v2")
    harness.target.deploy("lp-v1", first, expected_sha256=m1)
    harness.target.deploy("lp-v2", second, expected_sha256=m2)
    assert harness.target.current() == "lp-v2"


def test_redeploying_the_same_name_replaces_it(harness: Harness, tmp_path: Path) -> None:
    first, m1 = make_adapter(tmp_path, "a1")
    second, m2 = make_adapter(tmp_path, "a2", weights=b"weights-v2")
    harness.target.deploy("lp-v1", first, expected_sha256=m1)
    harness.target.deploy("lp-v1", second, expected_sha256=m2)
    assert harness.target.current() == "lp-v1"


def test_undeploy_is_idempotent(harness: Harness, tmp_path: Path) -> None:
    adapter, manifest = make_adapter(tmp_path)
    harness.target.deploy("lp-v1", adapter, expected_sha256=manifest)
    harness.target.undeploy("lp-v1")
    assert harness.target.current() is None
    harness.target.undeploy("lp-v1")
    harness.target.undeploy("never-deployed")
    assert harness.target.current() is None


def test_undeploying_another_name_keeps_the_current_one(harness: Harness, tmp_path: Path) -> None:
    adapter, manifest = make_adapter(tmp_path)
    harness.target.deploy("lp-v1", adapter, expected_sha256=manifest)
    harness.target.undeploy("lp-other")
    assert harness.target.current() == "lp-v1"


def _wrong_sha(adapter: Path, manifest: dict[str, str]) -> dict[str, str]:
    return {**manifest, "adapter_model.safetensors": "0" * 64}


def _pickled(adapter: Path, manifest: dict[str, str]) -> dict[str, str]:
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    return {**manifest, "adapter_model.bin": hashlib.sha256(b"\x80\x04pickle").hexdigest()}


def _pt_only(adapter: Path, manifest: dict[str, str]) -> dict[str, str]:
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.pt")
    return {"adapter_config.json": manifest["adapter_config.json"], "adapter_model.pt": "0" * 64}


def _unlisted_file(adapter: Path, manifest: dict[str, str]) -> dict[str, str]:
    (adapter / "extra.json").write_text("{}")
    return manifest


def _missing_file(adapter: Path, manifest: dict[str, str]) -> dict[str, str]:
    return {**manifest, "tokenizer.json": "0" * 64}


def _symlink(adapter: Path, manifest: dict[str, str]) -> dict[str, str]:
    os.symlink("/etc/hostname", adapter / "link.json")
    return {**manifest, "link.json": "0" * 64}


def _other_suffix(adapter: Path, manifest: dict[str, str]) -> dict[str, str]:
    (adapter / "run.py").write_text("print(1)")
    return {**manifest, "run.py": hashlib.sha256(b"print(1)").hexdigest()}


def _no_weights(adapter: Path, manifest: dict[str, str]) -> dict[str, str]:
    (adapter / "adapter_model.safetensors").unlink()
    return {"adapter_config.json": manifest["adapter_config.json"]}


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_wrong_sha, "sha256 mismatch"),
        (_pickled, "pickled"),
        (_pt_only, "pickled"),
        (_unlisted_file, "not in the manifest"),
        (_missing_file, "missing"),
        (_symlink, "symlink"),
        (_other_suffix, "not safetensors or json"),
        (_no_weights, "no .safetensors"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_bad_adapters_are_refused_before_the_target_is_touched(
    harness: Harness, tmp_path: Path, tamper: Callable[[Path, dict[str, str]], dict[str, str]], message: str
) -> None:
    adapter, manifest = make_adapter(tmp_path)
    expected = tamper(adapter, manifest)
    with pytest.raises(IntegrityError, match=message):
        harness.target.deploy("lp-v1", adapter, expected_sha256=expected)
    assert not harness.touched()


@pytest.mark.parametrize("name", ["", "../etc", "a b", "x" * 200, "-rf"])
def test_unsafe_names_are_refused(harness: Harness, tmp_path: Path, name: str) -> None:
    adapter, manifest = make_adapter(tmp_path)
    with pytest.raises(IntegrityError, match="unsafe adapter name"):
        harness.target.deploy(name, adapter, expected_sha256=manifest)
    assert not harness.touched()


def test_target_failure_is_a_deploy_error(harness: Harness, tmp_path: Path) -> None:
    adapter, manifest = make_adapter(tmp_path)
    harness.fail_next(500)
    with pytest.raises(DeployError):
        harness.target.deploy("lp-v1", adapter, expected_sha256=manifest)
