"""Secret and PII scrubbing for every text that goes into a snapshot (snapshots go to rented, untrusted hosts).

Invariants:
- A match is replaced by a typed placeholder ``<REDACTED:kind>``; where a pattern is anchored on a label
  (``password=``, ``Bearer``, ``aws_secret_access_key:``, ``user:pass@``) the label is kept and only the value
  goes, so the example still reads naturally.
- Rules run in a fixed order, most specific first (a GitHub token is a ``github_token``, not a generic
  ``token=`` assignment), and no rule matches a placeholder an earlier rule left, so scrubbing is idempotent:
  ``scrub(scrub(t).text).text == scrub(t).text``.
- Recall is preferred over precision, but code-shaped text must survive: hex digests, git SHAs, UUIDs, version
  numbers, loopback addresses and names such as ``get_token_count`` or ``token = tokenizer.encode(x)`` are
  left alone. ``tests/fixtures/scrub_corpus.jsonl`` measures both (see bench/bench_curate.py).
- Each rule has a cheap substring pre-check so clean text (the common case) costs a few ``in`` tests.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["KINDS", "ScrubResult", "placeholder", "scrub"]


@dataclass(frozen=True, slots=True)
class ScrubResult:
    """The scrubbed text and how many values of each kind were replaced."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)


def placeholder(kind: str) -> str:
    return f"<REDACTED:{kind}>"


# A replacement function gets the match and returns the replacement, or None to leave the match alone.
_Replace = Callable[[re.Match[str]], str | None]


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    # Returns True when the rule may match at all; on the raw text and its lowercase.
    precheck: Callable[[str, str], bool]
    # Groups whose span is replaced: the first that took part in the match (none given: the whole match).
    groups: tuple[int | str, ...] = ()
    accept: Callable[[re.Match[str]], bool] | None = None


def _has(*needles: str) -> Callable[[str, str], bool]:
    return lambda text, _low: any(n in text for n in needles)


def _has_low(*needles: str) -> Callable[[str, str], bool]:
    return lambda _text, low: any(n in low for n in needles)


def _always(_text: str, _low: str) -> bool:
    return True


# Quoted values that are placeholders, not secrets: templates, environment references, masks.
_PLACEHOLDER_VALUE = re.compile(r"^(?:[$%{<*].*|x{3,}|X{3,}|\.{3}|changeme|password|secret|token|none|null)$")

# Unquoted values that look like code, not like a literal secret: attribute access, types, keywords,
# variable references, placeholders, small numbers (calls and subscripts are checked separately).
_CODE_VALUE = re.compile(
    r"""^(?:
        None|null|nil|true|false|True|False|undefined|str|bytes|int|float|bool|string|String|SecretStr|Any|
        Optional\[.*|Secret.*|self\..*|this\..*|os\..*|env\..*|process\.env.*|settings\..*|config\..*|
        [A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+ |   # attribute access: request.form
        [a-z_][a-z0-9_]*_[a-z0-9_]* |                           # snake_case variable: refresh_token
        [$%{<*].* |                                             # ${VAR}, %(x)s, {x}, <placeholder>, ****
        x{3,}|\.{3}|
        \d{1,5} |                                               # a small number: max_token=512
        v?\d+(?:\.\d+)+[\w.-]*                                   # a version: image:1.2.3
    )$""",
    re.VERBOSE,
)

_SECRET_WORD = (
    r"(?:password|passwd|passphrase|pwd|secret|token|apikey|credentials?"
    r"|(?:api|access|private|secret|signing|encryption|master|client)[_-]?key)"
)


def _generic_accept(m: re.Match[str]) -> bool:
    unquoted = m.group("v4")
    value = unquoted if unquoted is not None else m.group("v1") or m.group("v2") or m.group("v3") or ""
    key = m.group("key").lower()
    if unquoted is not None:
        if m.string[m.end() : m.end() + 1] in ("(", "["):  # a call or a subscript: password = get_password()
            return False
        low = value.lower()
        # A variable named after the key: api_key=api_key, token=tok.
        if low.replace("_", "").isalpha() and (low in key or key in low):
            return False
        return not _CODE_VALUE.match(value)
    return not _PLACEHOLDER_VALUE.match(value)


def _bearer_accept(m: re.Match[str]) -> bool:
    value = m.group(2)
    # Prose ("the bearer authentication") has no digits; real tokens are long or carry digits.
    return len(value) >= 24 or any(c.isdigit() for c in value)


def _aws_secret_accept(m: re.Match[str]) -> bool:
    value = m.group(1) if m.lastindex else m.group(0)
    # A git SHA or a hex digest is 40 lowercase hex characters; an AWS secret mixes case.
    return any(c.isupper() for c in value) and any(c.islower() for c in value)


def _aws_bare_secret_accept(m: re.Match[str]) -> bool:
    value = m.group(0)
    # Unlabelled, so stricter: real keys (30 random bytes, base64) carry digits and few slashes; paths do not.
    return _aws_secret_accept(m) and any(c.isdigit() for c in value) and value.count("/") <= 3


def _ipv4_accept(m: re.Match[str]) -> bool:
    text = m.group(0)
    # Loopback, "any" and netmasks say nothing about anyone's network.
    return not (text.startswith(("127.", "0.0.0.0", "255.255.")))


def _ipv6_accept(m: re.Match[str]) -> bool:
    text = m.group(0)
    groups = [g for g in re.split(r"[:.]", text) if g]
    # "x[1::2]" is a slice, not an address: want three groups or a full four-digit one.
    if len(groups) < 3 and not any(len(g) == 4 for g in groups):
        return False
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_unspecified)


def _phone_accept(m: re.Match[str]) -> bool:
    digits = sum(c.isdigit() for c in m.group(0))
    return 8 <= digits <= 15 if m.group(0).startswith("+") else digits == 10


_B64 = r"A-Za-z0-9+/="

_RULES: tuple[_Rule, ...] = (
    # --- multi-line key material first: it contains text that later rules would split up ---
    _Rule(
        "gcp_service_account_key",
        re.compile(
            r'("private_key"\s*:\s*")(-----BEGIN (?:RSA )?PRIVATE KEY-----(?:\\n|[\s' + _B64 + r"])*?"
            r"(?:-----END (?:RSA )?PRIVATE KEY-----(?:\\n)?|(?=\")))"
        ),
        _has('"private_key"'),
        groups=(2,),
    ),
    _Rule(
        "pem_private_key",
        re.compile(
            r"-----BEGIN ((?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?)-----"
            r"(?:[\s\S]*?-----END \1-----|(?:\\n|[\s" + _B64 + r"])*)"
        ),
        _has("PRIVATE KEY"),
    ),
    _Rule(
        "gcp_private_key_id",
        re.compile(r'"private_key_id"\s*:\s*"([0-9a-f]{40})"'),
        _has('"private_key_id"'),
        groups=(1,),
    ),
    # --- provider keys with a recognisable prefix ---
    _Rule("anthropic_api_key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}"), _has("sk-ant-")),
    _Rule(
        "openai_api_key",
        re.compile(r"(?<![A-Za-z0-9_-])sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}"),
        _has("sk-"),
    ),
    _Rule(
        "github_token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})"),
        _has("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    _Rule(
        "slack_token",
        re.compile(r"\bxox[abposre]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,}"),
        _has("xox", "hooks.slack.com"),
    ),
    _Rule(
        "stripe_key",
        re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),
        _has("_live_", "_test_"),
    ),
    _Rule("huggingface_token", re.compile(r"\bhf_[A-Za-z0-9]{30,}"), _has("hf_")),
    _Rule("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), _has("AIza")),
    _Rule(
        "aws_access_key",
        re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}\b"),
        _has("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA"),
    ),
    _Rule(
        "jwt",
        re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
        _has("eyJ"),
    ),
    # --- secrets identified by their label ---
    _Rule(
        "aws_secret_key",
        re.compile(
            r"(?i:aws_?secret(?:_?access)?_?key|secret_?access_?key)[\"']?\s*[:=]\s*[\"']?"
            r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
        ),
        _has_low("secret"),
        groups=(1,),
        accept=_aws_secret_accept,
    ),
    _Rule(
        # An unlabelled 40-character key in text that talks about AWS (a pasted credentials block).
        "aws_secret_key",
        re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
        _has_low("aws", "akia", "asia"),
        accept=_aws_bare_secret_accept,
    ),
    _Rule(
        "url_password",
        # RFC 3986: "/", "?", "#" and "@" are percent-encoded inside userinfo, so they end the password.
        re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/?#@\"'<>]+:([^\s/?#@\"'<>]+)@[A-Za-z0-9\[]"),
        _has("://"),
        groups=(1,),
    ),
    _Rule(
        "bearer_token",
        re.compile(
            r"(?i)(\bbearer\s+|\bauthorization[\"']?\s*[:=]\s*[\"']?(?:token|basic)\s+)"
            r"([A-Za-z0-9._~+/-]{8,}=*)"
        ),
        _has_low("bearer", "authorization"),
        groups=(2,),
        accept=_bearer_accept,
    ),
    _Rule(
        "generic_secret",
        re.compile(
            r"(?i)(?<![A-Za-z0-9])(?P<key>[A-Za-z0-9_.-]*?" + _SECRET_WORD + r")[\"']?\]?\s*(?::=|:|=)\s*"
            r"(?:\"(?P<v1>[^\"\n]{3,})\"|'(?P<v2>[^'\n]{3,})'|`(?P<v3>[^`\n]{3,})`"
            r"|(?P<v4>[^\s\"'`,;&)(\]\[{}<>]{3,}))"
        ),
        _has_low("pass", "pwd", "secret", "token", "key", "credential"),
        groups=("v1", "v2", "v3", "v4"),
        accept=_generic_accept,
    ),
    # --- personal data ---
    _Rule(
        "email",
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        _has("@"),
    ),
    _Rule(
        "ipv6_address",
        re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"),
        lambda text, _low: "::" in text or text.count(":") >= 7,
        accept=_ipv6_accept,
    ),
    _Rule(
        "ipv4_address",
        re.compile(
            r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
            r"(?![\w]|\.\d)"
        ),
        _has("."),
        accept=_ipv4_accept,
    ),
    _Rule(
        "phone_number",
        re.compile(
            r"(?<![\w.+-])(?:\+[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
            r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}|\d{3} \d{3} \d{4})(?![\w-]|\.\d)"
        ),
        _always,
        accept=_phone_accept,
    ),
)

KINDS: tuple[str, ...] = tuple(dict.fromkeys(rule.kind for rule in _RULES))


def _apply(rule: _Rule, text: str, counts: dict[str, int]) -> str:
    marker = placeholder(rule.kind)
    hits = 0

    def replace(m: re.Match[str]) -> str:
        nonlocal hits
        if rule.accept is not None and not rule.accept(m):
            return m.group(0)
        hits += 1
        if not rule.groups:
            return marker
        group = next((g for g in rule.groups if m.start(g) >= 0), 0)
        start, end = m.span(group)
        base = m.start(0)
        whole = m.group(0)
        return whole[: start - base] + marker + whole[end - base :]

    out = rule.pattern.sub(replace, text)
    if hits:
        counts[rule.kind] = counts.get(rule.kind, 0) + hits
    return out


def scrub(text: str) -> ScrubResult:
    """Replace secrets and PII in ``text`` with ``<REDACTED:kind>`` placeholders."""
    counts: dict[str, int] = {}
    if not text:
        return ScrubResult(text, counts)
    low = text.lower()
    for rule in _RULES:
        if rule.precheck(text, low):
            new = _apply(rule, text, counts)
            if new is not text:
                text = new
                low = text.lower()
    return ScrubResult(text, counts)
