"""The last look before anything leaves: every file of a snapshot, and every knowledge-base payload, is read
back and scanned with the scrubber's own detectors (detect.find). Anything still found refuses the write.

Why a second pass when scrubbing already ran: scrubbing runs on record fields, but what ships is what was
*written* — a later step (a template, a new field, a bug, an edit after curation) can put back a value the
first pass never saw. The scrubber is idempotent (scrubbed text has no findings), so a clean pipeline never
trips this; when it trips, the snapshot is not published and the error names the record ids.

Invariants:
- ``scan_snapshot_dir`` reads the files as written (bytes on disk, JSON-decoded, every string value), not the
  in-memory examples, so it checks exactly what a rented host would receive.
- A refusal is a ``ResidualSecretError`` (a ``SnapshotError``) carrying ``record_ids`` and the kinds found,
  never the values themselves: the error goes to logs and events.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from subagents.data.detect import find
from subagents.data.errors import ResidualSecretError

__all__ = ["Residual", "check_payloads", "refuse", "scan_json_lines", "scan_snapshot_dir", "scan_value"]

_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Residual:
    """Something the detectors still found: where (``item``: a record id, or a file and line) and what kinds."""

    item: str
    location: str
    kinds: tuple[str, ...]


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k, f"{path}.<key>")
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


_MIN_CHARS = 6  # shorter than any value a detector can find (the shortest is an email such as a@b.io)
_CACHE_MAX_CHARS = 64


def scan_value(value: Any, cache: dict[str, tuple[str, ...]] | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """(path, kinds) for every string inside ``value`` (nested dicts and lists) in which a detector fires.
    ``cache`` remembers short strings (keys, roles, domains repeat on every line of a file)."""
    out = []
    for path, text in _strings(value):
        if len(text) < _MIN_CHARS:
            continue
        kinds = cache.get(text) if cache is not None else None
        if kinds is None:
            kinds = tuple(sorted({f.kind for f in find(text)}))
            if cache is not None and len(text) <= _CACHE_MAX_CHARS:
                cache[text] = kinds
        if kinds:
            out.append((path, kinds))
    return out


def scan_json_lines(path: Path, item_ids: Sequence[str] | None = None) -> list[Residual]:
    """Scan a JSONL file as written; ``item_ids[i]`` names line ``i`` (else the file and line number)."""
    out: list[Residual] = []
    cache: dict[str, tuple[str, ...]] = {}
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            for where, kinds in scan_value(json.loads(line), cache):
                item = item_ids[n] if item_ids is not None and n < len(item_ids) else f"{path.name}:{n + 1}"
                out.append(Residual(item, f"{path.name}:{n + 1} {where}", kinds))
    return out


def scan_snapshot_dir(directory: Path, item_ids: Mapping[str, Sequence[str]]) -> list[Residual]:
    """Scan every file of a snapshot directory: ``*.jsonl`` line by line (``item_ids[file name]`` names the
    lines), any other file as one JSON document or as text."""
    out: list[Residual] = []
    for path in sorted(Path(directory).iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".jsonl":
            out.extend(scan_json_lines(path, item_ids.get(path.name)))
            continue
        text = path.read_text(encoding="utf-8")
        try:
            doc: Any = json.loads(text)
        except ValueError:
            doc = text
        out.extend(Residual(path.name, f"{path.name} {where}", kinds) for where, kinds in scan_value(doc))
    return out


def refuse(residuals: Sequence[Residual], what: str) -> None:
    """Raise ``ResidualSecretError`` naming the items when ``residuals`` is not empty."""
    if not residuals:
        return
    ids = list(dict.fromkeys(r.item for r in residuals))
    kinds = sorted({k for r in residuals for k in r.kinds})
    shown = ", ".join(ids[:_SHOWN]) + (f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else "")
    raise ResidualSecretError(
        f"refusing to write {what}: the final scan still finds {', '.join(kinds)} in {len(ids)} item(s) "
        f"after scrubbing: {shown}. Nothing was written; fix the scrubbing step (or the records) and retry.",
        record_ids=ids,
        kinds=kinds,
    )


def check_payloads(payloads: Iterable[tuple[str, Mapping[str, Any]]], *, what: str = "knowledge-base payloads") -> None:
    """The final pass for knowledge-base points: ``(point id, payload)`` pairs; raises ``ResidualSecretError``
    naming the ids when any string in a payload still holds a finding. Call it before the upsert."""
    residuals = [
        Residual(str(point_id), where, kinds) for point_id, payload in payloads for where, kinds in scan_value(payload)
    ]
    refuse(residuals, what)
