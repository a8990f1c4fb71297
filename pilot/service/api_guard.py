"""The API's guards: bodies read with a bound, and what a refused request leaves behind.

``read_body`` refuses a body whose ``Content-Length`` is over the limit before reading a byte, and reads any
other body (chunked ones included) as a stream with a running byte count, stopping at the first chunk that
crosses the limit: memory stays bounded by the limit whatever the client sends.

Refusals: a counter for every one, an event row for a sample of them (``RefusalLog``, pilot/store/refusals.py,
shared with the dashboard).
"""

from __future__ import annotations

import logging

from fastapi import Request

from pilot.store.refusals import RefusalLog

logger = logging.getLogger(__name__)

__all__ = ["BodyTooLarge", "RefusalLog", "read_body"]


class BodyTooLarge(Exception):
    """The body is over the route's limit (declared or counted); nothing of it is kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body over {limit} bytes")
        self.limit = limit


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes; ``BodyTooLarge`` before reading when the declared length is over,
    or as soon as the running count passes the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
        raise BodyTooLarge(limit)
    buffer = bytearray()
    async for chunk in request.stream():
        if len(buffer) + len(chunk) > limit:
            raise BodyTooLarge(limit)
        buffer += chunk
    return bytes(buffer)
