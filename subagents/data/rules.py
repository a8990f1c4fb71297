"""Our own detection rules: what the libraries (detect.py) miss, or find without a clean span.

A rule is a regex, a cheap substring pre-check and an optional ``accept`` that validates the match (a check
digit, a decoded ``user:pass``, an entropy floor, the words before it). It names the group(s) whose span is the
secret; a label (``password=``, ``AccountKey=``, ``-p``) stays, so the example still reads naturally.

Order matters only for the kind a merged span is reported under (the first rule that found part of it).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SECRET_RULES", "Needles", "Rule", "cut_value", "digits", "entropy", "has", "has_low"]


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    # True when the rule may match at all; gets the raw text and its lowercase.
    precheck: Callable[[str, str], bool]
    # Groups whose span is the secret: every one that took part (none given: the whole match).
    groups: tuple[int | str, ...] = ()
    accept: Callable[[re.Match[str]], bool] | None = None


@dataclass(frozen=True, slots=True)
class Needles:
    """A pre-check that passes when the text (or its lowercase, ``low``) contains one of ``needles``.
    detect.py folds every rule's needles into one regex, so clean text costs one search, not one per rule."""

    needles: tuple[str, ...]  # empty: no needle needed
    low: bool = False
    digit: bool = False  # the text must also hold a digit (numbers, keys with digits)

    def __call__(self, text: str, low: str) -> bool:
        hay = low if self.low else text
        if self.digit and not any(c.isdigit() for c in text):
            return False
        return not self.needles or any(n in hay for n in self.needles)


def has(*needles: str) -> Needles:
    return Needles(needles)


def has_low(*needles: str) -> Needles:
    return Needles(needles, low=True)


def digits(*needles: str) -> Needles:
    """Needs a digit somewhere in the text (and one of ``needles``, when given)."""
    return Needles(needles, digit=True)


def entropy(s: str) -> float:
    """Shannon entropy in bits per character."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


# Quoted values that are placeholders, not secrets: templates, environment references, masks.
_PLACEHOLDER_VALUE = re.compile(
    r"^(?:\$\{\w+\}|\$\{\{.*|\$\(.*\)|(?-i:\$[A-Z_][A-Z0-9_]*)|%\(\w+\)[sdr]|%\w+%|\{\w*\}|<[\w -]+>|\*+"
    r"|.*\{\{.*\}\}.*|x{3,}|X{3,}|\.{3}|changeme|password|secret|token|none|null|redacted)$",
    re.I,
)

# Unquoted values that look like code, not like a literal secret.
_CODE_VALUE = re.compile(
    r"""^(?:
        None|null|nil|true|false|True|False|undefined|str|bytes|int|float|bool|string|String|SecretStr|Any|
        Optional\[.*|Secret.*|self\..*|this\..*|os\..*|env\..*|process\.env.*|settings\..*|config\..*|
        [A-Za-z_]+\d*(?:\.[A-Za-z_]+\d*)+ |                   # attribute access: request.form, cfg.s3
        \[.*\] |                                                # a list literal, an INI section
        [a-z_][a-z0-9_]*_[a-z0-9_]* |                           # snake_case variable: refresh_token
        \$\{\w+\}|\$[A-Z_][A-Z0-9_]*|%\(\w+\)[sdr]|%\w+%|\{\w*\}|<[\w-]+>|\*+ |  # ${VAR}, %(x)s, {x}, <x>, ***
        x{3,}|\.{3}|
        \d{1,5} |                                               # a small number: max_token=512
        v?\d+(?:\.\d+)+[\w.-]*                                   # a version: image:1.2.3
    )$""",
    re.VERBOSE,
)

_SECRET_WORD = (
    r"(?:password|passwd|passphrase|pwd|secret|token|apikey|credentials?|auth"
    r"|(?:api|access|private|secret|signing|encryption|master|client|account|license)[_-]?key)"
)

# Where an unquoted value stops inside a key=value list: "Pwd=x;Encrypt=True", and in a query string
# ("?user=a&password=x&useSSL=true") also at "&"; elsewhere "&" belongs to the password ("password=Tr0ub4dor&3").
_NEXT_PAIR = re.compile(r";(?=\s*[A-Za-z][\w ]{0,30}=)")
_NEXT_QUERY_PAIR = re.compile(r"[;&](?=\s*[A-Za-z][\w ]{0,30}=)")


def cut_value(m: re.Match[str], group: int | str) -> tuple[int, int]:
    """The span of an unquoted value: up to the next ``;key=`` / ``&key=`` pair, without trailing punctuation."""
    start, end = m.span(group)
    value = m.string[start:end]
    in_query = "key" in m.re.groupindex and m.string[m.start("key") - 1 : m.start("key")] in ("?", "&")
    cut = (_NEXT_QUERY_PAIR if in_query else _NEXT_PAIR).search(value)
    if cut:
        end = start + cut.start()
        value = value[: cut.start()]
    # Trailing punctuation of the surrounding prose or code, not of the password.
    pairs = {")": "(", "]": "[", "}": "{"}
    while (
        value and value[-1] in ",;)]}" and (end >= len(m.string) or m.string[end].isspace() or m.string[end] in "\"'")
    ):
        last = value[-1]
        if last in pairs and value.count(pairs[last]) >= value.count(last):
            break  # "Ember(3871)": the bracket is the password's own
        value, end = value[:-1], end - 1
    return start, end


# A call or a subscript: get_password(), secrets.token_hex(32), config["jwt"], HTTPBasicAuth(user, pw).
_CALL = re.compile(r"^(?P<callee>[A-Za-z_][\w.]*)[(\[](?P<args>[^)\]]*)")
_NAME_PART = re.compile(r"(?:[A-Za-z]+\d*)?")  # a plain name, digits only at its end: token_hex, b64, s3
# Templates and shell expansions: ${{ secrets.X }}, {{ vault_x }}, $(cat f), ${VAR}, $DB_PASS, $db_pass.
_EXPANSION = re.compile(r"^(?:\$\{\{|\{\{|\$\(|\$\{[A-Za-z_]\w*\}[,;]?$|\$(?:[A-Z_][A-Z0-9_]*|[a-z_][a-z0-9_]*)[,;]?$)")
_KEYWORDS = frozenset(
    [
        "raise",
        "return",
        "pass",
        "continue",
        "break",
        "lambda",
        "await",
        "yield",
        "not",
        "and",
        "or",
        "if",
        "else",
        "in",
        "is",
        "del",
        "assert",
        "import",
        "from",
    ]
)


def _is_code_expression(m: re.Match[str], value: str) -> bool:
    """True for an unquoted value that is code, not a literal: a template or shell expansion, a keyword, or a
    call or subscript where code has them. ``KEY=Ember(3871)`` (.env, shell, a CLI flag) and YAML's
    ``password: Ember(3871)`` are literals; ``token = make_token(user)``, ``{"token": make_token(user)}``,
    ``f(token=make_token(user))`` and ``secrets.token_hex(32)`` anywhere are code."""
    if _EXPANSION.match(value) or value.rstrip(",;:") in _KEYWORDS:
        return True
    call = _CALL.match(value)
    if call is None:
        return False
    if not all(_NAME_PART.fullmatch(p) for p in re.split(r"[._]", call.group("callee"))):
        return False  # Atl4s(, FIRvBGP1SRj3b3.gqM(: not a name
    if "." in call.group("callee"):
        return True
    separator = m.string[m.end("key") : m.start("v4")]
    quoted_key = separator[:1] in ("'", '"')  # a dict literal: {"token": make_token(user)}
    spaced = "=" in separator and " " in separator  # an assignment in code: token = make_token(user)
    before = m.string[: m.start("key")].rstrip(" ")[-1:]
    kwarg = before in ("(", ",") and "=" in separator  # f(user, token=make_token(user))
    return quoted_key or spaced or kwarg


def _generic_accept(m: re.Match[str]) -> bool:
    unquoted = m.group("v4")
    value = unquoted if unquoted is not None else m.group("v1") or m.group("v2") or m.group("v3") or ""
    key = m.group("key").lower()
    if unquoted is not None:
        if _is_code_expression(m, unquoted):
            return False
        start, end = cut_value(m, "v4")
        value = m.string[start:end]
        if len(value) < 3:
            return False
        if m.string[m.end("v4") : m.end("v4") + 1] in ("(", "["):  # a call or a subscript
            return False
        low = value.lower()
        if low.replace("_", "").isalpha() and (low in key or key in low):  # api_key=api_key
            return False
        return not (_CODE_VALUE.match(value) or _CODE_VALUE.match(unquoted))
    return not _PLACEHOLDER_VALUE.match(value.strip())


def _bearer_accept(m: re.Match[str]) -> bool:
    value = m.group(2)
    return len(value) >= 24 or any(c.isdigit() for c in value)


def _mixed_case(value: str) -> bool:
    return any(c.isupper() for c in value) and any(c.islower() for c in value)


def _aws_secret_accept(m: re.Match[str]) -> bool:
    return _mixed_case(m.group(1))


def _bare_40_accept(m: re.Match[str]) -> bool:
    # Unlabelled: real keys (30 random bytes, base64) mix case, carry digits and few slashes, and are random.
    value = m.group(0)
    return (
        _mixed_case(value)
        and any(c.isdigit() for c in value)
        and value.count("/") <= 5
        and entropy(value) >= 4.2
        and ("+" in value or not re.search(r"[a-z]{3,}/[a-z]{3,}/", value))  # a path (paths hold no "+")
    )


def _basic_accept(m: re.Match[str]) -> bool:
    # A Basic credential is base64 of "user:password": decode it rather than guess.
    try:
        raw = base64.b64decode(m.group(1) + "=" * (-len(m.group(1)) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in raw


_B64 = r"A-Za-z0-9+/="
_PEM_LABEL = r"(?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP |SSH2 ENCRYPTED )?PRIVATE KEY(?: BLOCK)?"
_TOKEN_END = r"(?![A-Za-z0-9_-])"

SECRET_RULES: tuple[Rule, ...] = (
    # --- multi-line key material first ---
    Rule(
        "gcp_service_account_key",
        re.compile(
            r'("private_key"\s*:\s*")(-----BEGIN (?:RSA )?PRIVATE KEY-----(?:\\n|[\s' + _B64 + r"])*?"
            r"(?:-----END (?:RSA )?PRIVATE KEY-----(?:\\n)?|(?=\")))"
        ),
        has('"private_key"'),
        groups=(2,),
    ),
    Rule(
        "pem_private_key",
        re.compile(
            r"-----BEGIN (" + _PEM_LABEL + r")-----"
            r"(?:[\s\S]*?-----END \1-----|(?:\\n|[\s" + _B64 + r"])*)"
        ),
        has("PRIVATE KEY"),
    ),
    Rule(
        "putty_private_key",
        re.compile(r"PuTTY-User-Key-File-\d:[\s\S]*?(?:Private-MAC:\s*[0-9a-fA-F]+|Private-Lines:[\s\S]*\Z)"),
        has("PuTTY-User-Key-File"),
    ),
    Rule("age_secret_key", re.compile(r"AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{50,}"), has("AGE-SECRET-KEY-")),
    Rule(
        "kubeconfig_client_key",
        re.compile(r"(?:client-key-data|\"client-key-data\")\s*:\s*[\"']?([A-Za-z0-9+/=]{16,})"),
        has("client-key-data"),
        groups=(1,),
    ),
    Rule(
        "gcp_private_key_id",
        re.compile(r'"private_key_id"\s*:\s*"([0-9a-f]{40})"'),
        has('"private_key_id"'),
        groups=(1,),
    ),
    # --- provider keys with a recognisable prefix ---
    Rule("anthropic_api_key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}"), has("sk-ant-")),
    Rule(
        "openai_api_key",
        re.compile(r"(?<![A-Za-z0-9_-])sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}"),
        has("sk-"),
    ),
    Rule(
        "github_token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})"),
        has("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    Rule(
        "gitlab_token",
        re.compile(r"\b(?:gl(?:pat|dt|rt|ptt|ft|soat|cbt|imt|agent|oas)-|GR1348941)[A-Za-z0-9_-]{20,}" + _TOKEN_END),
        has("gl", "GR1348941"),
    ),
    Rule(
        "slack_token",
        re.compile(r"\bxox[abposre]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,}"),
        has("xox", "hooks.slack.com"),
    ),
    Rule(
        "discord_webhook",
        re.compile(r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_-]{20,}"),
        has("/api/webhooks/"),
    ),
    Rule(
        "stripe_key",
        re.compile(r"\b(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,})"),
        has("_live_", "_test_", "whsec_"),
    ),
    Rule("huggingface_token", re.compile(r"\bhf_[A-Za-z0-9]{30,}"), has("hf_")),
    Rule("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), has("AIza")),
    Rule("google_oauth_client_secret", re.compile(r"\bGOCSPX-[A-Za-z0-9_-]{20,}"), has("GOCSPX-")),
    Rule("npm_token", re.compile(r"\bnpm_[A-Za-z0-9]{36}" + _TOKEN_END), has("npm_")),
    Rule("pypi_token", re.compile(r"\bpypi-AgE[A-Za-z0-9_-]{40,}"), has("pypi-AgE")),
    Rule("shopify_token", re.compile(r"\bshp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}\b"), has("shp")),
    Rule("square_token", re.compile(r"\bsq0(?:atp|csp)-[A-Za-z0-9_-]{22,}"), has("sq0")),
    Rule("vault_token", re.compile(r"\bhv[sbr]\.[A-Za-z0-9_-]{24,}"), has("hvs.", "hvb.", "hvr.")),
    Rule("digitalocean_token", re.compile(r"\bdo[por]_v1_[a-f0-9]{64}\b"), has("_v1_")),
    Rule("twilio_key", re.compile(r"\b(?:AC|SK)[0-9a-f]{32}\b"), has("AC", "SK")),
    Rule("mailchimp_api_key", re.compile(r"\b[0-9a-f]{32}-us\d{1,2}\b"), has("-us")),
    Rule("telegram_bot_token", re.compile(r"\b\d{8,10}:AA[A-Za-z0-9_-]{30,}" + _TOKEN_END), has(":AA")),
    Rule(
        "azure_client_secret",
        re.compile(r"(?<![A-Za-z0-9_~.-])[A-Za-z0-9_~.-]{3}\dQ~[A-Za-z0-9_~.-]{31,34}(?![A-Za-z0-9_~.-])"),
        has("Q~"),
    ),
    Rule(
        "aws_access_key",
        re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b"),
        has("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "ABIA", "ACCA"),
    ),
    Rule(
        "jwt",
        re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
        has("eyJ"),
    ),
    # --- secrets identified by their label ---
    Rule(
        "azure_storage_key",
        re.compile(r"\bAccountKey=([A-Za-z0-9+/]{20,}={0,2})"),
        has("AccountKey="),
        groups=(1,),
    ),
    Rule(
        "azure_sas_signature",
        re.compile(r"[?&;]sig=([A-Za-z0-9%+/=_-]{16,})"),
        has("sig="),
        groups=(1,),
    ),
    Rule(
        "docker_auth",
        re.compile(r"\"(?:auth|identitytoken|registrytoken)\"\s*:\s*\"([A-Za-z0-9+/=_.-]{8,})\""),
        has('"auth"', '"identitytoken"', '"registrytoken"'),
        groups=(1,),
    ),
    Rule(
        "aws_secret_key",
        re.compile(
            r"(?i:aws_?secret(?:_?access)?_?key|secret_?access_?key)[\"']?\s*[:=]\s*[\"']?"
            r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
        ),
        has_low("secret"),
        groups=(1,),
        accept=_aws_secret_accept,
    ),
    Rule(
        # An unlabelled 40-character key (a pasted credentials block, STS output): random, mixed case, digits.
        "aws_secret_key",
        re.compile(r"(?<![A-Za-z0-9/+_-])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=_-])"),
        digits(),
        accept=_bare_40_accept,
    ),
    Rule(
        "secret_key_base",
        re.compile(r"(?i)secret_key_base[\"']?\s*[:=]\s*[\"']?([0-9a-zA-Z]{30,})"),
        has_low("secret_key_base"),
        groups=(1,),
    ),
    Rule(
        "url_password",
        # RFC 3986: "/", "?", "#" and "@" are percent-encoded inside userinfo, so they end the password.
        re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/?#@\"'<>]*:([^\s/?#@\"'<>]+)@[A-Za-z0-9\[]"),
        has("://"),
        groups=(1,),
    ),
    Rule(
        "basic_auth",
        re.compile(r"(?i)\bbasic\s+([A-Za-z0-9+/]{8,}={0,2})(?![A-Za-z0-9+/=])"),
        has_low("basic"),
        groups=(1,),
        accept=_basic_accept,
    ),
    Rule(
        "bearer_token",
        re.compile(
            r"(?i)(\bbearer\s+|\bauthorization[\"']?\s*[:=]\s*[\"']?(?:token)\s+)"
            r"([A-Za-z0-9._~+/-]{8,}=*)"
        ),
        has_low("bearer", "authorization"),
        groups=(2,),
        accept=_bearer_accept,
    ),
    # --- passwords on command lines and in credential files ---
    Rule(
        "cli_password",
        re.compile(r"\bmysql(?:dump|admin|import|sh)?\b[^\n]*?\s-p(?!\s)(['\"]?)(?P<v>[^\s'\"]+)\1"),
        has("mysql"),
        groups=("v",),
    ),
    Rule(
        "cli_password",
        re.compile(r"\bsshpass\s+-p\s*(['\"]?)(?P<v>[^\s'\"]+)\1|\"sshpass\",\s*\"-p\",\s*\"(?P<w>[^\"]+)\""),
        has("sshpass"),
        groups=("v", "w"),
    ),
    Rule(
        "cli_password",
        re.compile(r"(?:\s-u|--user)[\s=]+(['\"]?)[^\s:'\"]+:(?P<v>[^\s'\"]+)\1"),
        has("-u", "--user"),
        groups=("v",),
    ),
    Rule(
        "cli_password",
        re.compile(
            r"(?i)--(?:http-)?(?:password|passwd|pass|api[-_]key|token|secret|client[-_]secret|auth[-_]token"
            r"|access[-_]token)(?:=|\s+)(['\"]?)(?P<v>[^\s'\"]+)\1"
        ),
        has("--"),
        groups=("v",),
    ),
    Rule(
        "netrc_password",
        re.compile(r"(?i)\blogin\s+\S+[\s+>]+password\s+(?P<v>\S+)"),
        has_low("login"),
        groups=("v",),
    ),
    Rule(
        "pgpass_password",
        re.compile(r"(?<![\w.:/@-])[A-Za-z0-9_.*-]+:(?:\d{2,5}|\*):[\w*.-]+:[\w*.@-]+:(?P<v>[^\s:][^\s]*)"),
        has(":"),
        groups=("v",),
        accept=lambda m: not m.group("v").isdigit(),
    ),
    Rule(
        "generic_secret",
        re.compile(
            r"(?i)(?<![A-Za-z0-9])(?P<key>[A-Za-z0-9_.-]*?" + _SECRET_WORD + r")[\"']?\]?\s*(?::=|:|=)\s*"
            r"(?:\"(?P<v1>[^\"\n]{3,})\"|'(?P<v2>[^'\n]{3,})'|`(?P<v3>[^`\n]{3,})`"
            r"|(?P<v4>[^\s\"'`]{3,}))"
        ),
        has_low("pass", "pwd", "secret", "token", "key", "credential", "auth"),
        groups=("v1", "v2", "v3", "v4"),
        accept=_generic_accept,
    ),
)
