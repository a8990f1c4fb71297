"""The Python client for producers: send execution records to a running pilot (``POST /v1/records``).

Invariants:
- Sending is idempotent: every record carries its ``record_id`` and the server counts a known one as a
  duplicate, so a batch retried after a lost answer is never stored twice.
- A batch is retried only when it may not have been committed and retrying can help: connection errors,
  timeouts, 429 and 5xx, with exponential backoff (``Retry-After`` honoured) up to ``max_retries``. Any other
  answer (401, 413, 422, ...) raises ``IngestClientError`` at once; batches already sent stay sent.
- Invalid records are not an error of the call: the server dead-letters them and the report lists them with
  their index in the caller's sequence (not the batch's).

- Every request carries the producer's bearer token (``learning-pilot tokens create NAME --scope records:write``):
  the ``token`` argument, else the ``LEARNING_PILOT_PRODUCER_TOKEN`` environment variable. Without one the pilot
  answers 401, which is raised at once.

This module imports only httpx and the error root, so a producer can use it without the pilot's heavy parts.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from types import TracebackType
from typing import Any

import httpx

from tools.errors import PilotError

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
TOKEN_ENV = "LEARNING_PILOT_PRODUCER_TOKEN"  # read when no token is passed; not a daemon setting


class IngestClientError(PilotError):
    """The pilot refused a batch, or stayed unreachable after every retry."""

    def __init__(self, message: str, *, status_code: int | None = None, sent: SendReport | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.sent = sent  # what was acknowledged before the failure


@dataclass
class SendReport:
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    retries: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (index in the records sent, reason)


def _as_json(record: Any) -> Any:
    dump = getattr(record, "model_dump", None)  # an ExecutionRecord (or any pydantic model)
    return dump(mode="json") if callable(dump) else record


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class PilotClient:
    """``PilotClient("http://127.0.0.1:8765", token="lpp_...").send(records)``; usable as a context manager.

    ``token=None`` reads ``LEARNING_PILOT_PRODUCER_TOKEN``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"User-Agent": "learning-pilot-client/1"}
        token = token if token is not None else os.environ.get(TOKEN_ENV, "").strip() or None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep

    def __enter__(self) -> PilotClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, records: Iterable[Any], *, batch_size: int = 500) -> SendReport:
        """Send records (dicts or pydantic models) in batches; returns the server's counts, summed."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        report = SendReport()
        offset = 0
        for chunk in _chunks(records, batch_size):
            body = self._post_batch([_as_json(r) for r in chunk], report)
            report.batches += 1
            report.accepted += int(body.get("accepted", 0))
            report.duplicates += int(body.get("duplicates", 0))
            report.dead_lettered += int(body.get("dead_lettered", 0))
            for err in body.get("errors") or []:
                report.errors.append((offset + int(err["index"]), str(err["reason"])))
            offset += len(chunk)
        return report

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            retry_after = response.headers.get("Retry-After")
            if retry_after:
                try:
                    return min(float(retry_after), self.max_backoff_s)
                except ValueError:
                    pass  # an HTTP date: fall back to our own backoff
        base = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        return base * (0.5 + random.random() / 2)  # jitter, so many producers do not retry in step

    def _post_batch(self, batch: list[Any], report: SendReport) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            response: httpx.Response | None = None
            try:
                response = self._http.post("/v1/records", json={"records": batch})
            except httpx.TransportError as exc:  # connect/read errors, timeouts: the batch may not be stored
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    try:
                        body = response.json()
                    except ValueError as exc:
                        raise IngestClientError(
                            f"the pilot answered 200 with a body that is not JSON: {exc}", sent=report
                        ) from exc
                    if not isinstance(body, dict):
                        raise IngestClientError("the pilot answered 200 with an unexpected body", sent=report)
                    return body
                if response.status_code not in RETRY_STATUS:
                    raise IngestClientError(
                        f"the pilot refused the batch: HTTP {response.status_code}: {response.text[:500]}",
                        status_code=response.status_code,
                        sent=report,
                    )
                problem = f"HTTP {response.status_code}"
            if attempt == self.max_retries:
                raise IngestClientError(
                    f"gave up on a batch of {len(batch)} records after {attempt + 1} attempts: {problem}",
                    status_code=response.status_code if response is not None else None,
                    sent=report,
                )
            delay = self._delay(attempt, response)
            logger.warning("Sending %d records failed (%s); retry %d in %.2fs", len(batch), problem, attempt + 1, delay)
            report.retries += 1
            self._sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def feedback(
        self, *, request_id: str | None = None, session_id: str | None = None, **outcome: Any
    ) -> dict[str, Any]:
        """Report the outcome of a call made through the gateway (``POST /v1/feedback``; base URL: the gateway's):
        ``request_id`` (the answer's ``X-Request-Id``) or ``session_id`` (its latest call), and any of ``success``,
        ``tests_passed``, ``tests_total``, ``rating``, ``comment``, ``tests``, ``domain``, ``tags``. A later report
        for the same call replaces the earlier one. Raises ``IngestClientError`` (404: unknown or expired call)."""
        body = {"request_id": request_id, "session_id": session_id, **outcome}
        body = {k: v for k, v in body.items() if v is not None}
        for attempt in range(self.max_retries + 1):
            response: httpx.Response | None = None
            try:
                response = self._http.post("/v1/feedback", json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    result: dict[str, Any] = response.json()
                    return result
                try:
                    problem = str(response.json()["error"]["message"])
                except (ValueError, KeyError, TypeError):
                    problem = response.text[:500]
                if response.status_code not in RETRY_STATUS:
                    raise IngestClientError(
                        f"feedback refused: HTTP {response.status_code}: {problem}", status_code=response.status_code
                    )
            if attempt == self.max_retries:
                raise IngestClientError(f"feedback not delivered after {attempt + 1} attempts: {problem}")
            self._sleep(self._delay(attempt, response))
        raise AssertionError("unreachable")
