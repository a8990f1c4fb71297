"""Prompt-injection screening of training examples.

A record whose text tries to steer a model ("ignore all previous instructions", "approve this", chat-template
role tags) is quarantined, never trained on: a fine-tune would learn to obey it, and the supervisor's own LLM
may read these texts too.

Invariants:
- ``screen`` is a pure function of its text: the same text always gets the same verdict.
- Text is normalised before matching (NFKC, zero-width characters removed, case folded, whitespace collapsed),
  so full-width letters, ``i\u200bgnore`` or line-broken phrases do not slip through.
- Recall is preferred: a false positive costs one training example, a false negative can cost a model.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["screen"]

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)

# (reason, pattern over normalised lowercase text). Order only decides which reason is reported.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern))
    for reason, pattern in (
        (
            "ignore previous instructions",
            r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+|any\s+|the\s+|your\s+|of\s+)*"
            r"(?:(?:previous|prior|above|earlier|preceding|original|system|safety)\s+)?"
            r"(?:instructions?|prompts?|guidelines|guardrails)\b",
        ),
        (
            "ignore previous instructions",
            r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+|any\s+|the\s+|your\s+|of\s+)*"
            r"(?:previous|prior|above|earlier|preceding|original|system|safety)\s+"
            r"(?:directions|rules|constraints|context|messages?|policies)\b",
        ),
        (
            "disregard the budget or limits",
            r"\b(?:ignore|disregard|bypass|override|circumvent)\s+(?:the\s+|all\s+|any\s+|your\s+)*"
            r"(?:budget|spending\s+(?:cap|limit)s?|cost\s+(?:cap|limit)s?|limits?|caps?|kill\s+switch"
            r"|cooldown|approvals?)\b",
        ),
        (
            "asks for approval",
            r"\b(?:auto-?)?approve\s+(?:this|the\s+(?:run|request|deploy\w*|promotion|fine-?tune))\b",
        ),
        ("role reassignment", r"\byou\s+are\s+now\b|\bfrom\s+now\s+on,?\s+you\s+(?:are|will|must)\b"),
        ("mentions the system prompt", r"\bsystem\s+prompt\b|\bsystem\s+message\b"),
        (
            "chat template role tag",
            r"<\|(?:im_start|im_end|system|user|assistant|endoftext|start_header_id|end_header_id|eot_id)\|>"
            r"|\[/?inst\]|<</?sys>>|<start_of_turn>|(?:^|\s)#{2,}\s*(?:system|instruction)\s*:",
        ),
        ("new instructions", r"\b(?:new|updated|real|actual)\s+instructions\s*:"),
        ("jailbreak", r"\bjailbreak\w*\b|\bdeveloper\s+mode\b|\bdo\s+anything\s+now\b|\bdan\s+mode\b"),
        (
            "asks to reveal hidden context",
            r"\b(?:reveal|print|repeat|show|leak|output)\s+(?:your|the)\s+(?:hidden\s+|initial\s+|secret\s+)?"
            r"(?:instructions|prompt|system\s+prompt|api\s+keys?|credentials)\b",
        ),
        (
            "act as a privileged role",
            r"\bact\s+as\s+(?:an?\s+)?(?:unrestricted|unfiltered|admin|root|system|the\s+system)\b",
        ),
    )
)

# Every pattern contains one of these; clean text (nearly all of it) is screened with a few substring tests.
_TRIGGERS = (
    "ignore", "disregard", "forget", "override", "bypass", "circumvent", "approve",
    "you are now", "from now on", "system", "<|", "inst]", "<<sys", "<start_of_turn>", "instruction",
    "jailbreak", "developer mode", "anything now", "dan mode", "reveal", "print", "repeat", "show", "leak",
    "output", "act as",
)  # fmt: skip


def _normalise(text: str) -> str:
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    return " ".join(text.casefold().split())


def screen(text: str) -> str | None:
    """Return why ``text`` looks like a prompt-injection attempt, or None if it looks clean."""
    norm = _normalise(text)
    if not any(trigger in norm for trigger in _TRIGGERS):
        return None
    for reason, pattern in _PATTERNS:
        if pattern.search(norm):
            return f"prompt injection: {reason}"
    return None
