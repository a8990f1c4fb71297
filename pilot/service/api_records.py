"""``POST /v1/records``: batch ingest of execution records over HTTP, by authenticated producers.

Order of checks, each refusal answered before anything is stored:

1. a producer token (``Authorization: Bearer lpp_...``, ``pilot/data/producers.py``) holding ``records:write``
   or ``live:write`` (401 missing/unknown/revoked, 403 neither scope) — checked before the body is read;
2. the body: refused (413) before reading when ``Content-Length`` is over the limit, else streamed with a
   running byte count and refused as soon as it passes the limit (chunked bodies included);
3. its shape: JSON Lines, or a JSON object ``{"records": [...]}`` (400 otherwise);
4. every line's scope: a record with a ``model_version`` is a live-quality record (it drives the canary and the
   automatic rollback) and needs ``live:write``; any other needs ``records:write``. One line the token may not
   write refuses the whole request (403), nothing stored.

Then the lines are stored in batches of ``ingest.batch_size`` (``pilot.data.ingest.store_batch``), each its own
short transaction validated before the write lock is taken, so a huge request never keeps the kill switch's
pause waiting. Each ``record_id`` is its idempotency key: a retried batch stores nothing twice. The answer
comes after the last commit and summarises: counts, dead letters by reason, and the first
``ingest.FIRST_ERRORS`` dead-lettered lines with their 1-based position. Stored records carry the producer's name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pilot.context import PilotContext
from pilot.data.ingest import IngestReport, store_batch
from pilot.data.producers import LIVE_WRITE, RECORDS_WRITE, Producer, ProducerAuthError, authenticate_any
from pilot.service.api_guard import BodyTooLarge, RefusalLog, read_body

ROUTE = "/v1/records"


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def json_records(raw: bytes) -> list[bytes | str] | str:
    """A JSON body's records as lines, or the reason the body as a whole is unusable."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return f"body is not JSON: {exc}"
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        return 'a JSON body must be {"records": [...]}'
    return [json.dumps(r, ensure_ascii=False) for r in data["records"]]


def _lines(raw: bytes) -> Iterator[bytes]:
    """Non-blank lines of ``raw`` without building a list of millions of them."""
    start = 0
    while start < len(raw):
        end = raw.find(b"\n", start)
        end = len(raw) if end < 0 else end
        line = raw[start:end]
        start = end + 1
        if line.strip():
            yield line


def needed_scope(line: bytes | str) -> str | None:
    """The scope a line needs: ``live:write`` when it carries a model version, else ``records:write``. None for
    a line that is not a JSON object (it will be dead-lettered; any ingest scope may send it)."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return LIVE_WRITE if data.get("model_version") not in (None, "") else RECORDS_WRITE


def scope_refusal(producer: Producer, lines: Iterator[bytes | str]) -> str | None:
    """Why the request is refused (403) when a line needs a scope the producer lacks; None when all may go."""
    if producer.allows(LIVE_WRITE) and producer.allows(RECORDS_WRITE):
        return None
    for index, line in enumerate(lines, start=1):
        scope = needed_scope(line)
        if scope is not None and not producer.allows(scope):
            kind = "a live-quality record (it has a model_version)" if scope == LIVE_WRITE else "a training record"
            return f"line {index} is {kind} and producer {producer.name} lacks the scope {scope}; nothing was stored"
    return None


def summary(report: IngestReport, received: int) -> dict[str, Any]:
    return {
        "received": received,
        "accepted": report.accepted,
        "duplicates": report.duplicates,
        "dead_lettered": report.dead_lettered,
        "dead_letter_reasons": dict(report.reasons.most_common(20)),
        "rejected": [{"line": int(location), "reason": reason} for location, reason in report.first_errors],
        "rejected_truncated": report.dead_lettered > len(report.first_errors),
    }


def add_record_routes(app: FastAPI, ctx: PilotContext, *, max_body: int, refusals: RefusalLog) -> None:
    batch_size = ctx.settings.ingest.batch_size

    def refuse(code: int, why: str, request: Request) -> JSONResponse:
        client = request.client.host if request.client else "?"
        refusals.record(ROUTE, code, why, client=client)
        return JSONResponse({"error": why}, status_code=code)

    @app.post(ROUTE)
    async def records(request: Request) -> JSONResponse:
        try:
            scopes = [RECORDS_WRITE, LIVE_WRITE]
            producer = await run_in_threadpool(authenticate_any, ctx.store, bearer(request), scopes)
        except ProducerAuthError as exc:
            return await run_in_threadpool(refuse, exc.status, str(exc), request)
        try:
            raw = await read_body(request, max_body)
        except BodyTooLarge:
            return await run_in_threadpool(refuse, 413, f"body over {max_body} bytes; split the batch", request)

        def work() -> JSONResponse:
            records = json_records(raw) if "application/json" in request.headers.get("content-type", "") else None
            if isinstance(records, str):
                return refuse(400, records, request)

            def lines() -> Iterator[bytes | str]:  # JSON Lines are split lazily, twice if scopes need a look
                return iter(records) if records is not None else _lines(raw)

            refused = scope_refusal(producer, lines())
            if refused is not None:
                return refuse(403, refused, request)
            numbered = ((str(n), line) for n, line in enumerate(lines(), 1))
            report = IngestReport(f"http:{producer.name}")
            received = 0
            while batch := list(islice(numbered, batch_size)):
                received += len(batch)
                report.merge(store_batch(ctx.store, batch, source=report.source, producer=producer.name))
            return JSONResponse(summary(report, received), status_code=200)

        return await run_in_threadpool(work)
