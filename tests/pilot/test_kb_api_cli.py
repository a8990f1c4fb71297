"""GET /v1/kb/search and `learning-pilot kb ...` (the CLI falls back to the daemon when it holds the folder)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from pilot.cli.kb import kb_app
from pilot.service.api_kb import router
from pilot.settings import Settings
from tools.knowledge import EmbedderUnavailable, HashingEmbedder, KnowledgeBase, Solution, open_qdrant

T0 = datetime(2025, 3, 1, tzinfo=UTC)
SOLUTIONS = [
    Solution("a", "fix the flaky websocket reconnect timeout", "raise the timeout to 30s", "python", 0.9, T0),
    Solution("b", "add an index to the orders table", "CREATE INDEX ...", "sql", 1.0, T0, model_version="v2"),
    Solution("c", "fix the websocket timeout in staging", "retry with backoff", "python", 0.3, T0),
]


def make_app(settings: Settings, kb: KnowledgeBase | None) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    app.state.ctx = SimpleNamespace(settings=settings)
    if kb is not None:
        app.state.kb = kb
    return app


@pytest.fixture
def kb(tmp_path: Path) -> Iterator[KnowledgeBase]:
    base = KnowledgeBase(open_qdrant(path=tmp_path / "qdrant"), HashingEmbedder(64))
    base.upsert_solutions(SOLUTIONS)
    yield base
    base.client.close()


def test_search_route_filters_and_formats(make_settings: Callable[..., Settings], kb: KnowledgeBase) -> None:
    client = TestClient(make_app(make_settings(knowledge={"enabled": True, "min_success_rate": 0.5}), kb))
    body = client.get("/v1/kb/search", params={"q": "websocket timeout", "k": 5}).json()
    keys = [h["key"] for h in body["hits"]]
    assert keys[0] == "a" and "c" not in keys  # "c" is under the configured minimum success rate
    assert body["hits"][0]["solution"] == "raise the timeout to 30s" and body["hits"][0]["score"] > 0
    assert body["prompt"].startswith("Solutions that worked") and "raise the timeout" in body["prompt"]
    every = client.get("/v1/kb/search", params={"q": "websocket timeout", "min_success_rate": 0}).json()
    assert {h["key"] for h in every["hits"]} >= {"a", "c"}
    sql = client.get("/v1/kb/search", params={"q": "websocket timeout", "domain": "sql", "min_success_rate": 0})
    assert [h["key"] for h in sql.json()["hits"]] == ["b"]
    assert client.get("/v1/kb/search", params={"q": ""}).status_code == 422
    assert client.get("/v1/kb/search", params={"q": "x", "k": 0}).status_code == 422


def test_search_route_disabled_or_unavailable(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    off = TestClient(make_app(make_settings(knowledge={"enabled": False}), None))
    assert off.get("/v1/kb/search", params={"q": "x"}).status_code == 404
    missing = make_settings(knowledge={"enabled": True, "embedding_model_path": str(tmp_path / "none")})
    answer = TestClient(make_app(missing, None)).get("/v1/kb/search", params={"q": "x"})
    assert answer.status_code == 503 and "export-embedder" in answer.json()["detail"]


def cli_app(settings: Settings) -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _main(ctx: typer.Context) -> None:
        ctx.obj = SimpleNamespace(settings=lambda: settings)

    root.add_typer(kb_app, name="kb")
    return root


@pytest.fixture
def daemon_settings(make_settings: Callable[..., Settings], kb: KnowledgeBase) -> Iterator[Settings]:
    """A daemon (the route on uvicorn) that owns the knowledge-base folder; settings point the CLI at it."""
    base = make_settings(
        knowledge={"enabled": True, "qdrant_path": str(kb.client._client.location), "min_success_rate": 0.0}
    )
    server = uvicorn.Server(uvicorn.Config(make_app(base, kb), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield make_settings(
        knowledge={"enabled": True, "qdrant_path": str(kb.client._client.location), "min_success_rate": 0.0},
        api={"port": port},
    )
    server.should_exit = True
    thread.join(timeout=10)


def test_cli_search_goes_through_the_daemon_that_holds_the_folder(daemon_settings: Settings) -> None:
    runner = CliRunner()
    result = runner.invoke(cli_app(daemon_settings), ["kb", "search", "websocket timeout", "-k", "2"])
    assert result.exit_code == 0, result.output
    assert "### 1. fix the websocket timeout in staging" in result.output  # min rate 0: "c" counts here
    assert "### 2. fix the flaky websocket reconnect timeout" in result.output and "### 3." not in result.output
    as_json = runner.invoke(cli_app(daemon_settings), ["kb", "search", "orders index", "--json", "--domain", "sql"])
    assert as_json.exit_code == 0 and '"key": "b"' in as_json.output


def test_cli_search_without_daemon_or_model_is_a_clear_error(
    make_settings: Callable[..., Settings], tmp_path: Any
) -> None:
    settings = make_settings(knowledge={"enabled": True, "embedding_model_path": str(tmp_path / "none")})
    result = CliRunner().invoke(cli_app(settings), ["kb", "search", "anything"])
    assert isinstance(result.exception, EmbedderUnavailable)
    assert "export-embedder" in str(result.exception)


def test_cli_export_embedder_refuses_an_existing_directory_or_missing_packages(tmp_path: Path) -> None:
    from pilot.settings import load_settings

    app = cli_app(load_settings(None, data_dir=tmp_path, knowledge={"enabled": True}))
    exists = CliRunner().invoke(app, ["kb", "export-embedder", str(tmp_path)])
    assert "already exists" in str(exists.exception)
    result = CliRunner().invoke(app, ["kb", "export-embedder", str(tmp_path / "onnx"), "--weights", str(tmp_path)])
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        assert isinstance(result.exception, EmbedderUnavailable)
        assert "pip install" in str(result.exception) and "onnx" in str(result.exception)
    else:  # onnx is there: the empty weights directory is what fails
        assert result.exception is not None
    assert not (tmp_path / "onnx").exists()
