"""Where the secrets and personal data in a text are: spans from detect-secrets, python-stdnum, phonenumbers
and our own rules (rules.py), merged into one list. scrub.py replaces them; the snapshot's final pass
(final_pass.py) refuses to write a file in which any is still found.

Invariants:
- ``find`` returns sorted, non-overlapping ``Finding`` spans: overlapping spans from several detectors are
  merged into their union (so a password two rules see differently goes whole), reported under the kind of the
  first detector in priority order (our specific rules, then detect-secrets' plugins, then phone numbers).
- Nothing inside a placeholder ``<REDACTED:kind>`` is ever a finding, so scrubbing is idempotent and the final
  pass over scrubbed text finds nothing that scrubbing already replaced.
- detect-secrets is used through its plugins on text, never its file scanner: its non-eager ``analyze_line``
  (``scan_line``'s eager mode flags ordinary words), the regex plugins' own ``denylist`` for full spans (the
  GitHub and GitLab plugins return only the token prefix as the value), and its heuristic filters. Its
  ``IPPublicDetector`` (which takes version strings for addresses) and ``HexHighEntropyString`` (which takes
  quoted git SHAs and digests for keys) are not used; our rules cover those kinds with context.
- Every detector has a cheap pre-check, so clean text (the common case) costs a few substring tests and one
  combined regex search.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import phonenumbers
from detect_secrets.filters import heuristic
from detect_secrets.plugins.base import BasePlugin, RegexBasedDetector

from subagents.data.rules import SECRET_RULES, Needles, cut_value
from subagents.data.rules_pii import PII_RULES, version_before

__all__ = ["KINDS", "PLACEHOLDER", "Finding", "find"]

PLACEHOLDER = re.compile(r"<REDACTED:[A-Za-z0-9_]+>")
# Our rules in priority order: secrets (rules.py), then personal data and check-digit numbers (rules_pii.py).
RULES = SECRET_RULES + PII_RULES


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    start: int
    end: int
    kind: str


# detect-secrets plugin class -> the kind we report (the names the curation report counts).
_LIBRARY_KINDS: dict[str, str] = {
    "ArtifactoryDetector": "artifactory_token",
    "AWSKeyDetector": "aws_access_key",
    "AzureStorageKeyDetector": "azure_storage_key",
    "BasicAuthDetector": "url_password",
    "CloudantDetector": "cloudant_key",
    "DiscordBotTokenDetector": "discord_bot_token",
    "GitHubTokenDetector": "github_token",
    "GitLabTokenDetector": "gitlab_token",
    "IbmCloudIamDetector": "ibm_cloud_key",
    "IbmCosHmacDetector": "ibm_cloud_key",
    "JwtTokenDetector": "jwt",
    "MailchimpDetector": "mailchimp_api_key",
    "NpmDetector": "npm_token",
    "OpenAIDetector": "openai_api_key",
    "PrivateKeyDetector": "pem_private_key",
    "PypiTokenDetector": "pypi_token",
    "SendGridDetector": "sendgrid_api_key",
    "SlackDetector": "slack_token",
    "SoftlayerDetector": "softlayer_key",
    "SquareOAuthDetector": "square_token",
    "StripeDetector": "stripe_key",
    "TelegramBotTokenDetector": "telegram_bot_token",
    "TwilioKeyDetector": "twilio_key",
}
# Every kind a finding can have, in priority order.
KINDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [r.kind for r in RULES]
        + sorted(_LIBRARY_KINDS.values())
        + ["high_entropy_string", "generic_secret", "phone_number"]
    )
)
# The file name picks KeywordDetector's rules; its YAML rules take typed parameters (`password: str`) for values.
KEYWORD_FILE = "trace.py"
_TRIM = " \t\r\n\"'=:"
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_DIGEST_BEFORE = re.compile(r"(?:sha(?:1|224|256|384|512)|md5|integrity)[-:\"'\s=]*$", re.I)
# Every detect-secrets regex plugin needs a token of 11+ characters with a digit in it (the shortest is
# Artifactory's; every key the plugins know is random enough to carry digits), or one of the words below for
# the URL, key-header and keyword-shaped ones; the plugins' own regexes run only then, so clean prose and code
# cost a digit search and a few substring tests.
_LIBRARY_RUN = re.compile(r"[A-Za-z0-9_+/=.-]*\d[A-Za-z0-9_+/=.-]*")
_LIBRARY_WORDS = ("://", "begin", "putty", "_authtoken", "cloudant", "ibm", "softlayer")


def _library_hint(text: str, low: str) -> bool:
    if any(w in low for w in _LIBRARY_WORDS):
        return True
    if _DIGIT.search(text) is None:
        return False
    return any(len(m) >= 11 for m in _LIBRARY_RUN.findall(text))


_QUOTED_RUN = re.compile(r"[\"'][A-Za-z0-9+/=_-]{20,}[\"']")
_KEYWORD_HINT = re.compile(r"pass|pwd|secret|token|api_?key|private_key|credential")  # on the lowercase text
_PHONE_HINT = re.compile(r"\+\d|\(\d{3}\)|\d{3}[.\s-]\d{3,4}")


@dataclass(frozen=True, slots=True)
class _Library:
    regex_plugins: tuple[tuple[str, RegexBasedDetector], ...]
    entropy: BasePlugin
    keyword: BasePlugin


@functools.cache
def _library() -> _Library:
    # Imported here: building the plugins costs ~0.1 s, paid only by processes that scrub.
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
    from detect_secrets.plugins.keyword import KeywordDetector

    plugins: list[tuple[str, RegexBasedDetector]] = []
    classes: list[type[BasePlugin]] = list(get_mapping_from_secret_type_to_class().values())
    for cls in classes:
        kind = _LIBRARY_KINDS.get(cls.__name__)
        if kind is not None and issubclass(cls, RegexBasedDetector):
            plugins.append((kind, cls()))
    plugins.sort(key=lambda kp: type(kp[1]).__name__)
    return _Library(
        regex_plugins=tuple(plugins),
        entropy=Base64HighEntropyString(limit=4.5),
        keyword=KeywordDetector(),
    )


def _needle_index() -> tuple[dict[str, list[int]], dict[str, list[int]], list[int], list[int], list[int]]:
    """Which rules each distinct needle enables (case-sensitive ones, lowercase ones), the rules that need only
    a digit, the rules that need a digit too, and the rules whose pre-check is something else (asked directly).
    Each distinct needle is tested once per text."""
    exact: dict[str, list[int]] = {}
    folded: dict[str, list[int]] = {}
    digit_only: list[int] = []
    digit_too: list[int] = []
    other: list[int] = []
    for i, rule in enumerate(RULES):
        pre = rule.precheck
        if not isinstance(pre, Needles):
            other.append(i)
            continue
        if pre.digit:
            (digit_too if pre.needles else digit_only).append(i)
        for n in pre.needles:
            (folded if pre.low else exact).setdefault(n, []).append(i)
    return exact, folded, digit_only, digit_too, other


_EXACT_RULES, _FOLDED_RULES, _DIGIT_ONLY, _DIGIT_TOO, _OTHER_RULES = _needle_index()
_DIGIT = re.compile(r"\d")


def _enabled_rules(text: str, low: str) -> list[int]:
    enabled = {i for i in _OTHER_RULES if RULES[i].precheck(text, low)}
    for needle in [n for n in _EXACT_RULES if n in text]:
        enabled.update(_EXACT_RULES[needle])
    for needle in [n for n in _FOLDED_RULES if n in low]:
        enabled.update(_FOLDED_RULES[needle])
    if _DIGIT.search(text) is None:
        enabled.difference_update(_DIGIT_TOO)
    else:
        enabled.update(_DIGIT_ONLY)
    return sorted(enabled)


def _rule_findings(text: str, low: str) -> Iterator[tuple[int, int, int, str]]:
    for priority in _enabled_rules(text, low):
        rule = RULES[priority]
        for m in rule.pattern.finditer(text):
            if rule.accept is not None and not rule.accept(m):
                continue
            if not rule.groups:
                yield m.start(), m.end(), priority, rule.kind
                continue
            for group in rule.groups:
                if m.start(group) < 0:
                    continue
                start, end = cut_value(m, group) if group == "v4" else m.span(group)
                if end > start:
                    yield start, end, priority, rule.kind


def _library_findings(text: str, low: str, base: int) -> Iterator[tuple[int, int, int, str]]:
    lib = _library()
    if _library_hint(text, low):
        for kind, plugin in lib.regex_plugins:
            for rx in plugin.denylist:
                for m in rx.finditer(text):
                    start, end = m.span()
                    while start < end and text[start] in _TRIM:
                        start += 1
                    while end > start and text[end - 1] in _TRIM:
                        end -= 1
                    # Some plugin regexes stop short of the token's end (GitHub's takes 36 characters).
                    while end < len(text) and text[end] in _TOKEN_CHARS and text[end - 1] in _TOKEN_CHARS:
                        end += 1
                    if end > start:
                        yield start, end, base, kind
    quoted = _QUOTED_RUN.search(text) is not None
    keyword = _KEYWORD_HINT.search(low) is not None
    if not (quoted or keyword):
        return
    offset = 0
    for line in text.split("\n"):
        if quoted and _QUOTED_RUN.search(line):
            for value in _line_values(lib.entropy, line, "trace.txt"):
                i = line.find(value)
                if i >= 0 and not _DIGEST_BEFORE.search(line[:i]):
                    yield offset + i, offset + i + len(value), base + 1, "high_entropy_string"
        if keyword and _KEYWORD_HINT.search(line.lower()):
            for value in _line_values(lib.keyword, line, KEYWORD_FILE):
                i = line.find(value)
                if i >= 0 and not heuristic.is_indirect_reference(line):
                    yield offset + i, offset + i + len(value), base + 2, "generic_secret"
        offset += len(line) + 1


def _line_values(plugin: BasePlugin, line: str, filename: str) -> Iterator[str]:
    found: Any = plugin.analyze_line(filename=filename, line=line, line_number=1)
    for secret in found:
        value = secret.secret_value
        if not value or len(value) < 4:
            continue
        if (
            heuristic.is_sequential_string(value)
            or heuristic.is_potential_uuid(value)
            or heuristic.is_templated_secret(value)
            or heuristic.is_prefixed_with_dollar_sign(value)
            or heuristic.is_likely_id_string(value, line, plugin)
        ):
            continue
        yield value


def _phone_findings(text: str, base: int) -> Iterator[tuple[int, int, int, str]]:
    if _PHONE_HINT.search(text) is None:
        return
    for m in phonenumbers.PhoneNumberMatcher(text, "US"):
        raw = m.raw_string
        # A bare run of digits is an id more often than a phone number (order 4155550123); a written-out
        # number has a "+" or separators.
        if raw.isdigit():
            continue
        # Inside a token (a UUID, a digest), part of a dotted run (an OID, a build number) or after a version
        # word: not a phone number.
        before, after = text[m.start - 1 : m.start], text[m.end : m.end + 1]
        if (before and (before.isalnum() or before in "-_./")) or (after and (after.isalnum() or after in "-_")):
            continue
        if re.match(r"\.\d", text[m.end : m.end + 2]):
            continue
        if "." in raw and version_before(text, m.start):
            continue
        yield m.start, m.end, base, "phone_number"


def find(text: str) -> list[Finding]:
    """The secrets and personal data in ``text``: sorted, non-overlapping spans (see the module docstring)."""
    if not text:
        return []
    low = text.lower()
    raw = list(_rule_findings(text, low))
    raw.extend(_library_findings(text, low, len(RULES)))
    raw.extend(_phone_findings(text, len(RULES) + 3))
    if not raw:
        return []
    taken = [m.span() for m in PLACEHOLDER.finditer(text)] if "<REDACTED:" in text else []
    if taken:
        raw = [f for f in raw if not any(f[0] < b and a < f[1] for a, b in taken)]
    if not raw:
        return []
    raw.sort()
    out: list[Finding] = []
    cur_start, cur_end, cur_priority, cur_kind = raw[0]
    for start, end, priority, kind in raw[1:]:
        if start < cur_end:  # overlapping: one span, the most specific kind
            cur_end = max(cur_end, end)
            if priority < cur_priority:
                cur_priority, cur_kind = priority, kind
            continue
        out.append(Finding(cur_start, cur_end, cur_kind))
        cur_start, cur_end, cur_priority, cur_kind = start, end, priority, kind
    out.append(Finding(cur_start, cur_end, cur_kind))
    return out
