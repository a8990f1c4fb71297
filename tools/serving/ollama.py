"""Ollama as a deploy target: the adapter becomes a model ``name`` built ``from`` the base model.

Protocol (Ollama's documented REST API): each file is uploaded as a blob, ``HEAD /api/blobs/sha256:<hex>``
(200 when present) then ``POST /api/blobs/sha256:<hex>`` with the raw bytes (Ollama re-hashes and refuses a
mismatch); then ``POST /api/create {"model", "from", "adapters": {filename: "sha256:<hex>"}, "stream": false}``.
``DELETE /api/delete {"model"}`` removes it (404 when unknown: treated as done); ``GET /api/tags`` lists models
(names may carry a ``:latest`` tag). httpx errors and non-2xx answers become ``DeployError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from tools.errors import DeployError
from tools.serving.base import DeployTarget

__all__ = ["OllamaTarget"]


class OllamaTarget(DeployTarget):
    def __init__(
        self,
        base_url: str,
        base_model: str,
        timeout: float = 120.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_model = base_model
        self._client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport)
        self._deployed: str | None = None

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DeployError(f"Ollama {method} {path} failed: {exc}") from exc

    def _activate(self, name: str, adapter_dir: Path, digests: Mapping[str, str]) -> None:
        for rel, digest in digests.items():
            blob = f"/api/blobs/sha256:{digest}"
            head = self._call("HEAD", blob)
            if head.status_code == 200:
                continue
            if head.status_code != 404:
                _check(head, f"check blob {rel}")
            _check(self._call("POST", blob, content=_chunks(adapter_dir / rel)), f"upload blob {rel}")
        body = {
            "model": name,
            "from": self.base_model,
            "adapters": {rel: f"sha256:{digest}" for rel, digest in digests.items()},
            "stream": False,
        }
        response = self._call("POST", "/api/create", json=body)
        _check(response, f"create model {name!r}")
        status = _json(response).get("status")
        if status != "success":
            raise DeployError(f"Ollama did not create model {name!r}: status {status!r}")
        self._deployed = name

    def undeploy(self, name: str) -> None:
        response = self._call("DELETE", "/api/delete", json={"model": name})
        if response.status_code != 404:
            _check(response, f"delete model {name!r}")
        if self._deployed == name:
            self._deployed = None

    def current(self) -> str | None:
        if self._deployed is None:
            return None
        response = self._call("GET", "/api/tags")
        _check(response, "list models")
        names = {m.get("name") for m in _json(response).get("models", [])} | {
            m.get("model") for m in _json(response).get("models", [])
        }
        live = self._deployed in names or f"{self._deployed}:latest" in names
        return self._deployed if live else None


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while block := fh.read(size):
            yield block


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        raise DeployError(f"Ollama answered non-JSON: {response.text[:200]}") from exc
    if not isinstance(data, dict):
        raise DeployError(f"Ollama answered unexpected JSON: {data!r:.200}")
    return data


def _check(response: httpx.Response, what: str) -> None:
    if not response.is_success:
        raise DeployError(f"Ollama refused to {what}: HTTP {response.status_code} {response.text[:300]}")
