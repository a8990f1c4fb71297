"""vLLM as a deploy target, through its runtime LoRA API (server started with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and ``--enable-lora``).

``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` and ``POST /v1/unload_lora_adapter {"lora_name"}``;
``GET /v1/models`` lists base model and loaded adapters. vLLM answers 400 "already been loaded" for a name it
has, so a redeploy unloads first; unloading an unknown name answers 404 (400 in older versions), which
``undeploy`` treats as done. The adapter path must be readable by the vLLM server (same host or shared disk).
httpx errors and non-2xx answers become ``DeployError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from tools.errors import DeployError
from tools.serving.base import DeployTarget

__all__ = ["VllmTarget"]


class VllmTarget(DeployTarget):
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self._deployed: str | None = None

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, json: Mapping[str, Any] | None = None) -> httpx.Response:
        try:
            return self._client.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise DeployError(f"vLLM {method} {path} failed: {exc}") from exc

    def _activate(self, name: str, adapter_dir: Path, digests: Mapping[str, str]) -> None:
        body = {"lora_name": name, "lora_path": str(adapter_dir)}
        response = self._call("POST", "/v1/load_lora_adapter", body)
        if response.status_code == 400 and "already" in response.text.lower():
            self.undeploy(name)
            response = self._call("POST", "/v1/load_lora_adapter", body)
        _check(response, f"load adapter {name!r}")
        self._deployed = name

    def undeploy(self, name: str) -> None:
        response = self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        text = response.text.lower()
        gone = response.status_code == 404 or (
            response.status_code == 400 and ("not found" in text or "cannot be found" in text)
        )
        if not gone:
            _check(response, f"unload adapter {name!r}")
        if self._deployed == name:
            self._deployed = None

    def current(self) -> str | None:
        response = self._call("GET", "/v1/models")
        _check(response, "list models")
        adapters = [m["id"] for m in response.json().get("data", []) if m.get("parent")]
        if self._deployed is not None:
            return self._deployed if self._deployed in adapters else None
        # After a restart we do not know what we deployed: report the adapter only when it is unambiguous.
        return adapters[0] if len(adapters) == 1 else None


def _check(response: httpx.Response, what: str) -> None:
    if not response.is_success:
        raise DeployError(f"vLLM refused to {what}: HTTP {response.status_code} {response.text[:300]}")
