"""The execution record: what the agent product reports about one task it did (schema version 1).

Invariants:
- A record that parses is complete and bounded: every text field is valid UTF-8 (no lone surrogates) and at most
  ``MAX_TEXT_BYTES`` encoded, the text of the whole record at most ``MAX_RECORD_BYTES``, JSON nesting at most
  ``MAX_JSON_DEPTH``. Unknown fields are refused (``extra="forbid"``): a typo in a producer is a clear error, not
  silently lost data. Scalars are strict: ``"yes"`` is not a bool and ``"5"`` is not an int.
- ``parse_record`` and ``parse_jsonl_line`` raise ``RecordError`` (with a one-line ``.reason`` naming the field)
  and nothing else, whatever the input.
- ``content_hash`` depends only on the normalised (NFC, whitespace-collapsed) domain, task, prompt and output,
  so re-reported or re-formatted copies of one solution hash the same.
- Additions within schema version 1 are optional fields with a default, so every record valid before them stays
  valid and means the same: ``tests`` (added for sandboxed evaluation) is the test code the product ran against
  the output (a Python file importing the solution as ``solution``), ``""`` when there were none. It is bounded
  like every other text field and does not enter ``content_hash``.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    model_validator,
)

from subagents.data.errors import RecordError

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_RECORD_BYTES",
    "MAX_TEXT_BYTES",
    "SCHEMA_VERSION",
    "ExecutionRecord",
    "Feedback",
    "Metrics",
    "RecordError",
    "content_hash",
    "normalise_text",
    "parse_jsonl_line",
    "parse_record",
]

SCHEMA_VERSION = 1
MAX_TEXT_BYTES = 256 * 1024
MAX_RECORD_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 16
# A text field of at most this many characters cannot exceed MAX_TEXT_BYTES however it encodes (4 bytes/char).
_SAFE_CHARS = MAX_TEXT_BYTES // 4

RecordId = Annotated[StrictStr, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@/-]+$")]
DomainSlug = Annotated[StrictStr, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
ShortText = Annotated[StrictStr, StringConstraints(min_length=1, max_length=200)]
Tag = Annotated[StrictStr, StringConstraints(min_length=1, max_length=128)]
# Characters, a first cheap bound; the exact UTF-8 byte bound is checked after validation.
Text = Annotated[StrictStr, StringConstraints(max_length=MAX_TEXT_BYTES)]
NonEmptyText = Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_TEXT_BYTES)]


class Metrics(BaseModel):
    """Objective outcome measurements of one task, all optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tests_passed: StrictInt | None = Field(default=None, ge=0)
    tests_total: StrictInt | None = Field(default=None, ge=0)
    duration_s: StrictFloat | None = Field(default=None, ge=0, allow_inf_nan=False)
    tokens: StrictInt | None = Field(default=None, ge=0)


class Feedback(BaseModel):
    """A human's verdict on one task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rating: StrictInt | None = Field(default=None, ge=1, le=5)
    comment: Text | None = None


_TEXT_FIELDS = ("task", "code_context", "error_context", "prompt", "output", "applied_changes", "tests")


class ExecutionRecord(BaseModel):
    """One task the agent product did: what it was asked, what it answered, and how that went."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    record_id: RecordId = Field(description="Idempotency key chosen by the producer.")
    timestamp: AwareDatetime
    session_id: ShortText
    domain: DomainSlug
    tags: list[Tag] = Field(default_factory=list, max_length=64)
    task: NonEmptyText
    code_context: Text = ""
    error_context: Text = ""
    prompt: NonEmptyText
    output: Text
    applied_changes: Text = ""
    tests: Text = Field(
        default="",
        description="The test code the product ran against the output (Python; imports it as ``solution``). "
        "Optional, added within schema version 1; code items are scored by running it in the sandbox.",
    )
    success: StrictBool
    metrics: Metrics = Field(default_factory=Metrics)
    feedback: Feedback | None = None
    model_version: ShortText | None = None

    @model_validator(mode="after")
    def _check_text(self) -> ExecutionRecord:
        total = 0
        for name in _TEXT_FIELDS:
            total += _text_bytes(name, getattr(self, name))
        for name in ("record_id", "session_id", "model_version"):
            value = getattr(self, name)
            if value is not None:
                total += _text_bytes(name, value)
        for tag in self.tags:
            total += _text_bytes("tags", tag)
        if self.feedback is not None and self.feedback.comment is not None:
            total += _text_bytes("feedback.comment", self.feedback.comment)
        if total > MAX_RECORD_BYTES:
            raise ValueError(f"record: text is {total} bytes, over the {MAX_RECORD_BYTES}-byte limit")
        return self


def _text_bytes(name: str, value: str) -> int:
    """UTF-8 size of ``value``; raises ValueError for lone surrogates or an oversized field."""
    # ASCII strings (the common case) are their own byte count; only others need the encode.
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(f"{name}: not valid Unicode (lone surrogate)") from None
    if size > MAX_TEXT_BYTES:
        raise ValueError(f"{name}: {size} bytes, over the {MAX_TEXT_BYTES}-byte limit")
    return size


def _reason(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    msg = str(first["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    # Model-level checks (no loc) already start their message with the field's name.
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def parse_record(raw: object) -> ExecutionRecord:
    """Validate an already-decoded record (a dict from the HTTP API or Python callers)."""
    if not isinstance(raw, dict):
        raise RecordError(f"record: expected a JSON object, got {type(raw).__name__}")
    try:
        return ExecutionRecord.model_validate(raw)
    except ValidationError as exc:
        raise RecordError(_reason(exc)) from None
    except RecursionError:
        raise RecordError("record: nested too deep") from None


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _refuse_constant(name: str) -> Any:
    # json accepts NaN/Infinity by default; they are not JSON and no field of ours can hold them.
    raise ValueError(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)


def _depth(obj: object) -> int:
    """Nesting depth of decoded JSON, iteratively (a recursive walk could itself overflow)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        node, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > MAX_JSON_DEPTH:
                return deepest
        if isinstance(node, dict):
            stack.extend((v, level + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, level + 1) for v in node if isinstance(v, dict | list))
    return deepest


def parse_jsonl_line(line: bytes | str) -> ExecutionRecord:
    """Parse one JSONL line into a record. Raises ``RecordError`` (and nothing else) for any bad input."""
    if isinstance(line, bytes | bytearray | memoryview):
        if len(line) > MAX_RECORD_BYTES:
            raise RecordError(f"record: {len(line)} bytes, over the {MAX_RECORD_BYTES}-byte limit")
        try:
            text = bytes(line).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(f"record: not valid UTF-8 at byte {exc.start}") from None
    elif isinstance(line, str):
        text = line
        # Characters <= bytes, so only long lines need the exact (encoding) check.
        if len(text) > MAX_RECORD_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_RECORD_BYTES:
            raise RecordError(f"record: over the {MAX_RECORD_BYTES}-byte limit")
    else:
        raise RecordError(f"record: expected bytes or str, got {type(line).__name__}")
    try:
        raw = _decoder.decode(text)
    except _DuplicateKey as exc:
        raise RecordError(f"{exc.key[:80]}: duplicate key in a JSON object") from None
    except RecursionError:
        raise RecordError(f"record: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # json.JSONDecodeError and our NaN refusal
        raise RecordError(f"record: invalid JSON ({str(exc).splitlines()[0][:200]})") from None
    # A valid record has a handful of brackets; only bracket-heavy lines need the walk.
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _depth(raw) > MAX_JSON_DEPTH:
        raise RecordError(f"record: nested deeper than {MAX_JSON_DEPTH} levels")
    return parse_record(raw)


def normalise_text(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, stripped. Case is kept: it carries meaning in code."""
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def content_hash(record: ExecutionRecord) -> str:
    """sha256 hex of the normalised domain, task, prompt and output (exact dedup key and stored hash)."""
    h = hashlib.sha256()
    for part in (record.domain, record.task, record.prompt, record.output):
        norm = normalise_text(part).encode("utf-8")
        # Length-prefixed so that no two different tuples of fields share a byte string.
        h.update(b"%d:" % len(norm))
        h.update(norm)
    return h.hexdigest()
