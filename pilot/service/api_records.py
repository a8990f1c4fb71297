"""``POST /v1/records``: batch ingest of execution records over HTTP.

The body is JSON Lines (one record per line) or a JSON object ``{"records": [...]}``. Each record's
``record_id`` is its idempotency key: a retried batch stores nothing twice. The answer comes only after the batch
is committed (``pilot.data.ingest.store_batch``, one transaction), with counts and, for every line that was
dead-lettered, its 1-based position and the reason. A body over the size limit is refused whole (413).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pilot.context import PilotContext
from pilot.data.ingest import store_batch
from subagents.data.schema import RecordError, parse_jsonl_line


def split_body(raw: bytes, content_type: str) -> list[bytes | str] | str:
    """The body's records as lines, or the reason the body as a whole is unusable."""
    if "application/json" in content_type:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            return f"body is not JSON: {exc}"
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            return 'a JSON body must be {"records": [...]}'
        return [json.dumps(r, ensure_ascii=False) for r in data["records"]]
    return [line for line in raw.split(b"\n") if line.strip()]


def add_record_routes(app: FastAPI, ctx: PilotContext, *, max_body: int) -> None:
    @app.post("/v1/records")
    async def records(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            return JSONResponse({"error": f"body over {max_body} bytes; split the batch"}, status_code=413)
        raw = await request.body()
        if len(raw) > max_body:
            return JSONResponse({"error": f"body over {max_body} bytes; split the batch"}, status_code=413)
        lines = split_body(raw, request.headers.get("content-type", ""))
        if isinstance(lines, str):
            return JSONResponse({"error": lines}, status_code=400)
        client = request.client.host if request.client else "?"

        def work() -> dict[str, Any]:
            rejected: list[dict[str, Any]] = []
            for index, line in enumerate(lines, start=1):
                try:
                    parse_jsonl_line(line)
                except RecordError as exc:
                    rejected.append({"line": index, "reason": exc.reason})
            items = [(str(i), line) for i, line in enumerate(lines, start=1)]
            report = store_batch(ctx.store, items, source=f"http:{client}")
            return {
                "received": len(lines),
                "accepted": report.accepted,
                "duplicates": report.duplicates,
                "dead_lettered": report.dead_lettered,
                "rejected": rejected,
            }

        result = await run_in_threadpool(work)
        return JSONResponse(result, status_code=200)
