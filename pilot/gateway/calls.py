"""Spooled calls into the store: scrubbed, streams reassembled, in batches; and the feedback window's sweep.

Invariants:
- Text reaches the store only through ``subagents.data.scrub.scrub`` (message contents, the prompt, the answer),
  the scrubber every snapshot uses; the spool's raw text never leaves the gateway's disk.
- ``ingest_segments`` commits a batch in one transaction and only then deletes its segments; a call already
  stored (a segment re-read after a crash) is skipped by its request id, never stored twice.
- ``sweep`` moves open calls older than ``gateway.feedback_window_h`` to ``unlabelled`` (compare-and-set on the
  status): traffic for volume and drift, never training, unless ``gateway.train_on_unlabelled`` says so.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from pilot.gateway.spool import Spool
from pilot.store import Store
from pilot.store.models import GatewayCall, utcnow
from pilot.store.status import CallStatus
from subagents.data.scrub import scrub

logger = logging.getLogger(__name__)

MAX_STORED_TEXT = 200_000  # characters of prompt or answer kept per call (a record's field holds 256 KiB)


class ScrubCache:
    """``scrub`` with a bounded memo: an agent resends its system prompt and history with every call."""

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._memo: OrderedDict[str, str] = OrderedDict()

    def __call__(self, text: str) -> str:
        if not text:
            return text
        hit = self._memo.get(text)
        if hit is not None:
            self._memo.move_to_end(text)
            return hit
        clean = scrub(text).text
        self._memo[text] = clean
        if len(self._memo) > self.size:
            self._memo.popitem(last=False)
        return clean


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None


def _choice_text(choice: dict[str, Any], streamed: bool) -> str:
    if "text" in choice:  # /v1/completions
        return str(choice.get("text") or "")
    part = choice.get("delta" if streamed else "message") or {}
    return str(part.get("content") or "") if isinstance(part, dict) else ""


def parse_answer(raw: str, *, streamed: bool) -> Answer:
    """The answer text and usage from an upstream body: one JSON object, or SSE ``data:`` lines (reassembled)."""
    usage: dict[str, Any] = {}
    if not streamed:
        try:
            body = json.loads(raw)
        except ValueError:
            return Answer("", None, None)
        if not isinstance(body, dict):
            return Answer("", None, None)
        choices = body.get("choices") or []
        text = _choice_text(choices[0], False) if choices and isinstance(choices[0], dict) else ""
        usage = body.get("usage") or {}
    else:
        parts: list[str] = []
        for line in raw.splitlines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                continue
            if not isinstance(chunk, dict):
                continue
            for choice in chunk.get("choices") or []:
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    parts.append(_choice_text(choice, True))
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
        text = "".join(parts)
    if not isinstance(usage, dict):
        usage = {}
    prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return Answer(
        text,
        prompt_tokens if isinstance(prompt_tokens, int) else None,
        completion_tokens if isinstance(completion_tokens, int) else None,
    )


def _scrub_prompt(request: dict[str, Any], clean: ScrubCache) -> dict[str, Any]:
    if isinstance(request.get("messages"), list):
        messages = []
        for message in request["messages"]:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            messages.append({"role": str(message.get("role", "user")), "content": clean(str(content or ""))})
        return {"messages": messages}
    prompt = request.get("prompt", "")
    return {"prompt": clean(prompt if isinstance(prompt, str) else json.dumps(prompt))}


def to_row(call: dict[str, Any], clean: ScrubCache) -> dict[str, Any]:
    """One spooled call as a ``gateway_call`` row, scrubbed."""
    streamed = bool(call.get("streamed"))
    answer = parse_answer(call.get("response", ""), streamed=streamed)
    prompt = json.dumps(_scrub_prompt(call.get("request") or {}, clean), ensure_ascii=False)
    return {
        "request_id": str(call["request_id"])[:64],
        "session_id": str(call["session_id"])[:200],
        "endpoint": str(call.get("endpoint", ""))[:40],
        "model": str(call.get("model", ""))[:200],
        "model_version": call.get("version"),
        "producer": str(call.get("producer", ""))[:200],
        "ts": datetime.fromtimestamp(float(call["ts"]), UTC),
        "latency_ms": float(call.get("latency_ms") or 0.0),
        "ttft_ms": call.get("ttft_ms"),
        "upstream_status": int(call.get("status") or 0),
        "outcome": str(call.get("outcome", "ok"))[:20],
        "streamed": streamed,
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "prompt": prompt[:MAX_STORED_TEXT],
        "output": clean(answer.text[:MAX_STORED_TEXT]),
        "status": CallStatus.OPEN.value,
        "record_id": None,
        "feedback": {},
        "ingested_at": utcnow(),
        "labelled_at": None,
    }


def store_calls(store: Store, rows: list[dict[str, Any]]) -> int:
    """Insert rows whose request id is not stored yet, in one transaction; returns how many were new."""
    table = GatewayCall.__table__  # type: ignore[attr-defined]
    unique = {row["request_id"]: row for row in rows}
    with store.session(write=True) as session:
        ids = list(unique)
        existing: set[str] = set()
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start : start + 900]
            existing.update(session.execute(select(table.c.request_id).where(table.c.request_id.in_(chunk))).scalars())
        fresh = [row for key, row in unique.items() if key not in existing]
        if fresh:
            session.execute(insert(table), fresh)
    return len(fresh)


@dataclass
class IngestCounters:
    ingested: int = 0
    bad: int = 0  # spooled lines that could not be turned into a row (logged, skipped)
    store_failures: int = 0  # batches the store refused (they stay in the spool and are retried)


def ingest_segments(spool: Spool, store: Store, clean: ScrubCache, counters: IngestCounters, *, batch: int) -> int:
    """Ingest complete segments, up to about ``batch`` calls per transaction; returns how many were stored."""
    stored = 0
    segments = spool.segments()
    while segments:
        taken: list[Path] = []
        rows: list[dict[str, Any]] = []
        while segments and (not rows or len(rows) < batch):
            segment = segments.pop(0)
            try:
                calls = spool.read(segment)
            except FileNotFoundError:
                continue  # another ingester stored and deleted it
            except (OSError, ValueError) as exc:
                logger.warning("Spool segment %s unreadable, skipped: %s", segment, exc)
                counters.bad += 1
                spool.done(segment)
                continue
            for call in calls:
                try:
                    rows.append(to_row(call, clean))
                except (KeyError, TypeError, ValueError) as exc:
                    counters.bad += 1
                    logger.warning("Spooled call %s not stored: %s", call.get("request_id", "?"), exc)
            taken.append(segment)
        if rows:
            stored += store_calls(store, rows)  # raises when the store is down: the segments stay
        for segment in taken:
            spool.done(segment)
        counters.ingested += len(rows)
    return stored


def sweep(store: Store, *, window: timedelta, now: datetime | None = None) -> list[str]:
    """Open calls older than the feedback window become unlabelled; returns their request ids."""
    cutoff = (now or utcnow()) - window
    table = GatewayCall.__table__  # type: ignore[attr-defined]
    with store.session(write=True) as session:
        ids = list(
            session.execute(
                select(table.c.request_id).where(table.c.status == CallStatus.OPEN.value, table.c.ts < cutoff)
            ).scalars()
        )
        for start in range(0, len(ids), 900):
            session.execute(
                update(table)
                .where(table.c.request_id.in_(ids[start : start + 900]), table.c.status == CallStatus.OPEN.value)
                .values(status=CallStatus.UNLABELLED.value)
            )
    return ids
