"""Our own rules for personal data and numbers with check digits (rules.py holds the secrets' rules).

Numbers with a check digit are validated with python-stdnum before they are redacted (a card number only
when Luhn passes, an IBAN only when mod-97 does, national ids by their own checks), so code-shaped digits
survive: version strings, build numbers, OIDs, numeric ids. Addresses after a version word are versions.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from stdnum import iban as std_iban
from stdnum import luhn
from stdnum.br import cpf
from stdnum.ca import sin
from stdnum.es import dni
from stdnum.nl import bsn
from stdnum.us import ssn

from subagents.data.rules import Rule, digits, has

__all__ = ["PII_RULES", "version_before"]

_VERSION_BEFORE = re.compile(
    r"(?:(?<![A-Za-z])(?:version\w*|ver\.?|build|release|rev(?:ision)?|oid)\s*[:=]?\s*['\"]?|\bv|==|>=|<=|~=|!=|@|/)$",
    re.I,
)


def version_before(text: str, start: int) -> bool:
    """True when the words just before ``start`` introduce a version (``version``, ``==``, ``nginx/``)."""
    return _VERSION_BEFORE.search(text[max(0, start - 24) : start]) is not None


def _ipv4_accept(m: re.Match[str]) -> bool:
    text = m.group(0)
    if text.startswith(("127.", "0.", "255.255.")):
        return False
    before = m.string[max(0, m.start() - 24) : m.start()]
    # "version 1.2.3.4", "__version__ = '1.2.3.4'", "pkg==1.2.3.4", "nginx/1.2.3.4": a version, not a host.
    # An "@" before an address is a login (ssh deploy@1.2.3.4), so only a version word after it counts.
    if before.endswith("@"):
        return True
    return not _VERSION_BEFORE.search(before)


def _ipv6_accept(m: re.Match[str]) -> bool:
    text = m.group(0)
    groups = [g for g in re.split(r"[:.]", text) if g]
    if len(groups) < 3 and not any(len(g) == 4 for g in groups):
        return False
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_unspecified)


def _phone_accept(m: re.Match[str]) -> bool:
    text = m.group(0)
    digits = sum(c.isdigit() for c in text)
    if "." in text and version_before(m.string, m.start()):
        return False
    return 8 <= digits <= 15 if text.startswith("+") else digits == 10


_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[0689]|6(?:011|5|4[4-9]|22)|35)")


def _card_accept(m: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", m.group(0))
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn.is_valid(digits)


def _email_accept(m: re.Match[str]) -> bool:
    local = m.group(0).split("@", 1)[0].lower()
    # git@github.com:org/repo.git is an ssh remote; a noreply address names nobody.
    return local not in ("git", "hg", "noreply", "no-reply")


def _validator(check: Callable[[str], bool], group: int | str = 0) -> Callable[[re.Match[str]], bool]:
    def accept(m: re.Match[str]) -> bool:
        return bool(check(m.group(group)))  # stdnum's is_valid never raises

    return accept


def _labelled_id_accept(m: re.Match[str]) -> bool:
    label, value = m.group("label").lower(), m.group("v")
    checks: dict[str, Callable[[str], bool]] = {
        "ssn": ssn.is_valid,
        "sin": sin.is_valid,
        "bsn": bsn.is_valid,
        "cpf": cpf.is_valid,
    }
    for name, check in checks.items():
        if name in label or (name == "bsn" and "burgerservice" in label) or (name == "sin" and "insurance" in label):
            return bool(check(value))
    return bool(ssn.is_valid(value))


PII_RULES: tuple[Rule, ...] = (
    # --- numbers with check digits (validated before they are redacted) ---
    Rule(
        "credit_card",
        re.compile(r"(?<![\w.-])\d{4}(?:[ -]?\d{2,6}){2,4}(?![\w-]|\.\d)"),
        digits(),
        accept=_card_accept,
    ),
    Rule(
        "iban",
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
        digits(),
        accept=_validator(lambda v: std_iban.is_valid(v, check_country=False)),
    ),
    Rule("us_ssn", re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"), digits("-"), accept=_validator(ssn.is_valid)),
    Rule(
        "br_cpf",
        re.compile(r"(?<![\d.])\d{3}\.\d{3}\.\d{3}-\d{2}(?!\d)"),
        digits("."),
        accept=_validator(cpf.is_valid),
    ),
    Rule("es_dni", re.compile(r"\b\d{8}[A-HJ-NP-TV-Z]\b"), digits(), accept=_validator(dni.is_valid)),
    Rule("ca_sin", re.compile(r"(?<![\d-])\d{3}-\d{3}-\d{3}(?![\d-])"), digits("-"), accept=_validator(sin.is_valid)),
    Rule(
        "national_id",
        re.compile(
            r"(?i)\b(?P<label>ssn|sin|bsn|cpf|burgerservicenummer|social (?:security|insurance) (?:number|no\.?))"
            r"[\"']?\s*[:=]?\s*[\"']?(?P<v>\d{9}|\d{11})\b"
        ),
        digits(),
        groups=("v",),
        accept=_labelled_id_accept,
    ),
    Rule(
        "uk_nino",
        re.compile(r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),
        digits(),
    ),
    # --- personal data ---
    Rule(
        "email",
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        has("@"),
        accept=_email_accept,
    ),
    Rule(
        # Written-out numbers phonenumbers does not know (unassigned ranges, test data); detect.py runs
        # phonenumbers for the rest. A bare run of digits is an id, not a phone number.
        "phone_number",
        re.compile(
            r"(?<![\w.+-])(?:\+[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
            r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}|\d{3} \d{3} \d{4})(?![\w-]|\.\d)"
        ),
        digits(),
        accept=_phone_accept,
    ),
    Rule(
        "ipv6_address",
        re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"),
        lambda text, _low: "::" in text or text.count(":") >= 7,
        accept=_ipv6_accept,
    ),
    Rule(
        "ipv4_address",
        re.compile(
            r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
            r"(?![\w]|\.\d)"
        ),
        digits("."),
        accept=_ipv4_accept,
    ),
)
