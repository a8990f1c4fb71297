"""Bodies are bounded before and while they are read, and a huge request never holds up the kill switch.

Against the real app on uvicorn in a child process (tests/helpers/api_server.py), so the server's own peak RSS
(``VmHWM``) is measured, and the kill switch's pause is taken through its own store connection, as
``learning-pilot kill`` does, while the request is being stored.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import select

from pilot.context import build_context
from pilot.data.producers import RECORDS_WRITE, create_token
from pilot.service.api import MAX_RECORDS_BODY, MAX_SLACK_BODY, create_app
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import DeadLetter, ExecutionRecordRow
from pilot.store.writers import is_paused, set_paused
from tests import factories
from tests.helpers.api_server import ApiServer, send_chunked

MIB = 1024 * 1024


def _count(store: Store, table: type) -> int:
    with store.session() as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def test_a_400_mib_chunked_body_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    with ApiServer(tmp_path / "data") as server:
        before = server.peak_rss_mib()
        line = b"x" * 1023 + b"\n"
        status, sent = send_chunked(server.url, "/v1/records", server.token, 400 * MIB, line * 1024)
        after = server.peak_rss_mib()
        metrics = httpx.get(f"{server.url}/metrics").text
        store = Store(server.settings.database_url)
        try:
            assert _count(store, DeadLetter) == 0 and _count(store, ExecutionRecordRow) == 0
        finally:
            store.close()
    print(f"400 MiB chunked: HTTP {status} after {sent / MIB:.0f} MiB sent; peak RSS {before:.0f} -> {after:.0f} MiB")
    assert status == 413
    assert sent < 100 * MIB  # it stopped reading soon after the limit (socket buffers hold the rest)
    assert after - before < 2 * MAX_RECORDS_BODY / MIB + 16  # the buffer up to the limit, not the 400 MiB
    assert 'learning_pilot_api_refusals_total{route="/v1/records",status="413"} 1.0' in metrics


def test_a_declared_length_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    with ApiServer(tmp_path / "data") as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"POST /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
                f"Content-Length: {500 * MIB}\r\n\r\n".encode()
            )
            answer = sock.recv(65536)  # no body was sent: the answer cannot have waited for it
    assert answer.startswith(b"HTTP/1.1 413")


def test_a_2_5m_line_request_does_not_hold_up_the_kill_switch(tmp_path: Path) -> None:
    # every junk line written as its own dead-letter row: the worst case for the write lock
    env = {"LEARNING_PILOT_INGEST__DEAD_LETTERS_PER_REQUEST": str(10**9)}
    with ApiServer(tmp_path / "data", env=env) as server:
        body = b"x\n" * 2_500_000
        assert len(body) < MAX_RECORDS_BODY
        answers: list[httpx.Response | Exception] = []

        def post() -> None:
            try:
                headers = {"authorization": f"Bearer {server.token}", "content-type": "application/x-ndjson"}
                answers.append(httpx.post(f"{server.url}/v1/records", content=body, headers=headers, timeout=600))
            except Exception as exc:  # the server is stopped before it finishes
                answers.append(exc)

        sender = threading.Thread(target=post, daemon=True)
        sender.start()
        store = Store(server.settings.database_url)
        try:
            deadline = time.monotonic() + 120
            while _count(store, DeadLetter) == 0:  # the request is being stored
                assert time.monotonic() < deadline and sender.is_alive(), answers
                time.sleep(0.05)
            pauses: list[float] = []
            for n in range(6):
                started = time.perf_counter()
                with store.session(write=True) as session:  # what `learning-pilot kill` commits first
                    set_paused(session, n % 2 == 0, actor="human:test", reason="kill during a huge ingest")
                pauses.append(time.perf_counter() - started)
                time.sleep(0.2)
            still_storing = sender.is_alive()
            stored = _count(store, DeadLetter)
            with store.session() as session:
                assert not is_paused(session)
        finally:
            store.close()
    print(f"pause/resume while storing {stored} of 2.5 M junk lines: " + ", ".join(f"{p:.3f}" for p in pauses) + " s")
    assert still_storing and 0 < stored < 2_500_000  # measured while the request held the store busy
    assert max(pauses) < 1.0


def test_the_answer_summarises_dead_letters_and_bounds_their_rows(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    ctx = build_context(make_settings(ingest={"batch_size": 500, "dead_letters_per_request": 100}), store=store)
    auth = {"authorization": f"Bearer {create_token(store, 'p', [RECORDS_WRITE])[1]}"}
    good = [factories.record_line(record_id=f"ok-{n}") for n in range(3)]
    body = "\n".join([*good, *(["{junk"] * 10_000), '{"record_id": 1}'])
    with TestClient(create_app(ctx)) as client:
        answer = client.post("/v1/records", content=body, headers={"content-type": "application/x-ndjson", **auth})
    assert answer.status_code == 200 and len(answer.content) < 20_000
    report = answer.json()
    assert (report["received"], report["accepted"], report["dead_lettered"]) == (10_004, 3, 10_001)
    assert len(report["rejected"]) == 50 and report["rejected"][0]["line"] == 4 and report["rejected_truncated"]
    assert report["dead_letters_not_kept"] == 9_901 and sum(report["dead_letter_reasons"].values()) == 10_001
    assert _count(store, DeadLetter) == 101  # 100 rows with their raw text + one summary row
    with store.session() as session:
        summary = session.exec(select(DeadLetter).where(DeadLetter.raw == "")).one()
    assert summary.reason.startswith("9901 more invalid lines not kept")


def test_slack_actions_over_a_few_kb_are_refused_unparsed(store: Store, make_settings: Callable[..., Settings]) -> None:
    ctx = build_context(make_settings(slack={"signing_secret": "s", "bot_token": "xoxb-x"}), store=store)
    with TestClient(create_app(ctx)) as client:
        big = client.post("/slack/actions", content=b"payload=" + b"a" * MAX_SLACK_BODY)
        chunked = client.post("/slack/actions", content=iter([b"payload=", b"a" * MAX_SLACK_BODY]))
    assert big.status_code == 413 and chunked.status_code == 413
