"""Outcomes for proxied calls: ``POST /v1/feedback`` completes a recorded call into an execution record.

Invariants:
- The record is an ``ExecutionRecord`` (subagents/data/schema.py), validated like every ingested one, with
  ``record_id`` ``gw-<request id>``, the call's session, model version, latency and tokens, and the outcome's
  fields; it is stored through ``pilot.data.ingest.store_batch``. The schema stays the one source of truth.
- A second outcome for the same call replaces the first in the record (the later one wins); every outcome is an
  event row (entity ``gateway_call``) with its full body, so the history is kept.
- Feedback by ``session_id`` grades the session's latest call (an agent resends the whole conversation, so the
  last call holds it). An unknown id, or a call older than the feedback window, is refused with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, StringConstraints, model_validator
from sqlalchemy import update
from sqlmodel import col, select

from pilot.data.ingest import store_batch
from pilot.store import Store
from pilot.store.models import ExecutionRecordRow, GatewayCall, as_utc, utcnow
from pilot.store.status import CallStatus, EntityType
from pilot.store.writers import record_event
from subagents.data.schema import RecordError, content_hash, parse_record

DEFAULT_DOMAIN = "gateway"


class FeedbackIn(BaseModel):
    """The body of ``POST /v1/feedback``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: Annotated[StrictStr, StringConstraints(min_length=1, max_length=64)] | None = None
    session_id: Annotated[StrictStr, StringConstraints(min_length=1, max_length=200)] | None = None
    success: StrictBool | None = None
    tests_passed: StrictInt | None = Field(None, ge=0)
    tests_total: StrictInt | None = Field(None, ge=0)
    rating: StrictInt | None = Field(None, ge=1, le=5)
    comment: StrictStr | None = None
    tests: StrictStr | None = None
    domain: StrictStr | None = None
    tags: list[StrictStr] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _check(self) -> FeedbackIn:
        if (self.request_id is None) == (self.session_id is None):
            raise ValueError("give exactly one of request_id or session_id")
        if self.success is None and self.tests_total is None and self.rating is None:
            raise ValueError("give success, tests_passed/tests_total or rating: nothing grades the call")
        if (self.tests_passed is None) != (self.tests_total is None):
            raise ValueError("tests_passed and tests_total go together")
        if self.tests_total is not None and self.tests_passed is not None and self.tests_passed > self.tests_total:
            raise ValueError("tests_passed is more than tests_total")
        return self

    def graded_success(self) -> bool:
        if self.success is not None:
            return self.success
        if self.tests_total is not None:
            return self.tests_total > 0 and self.tests_passed == self.tests_total
        return (self.rating or 0) >= 4


class FeedbackRefused(Exception):
    """``status`` 404 (unknown or expired call) or 422 (the completed record is not valid); ``reason`` says why."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


@dataclass(frozen=True)
class Joined:
    request_id: str
    record_id: str
    success: bool
    replaced: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "record_id": self.record_id,
            "success": self.success,
            "replaced": self.replaced,
        }


def find_call(store: Store, body: FeedbackIn) -> GatewayCall | None:
    with store.session() as session:
        if body.request_id is not None:
            return session.get(GatewayCall, body.request_id)
        query = select(GatewayCall).where(GatewayCall.session_id == body.session_id)
        return session.exec(query.order_by(col(GatewayCall.ts).desc())).first()


def _render(prompt: dict[str, Any]) -> tuple[str, str]:
    """(task, prompt) of a call: the last user message, and the conversation as role-labelled text."""
    if "messages" in prompt:
        messages = prompt["messages"]
        text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)
        users = [m["content"] for m in messages if m["role"] == "user" and m["content"]]
        return (users[-1] if users else text), text
    return prompt.get("prompt", ""), prompt.get("prompt", "")


def completed_record(call: GatewayCall, body: FeedbackIn) -> dict[str, Any]:
    task, prompt = _render(json.loads(call.prompt))
    tokens = (call.prompt_tokens or 0) + (call.completion_tokens or 0)
    record: dict[str, Any] = {
        "record_id": f"gw-{call.request_id}",
        "timestamp": as_utc(call.ts).isoformat(),
        "session_id": call.session_id,
        "domain": body.domain or DEFAULT_DOMAIN,
        "tags": list(dict.fromkeys(["gateway", *body.tags])),
        "task": task,
        "prompt": prompt,
        "output": call.output,
        "tests": body.tests or "",
        "success": body.graded_success(),
        "metrics": {
            "tests_passed": body.tests_passed,
            "tests_total": body.tests_total,
            "duration_s": round(call.latency_ms / 1000, 6),
            "tokens": tokens or None,
        },
        "model_version": call.model_version,
    }
    if body.rating is not None or body.comment is not None:
        record["feedback"] = {"rating": body.rating, "comment": body.comment}
    return record


def join(store: Store, body: FeedbackIn, *, window: timedelta, producer: str) -> Joined:
    """Complete the call ``body`` names into an execution record (or replace its earlier outcome)."""
    call = find_call(store, body)
    if call is None:
        which = f"request id {body.request_id!r}" if body.request_id else f"session {body.session_id!r}"
        raise FeedbackRefused(404, "unknown_request", f"no recorded call for {which} (never seen, or not recorded)")
    expires = as_utc(call.ts) + window
    if call.status == CallStatus.UNLABELLED or utcnow() > expires:
        raise FeedbackRefused(
            404,
            "expired",
            f"call {call.request_id} is past the feedback window ({window.total_seconds() / 3600:g} h, "
            f"ended {expires.isoformat(timespec='seconds')}): it stays unlabelled traffic",
        )
    try:
        record = parse_record(completed_record(call, body))
    except RecordError as exc:
        raise FeedbackRefused(422, "invalid_record", f"the completed record is not valid: {exc.reason}") from exc
    report = store_batch(store, [(call.request_id, record.model_dump_json())], source="gateway:feedback")
    replaced = report.accepted == 0
    with store.session(write=True) as session:
        if replaced:
            session.execute(
                update(ExecutionRecordRow)
                .where(col(ExecutionRecordRow.record_id) == record.record_id)
                .values(
                    success=record.success,
                    domain=record.domain,
                    content_hash=content_hash(record),
                    payload=record.model_dump_json(),
                )
            )
        old = call.status
        session.execute(
            update(GatewayCall)
            .where(col(GatewayCall.request_id) == call.request_id, col(GatewayCall.status) == old)
            .values(
                status=CallStatus.LABELLED.value,
                record_id=record.record_id,
                feedback=body.model_dump(exclude_none=True),
                labelled_at=utcnow(),
            )
        )
        record_event(
            session,
            entity_type=EntityType.GATEWAY_CALL,
            entity_id=call.request_id,
            actor=producer,
            reason=f"outcome {'replaced' if replaced else 'reported'}: success={record.success}",
            old=old,
            new=CallStatus.LABELLED.value,
            data=body.model_dump(exclude_none=True),
        )
    return Joined(call.request_id, record.record_id, record.success, replaced)


def records_for_unlabelled(store: Store, ids: list[str]) -> int:
    """``gateway.train_on_unlabelled``: calls the feedback window closed on become execution records graded by
    whether they were answered (``success`` = outcome ok), tagged ``unlabelled``; the calls stay unlabelled.
    Returns how many records were stored (already stored ones are skipped)."""
    stored = 0
    for start in range(0, len(ids), 900):
        with store.session() as session:
            query = select(GatewayCall).where(col(GatewayCall.request_id).in_(ids[start : start + 900]))
            calls = session.exec(query).all()
        lines: list[tuple[str, bytes | str]] = []
        for call in calls:
            body = FeedbackIn(request_id=call.request_id, success=call.outcome == "ok", tags=["unlabelled"])
            try:
                record = parse_record(completed_record(call, body))
            except RecordError:
                continue  # nothing to learn from (an empty prompt): it stays traffic only
            lines.append((call.request_id, record.model_dump_json()))
        if lines:
            stored += store_batch(store, lines, source="gateway:unlabelled").accepted
    return stored
