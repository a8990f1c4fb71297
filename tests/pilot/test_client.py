"""PilotClient against a real HTTP server on loopback that stores through pilot.data.ingest.store_batch."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlmodel import func, select

from pilot.client import IngestClientError, PilotClient
from pilot.data.ingest import store_batch
from pilot.store import Store
from pilot.store.models import DeadLetter, ExecutionRecordRow
from subagents.data.schema import ExecutionRecord, RecordError, parse_record


def record(n: int, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "record_id": f"rec-{n}",
        "timestamp": "2025-03-01T12:00:00+00:00",
        "session_id": f"s-{n % 3}",
        "domain": "python",
        "task": f"task {n}",
        "prompt": f"please do task {n}",
        "output": f"done {n}",
        "success": True,
    }
    values.update(overrides)
    return values


@dataclass
class Faults:
    """Answers the next ``fail_next`` requests with ``status`` instead of storing them."""

    fail_next: int = 0
    status: int = 503
    retry_after: str | None = None
    commit_then_fail: bool = False  # store the batch, then answer 503 (the answer is "lost")
    requests: int = 0
    tokens: list[str | None] = field(default_factory=list)


def make_app(store: Store, faults: Faults) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/records")
    async def ingest(request: Request) -> JSONResponse:
        faults.requests += 1
        faults.tokens.append(request.headers.get("authorization"))
        body = await request.json()
        records = body["records"]
        if faults.fail_next and not faults.commit_then_fail:
            faults.fail_next -= 1
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            return JSONResponse({"detail": "busy"}, status_code=faults.status, headers=headers)
        errors = []
        for index, raw in enumerate(records):
            try:
                parse_record(raw)
            except RecordError as exc:
                errors.append({"index": index, "reason": exc.reason})
        items = [(str(i), json.dumps(raw)) for i, raw in enumerate(records)]
        report = store_batch(store, items, source="http")  # committed before we answer
        if faults.fail_next:
            faults.fail_next -= 1
            return JSONResponse({"detail": "lost"}, status_code=503)
        return JSONResponse(
            {
                "accepted": report.accepted,
                "duplicates": report.duplicates,
                "dead_lettered": report.dead_lettered,
                "errors": errors,
            }
        )

    return app


@pytest.fixture
def sqlite_store(tmp_path: Any) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'pilot.db'}")
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def server(sqlite_store: Store) -> Iterator[tuple[str, Faults]]:
    faults = Faults()
    config = uvicorn.Config(make_app(sqlite_store, faults), host="127.0.0.1", port=0, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", faults
    srv.should_exit = True
    thread.join(timeout=10)


def counts(store: Store) -> tuple[int, int]:
    with store.session() as s:
        return (
            int(s.exec(select(func.count()).select_from(ExecutionRecordRow)).one()),
            int(s.exec(select(func.count()).select_from(DeadLetter)).one()),
        )


def no_sleep(_: float) -> None:
    return None


def test_send_in_batches_counts_and_reports_invalid_records_by_global_index(
    server: tuple[str, Faults], sqlite_store: Store
) -> None:
    url, faults = server
    records: list[Any] = [record(n) for n in range(10)]
    records[3] = record(3, success="yes")  # wrong type
    records[7] = {"record_id": "rec-7"}  # missing fields
    records.append(ExecutionRecord.model_validate(record(10)))  # a model is sent as its JSON form
    with PilotClient(url, token="s3cret") as client:
        report = client.send(records, batch_size=4)
    assert (report.accepted, report.duplicates, report.dead_lettered, report.batches) == (9, 0, 2, 3)
    assert [index for index, _ in report.errors] == [3, 7]
    assert report.errors[0][1].startswith("success")
    assert counts(sqlite_store) == (9, 2)
    assert set(faults.tokens) == {"Bearer s3cret"}


def test_resending_is_idempotent(server: tuple[str, Faults], sqlite_store: Store) -> None:
    url, _ = server
    with PilotClient(url) as client:
        client.send([record(n) for n in range(5)])
        again = client.send([record(n) for n in range(7)])
    assert (again.accepted, again.duplicates) == (2, 5)
    assert counts(sqlite_store) == (7, 0)


def test_retries_5xx_with_backoff_then_succeeds(server: tuple[str, Faults], sqlite_store: Store) -> None:
    url, faults = server
    faults.fail_next, faults.retry_after = 2, "0.25"
    delays: list[float] = []
    with PilotClient(url, max_retries=3, backoff_s=0.1, sleep=delays.append) as client:
        report = client.send([record(n) for n in range(3)])
    assert report.accepted == 3 and report.retries == 2
    assert delays == [0.25, 0.25]  # Retry-After wins over our own backoff
    assert faults.requests == 3


def test_a_lost_answer_is_retried_without_storing_twice(server: tuple[str, Faults], sqlite_store: Store) -> None:
    url, faults = server
    faults.fail_next, faults.commit_then_fail = 1, True
    with PilotClient(url, sleep=no_sleep) as client:
        report = client.send([record(n) for n in range(4)])
    assert (report.accepted, report.duplicates, report.retries) == (0, 4, 1)
    assert counts(sqlite_store) == (4, 0)


def test_gives_up_after_max_retries(server: tuple[str, Faults]) -> None:
    url, faults = server
    faults.fail_next = 10
    delays: list[float] = []
    client = PilotClient(url, max_retries=2, backoff_s=1.0, sleep=delays.append)
    with client, pytest.raises(IngestClientError, match="after 3 attempts: HTTP 503") as err:
        client.send([record(1)])
    assert err.value.status_code == 503
    assert len(delays) == 2 and 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0  # doubling, with jitter


def test_client_errors_are_not_retried_and_keep_what_was_sent(server: tuple[str, Faults]) -> None:
    url, faults = server
    with PilotClient(url, sleep=no_sleep) as client:
        client.send([record(0)])
        faults.fail_next, faults.status = 1, 401
        with pytest.raises(IngestClientError, match="HTTP 401") as err:
            client.send([record(1), record(2), record(3)], batch_size=2)
    assert err.value.status_code == 401
    assert faults.requests == 2  # not retried


def test_unreachable_server_raises_after_retries() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = PilotClient(f"http://127.0.0.1:{port}", max_retries=1, sleep=no_sleep, timeout_s=2)
    with client, pytest.raises(IngestClientError, match="ConnectError") as err:
        client.send([record(1)])
    assert err.value.sent is not None and err.value.sent.accepted == 0


def test_timeout_is_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json={"accepted": 1, "duplicates": 0, "dead_lettered": 0, "errors": []})

    with PilotClient("http://pilot.test", transport=httpx.MockTransport(handler), sleep=no_sleep) as client:
        report = client.send([record(1)])
    assert report.accepted == 1 and report.retries == 1 and len(calls) == 2
    with pytest.raises(ValueError):
        client.send([], batch_size=0)
