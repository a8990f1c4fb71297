"""Secret and PII scrubbing for every text that goes into a snapshot (snapshots go to rented, untrusted hosts).

Invariants:
- A finding (detect.py: detect-secrets plugins, python-stdnum check digits, phonenumbers and our own rules) is
  replaced by a typed placeholder ``<REDACTED:kind>``; where a value is found by its label (``password=``,
  ``AccountKey=``, ``-p``, ``Bearer``) the label is kept and only the value goes, so the example still reads
  naturally. A value is replaced whole: a password with symbols does not leave its tail behind.
- Numbers with a check digit (cards, IBANs, national ids) are replaced only when the check passes, and
  code-shaped text survives: version strings, digests, git SHAs, UUIDs, numeric ids, template references.
- Idempotent: no detector matches a placeholder, so ``scrub(scrub(t).text).text == scrub(t).text`` and
  ``detect.find`` on scrubbed text is empty (the snapshot's final pass relies on it).
- Measured on a corpus generated at run time from the issuers' formats (tests/helpers/secret_corpus.py,
  bench/bench_scrub.py), not on examples written together with the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from subagents.data.detect import KINDS, find

__all__ = ["KINDS", "ScrubResult", "placeholder", "scrub"]


@dataclass(frozen=True, slots=True)
class ScrubResult:
    """The scrubbed text and how many values of each kind were replaced."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)


def placeholder(kind: str) -> str:
    return f"<REDACTED:{kind}>"


def scrub(text: str) -> ScrubResult:
    """Replace secrets and PII in ``text`` with ``<REDACTED:kind>`` placeholders."""
    counts: dict[str, int] = {}
    if not text:
        return ScrubResult(text, counts)
    findings = find(text)
    if not findings:
        return ScrubResult(text, counts)
    parts: list[str] = []
    pos = 0
    for f in findings:
        parts.append(text[pos : f.start])
        parts.append(placeholder(f.kind))
        counts[f.kind] = counts.get(f.kind, 0) + 1
        pos = f.end
    parts.append(text[pos:])
    return ScrubResult("".join(parts), counts)
