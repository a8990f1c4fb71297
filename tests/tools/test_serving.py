"""Target-specific behaviour beyond the shared contract: exact wire requests, pointer atomicity and revert."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest

from tools.errors import DeployError
from tools.serving import OllamaTarget, PointerFileTarget, VllmTarget
from tools.serving.fakes import FakeOllamaServer, FakeVllmServer


def make_adapter(root: Path, name: str = "adapter", *, weights: bytes = b"weights-v1") -> tuple[Path, dict[str, str]]:
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (path / "adapter_model.safetensors").write_bytes(weights)
    return path, {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in path.iterdir()}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------------------ vLLM


def test_vllm_wire_requests_and_auth(tmp_path: Path) -> None:
    adapter, manifest = make_adapter(tmp_path)
    with FakeVllmServer() as vllm:
        target = VllmTarget(vllm.url + "/", api_key="sk-test", timeout=5)
        target.deploy("lp-v1", adapter, expected_sha256=manifest)
        target.undeploy("lp-v1")
        target.close()
    assert vllm.requests == [
        ("POST", "/v1/load_lora_adapter", {"lora_name": "lp-v1", "lora_path": str(adapter.resolve())}),
        ("POST", "/v1/unload_lora_adapter", {"lora_name": "lp-v1"}),
    ]
    assert all(h.get("Authorization") == "Bearer sk-test" for h in vllm.headers)


def test_vllm_redeploy_unloads_then_loads_the_new_path(tmp_path: Path) -> None:
    first, m1 = make_adapter(tmp_path, "a1")
    second, m2 = make_adapter(tmp_path, "a2", weights=b"v2")
    with FakeVllmServer() as vllm:
        target = VllmTarget(vllm.url, timeout=5)
        target.deploy("lp", first, expected_sha256=m1)
        target.deploy("lp", second, expected_sha256=m2)
        target.close()
    assert [r[1] for r in vllm.requests] == [
        "/v1/load_lora_adapter",
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
        "/v1/load_lora_adapter",
    ]
    assert vllm.loaded == {"lp": str(second.resolve())}
    assert "Authorization" not in vllm.headers[0]


def test_vllm_reports_an_unambiguous_adapter_after_restart(tmp_path: Path) -> None:
    adapter, manifest = make_adapter(tmp_path)
    with FakeVllmServer() as vllm:
        VllmTarget(vllm.url, timeout=5).deploy("lp-v1", adapter, expected_sha256=manifest)
        fresh = VllmTarget(vllm.url, timeout=5)  # a restarted daemon knows nothing in memory
        assert fresh.current() == "lp-v1"
        vllm.loaded["lp-v2"] = str(adapter)
        assert fresh.current() is None  # two adapters: not ours to guess


@pytest.mark.parametrize("status", [400, 401, 500, 503])
def test_vllm_refusals_are_deploy_errors(tmp_path: Path, status: int) -> None:
    adapter, manifest = make_adapter(tmp_path)
    with FakeVllmServer() as vllm:
        target = VllmTarget(vllm.url, timeout=5)
        vllm.fail_next(status)
        with pytest.raises(DeployError, match=f"HTTP {status}"):
            target.deploy("lp-v1", adapter, expected_sha256=manifest)
        assert target.current() is None
        vllm.fail_next(status)
        with pytest.raises(DeployError):
            target.undeploy("lp-v1")


def test_vllm_unreachable_is_a_deploy_error(tmp_path: Path) -> None:
    adapter, manifest = make_adapter(tmp_path)
    target = VllmTarget(closed_port_url(), timeout=2)
    with pytest.raises(DeployError, match="failed"):
        target.deploy("lp-v1", adapter, expected_sha256=manifest)


# ---------------------------------------------------------------------------------------------- Ollama


def test_ollama_uploads_blobs_then_creates_from_the_base_model(tmp_path: Path) -> None:
    adapter, manifest = make_adapter(tmp_path)
    with FakeOllamaServer() as ollama:
        target = OllamaTarget(ollama.url, base_model="llama3.2:1b", timeout=5)
        target.deploy("lp-v1", adapter, expected_sha256=manifest)
        target.close()
    digests = {name: f"sha256:{digest}" for name, digest in manifest.items()}
    assert ollama.models["lp-v1:latest"] == {
        "model": "lp-v1",
        "from": "llama3.2:1b",
        "adapters": digests,
        "stream": False,
    }
    assert set(ollama.blobs) == set(manifest.values())
    assert ollama.blobs[manifest["adapter_model.safetensors"]] == b"weights-v1"
    methods = [(m, p.split(":")[0]) for m, p, _ in ollama.requests]
    assert methods == [("HEAD", "/api/blobs/sha256"), ("POST", "/api/blobs/sha256")] * 2 + [("POST", "/api/create")]


def test_ollama_skips_blobs_it_already_has(tmp_path: Path) -> None:
    adapter, manifest = make_adapter(tmp_path)
    with FakeOllamaServer() as ollama:
        target = OllamaTarget(ollama.url, base_model="base", timeout=5)
        target.deploy("lp-v1", adapter, expected_sha256=manifest)
        ollama.requests.clear()
        target.deploy("lp-v2", adapter, expected_sha256=manifest)
        assert [m for m, _, _ in ollama.requests] == ["HEAD", "HEAD", "POST"]
        assert target.current() == "lp-v2"


def test_ollama_delete_and_missing_model(tmp_path: Path) -> None:
    adapter, manifest = make_adapter(tmp_path)
    with FakeOllamaServer() as ollama:
        target = OllamaTarget(ollama.url, base_model="base", timeout=5)
        target.deploy("lp-v1", adapter, expected_sha256=manifest)
        target.undeploy("lp-v1")
        target.undeploy("lp-v1")
        assert ollama.models == {}
        assert ollama.requests[-2:] == [
            ("DELETE", "/api/delete", {"model": "lp-v1"}),
            ("DELETE", "/api/delete", {"model": "lp-v1"}),
        ]


def test_ollama_failures_are_deploy_errors(tmp_path: Path) -> None:
    adapter, manifest = make_adapter(tmp_path)
    with FakeOllamaServer() as ollama:
        target = OllamaTarget(ollama.url, base_model="base", timeout=5)
        ollama.fail_next(500)
        with pytest.raises(DeployError, match="HTTP 500"):
            target.deploy("lp-v1", adapter, expected_sha256=manifest)
        ollama.fail_next(500)
        with pytest.raises(DeployError):
            target.undeploy("lp-v1")
    with pytest.raises(DeployError):
        OllamaTarget(closed_port_url(), base_model="base", timeout=2).deploy("lp-v1", adapter, expected_sha256=manifest)


# -------------------------------------------------------------------------------------------- pointer


def test_pointer_file_contents_and_previous(tmp_path: Path) -> None:
    first, m1 = make_adapter(tmp_path, "a1")
    second, m2 = make_adapter(tmp_path, "a2", weights=b"v2")
    pointer = tmp_path / "live" / "adapter.json"
    target = PointerFileTarget(pointer)
    target.deploy("lp-v1", first, expected_sha256=m1)
    live = json.loads(pointer.read_text())
    assert live["adapter"] == "lp-v1"
    assert live["path"] == str(first.resolve())
    assert live["sha256"] == m1
    assert live["deployed_at"].endswith("+00:00")
    target.deploy("lp-v2", second, expected_sha256=m2)
    assert json.loads(target.previous_path.read_text())["adapter"] == "lp-v1"
    assert sorted(p.name for p in pointer.parent.iterdir()) == ["adapter.json", "adapter.json.previous"]


def test_pointer_revert_swaps_back_and_forth(tmp_path: Path) -> None:
    first, m1 = make_adapter(tmp_path, "a1")
    second, m2 = make_adapter(tmp_path, "a2", weights=b"v2")
    target = PointerFileTarget(tmp_path / "live.json")
    assert target.revert() is None
    target.deploy("lp-v1", first, expected_sha256=m1)
    target.deploy("lp-v2", second, expected_sha256=m2)
    assert target.revert() == "lp-v1"
    assert target.current() == "lp-v1"
    assert target.revert() == "lp-v2"


def test_pointer_revert_after_undeploy_restores_it(tmp_path: Path) -> None:
    adapter, manifest = make_adapter(tmp_path)
    target = PointerFileTarget(tmp_path / "live.json")
    target.deploy("lp-v1", adapter, expected_sha256=manifest)
    target.undeploy("lp-v1")
    assert target.current() is None
    assert target.revert() == "lp-v1"
    assert target.current() == "lp-v1"
    assert not target.previous_path.exists()


def test_pointer_corrupt_file_is_a_deploy_error(tmp_path: Path) -> None:
    pointer = tmp_path / "live.json"
    pointer.write_text("{not json")
    with pytest.raises(DeployError, match="unreadable"):
        PointerFileTarget(pointer).current()


def test_pointer_write_failure_leaves_the_old_pointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, m1 = make_adapter(tmp_path, "a1")
    second, m2 = make_adapter(tmp_path, "a2", weights=b"v2")
    target = PointerFileTarget(tmp_path / "live" / "p.json")
    target.deploy("lp-v1", first, expected_sha256=m1)
    import os

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(DeployError, match="No space left"):
        target.deploy("lp-v2", second, expected_sha256=m2)
    monkeypatch.undo()
    assert target.current() == "lp-v1"
    assert not [p for p in target.path.parent.iterdir() if p.name.startswith(".")]  # no temp files left
