"""PII and secret redaction for logged text: `redact(text)` replaces what it finds with typed
placeholders, in one regex pass.

    [EMAIL]   name@example.com
    [PHONE]   +44 20 7946 0958, (415) 555-2671, 415-555-2671, 020 7946 0958, +4915112345678
    [CARD]    13-19 digits, plain or in 4-4-4-x / 4-6-5 groups, only when the Luhn check passes
    [IPV4]    dotted quads with valid octets, including ones that look like versions (1.2.3.4)
    [IPV6]    what `ipaddress.IPv6Address` accepts (zones, embedded IPv4) and has a digit
    [SECRET]  sk-…/sk-proj-…, ghp_…/github_pat_…, xox[abprs]-…, AKIA…/ASIA…, JWTs, the token
              after `Bearer`, the value of `password=`/`api_key:`/`token=`…, and long
              random-looking tokens

What stays: versions with fewer or more than four parts or a `v` prefix (`v1.2.3`, `3.11.7`),
dates (`2024-01-15`), times (`12:30:45`), prices, digit runs that fail the Luhn check (order
numbers), MAC addresses, UUIDs, `std::vector`/`a::b`, and long identifiers made of words
(`snake_case`, `camelCase`).

A long token counts as a secret when it has 32+ characters of [A-Za-z0-9_+/=-] with a segment of
16+ characters between separators, at least one digit and one letter, a Shannon entropy of at
least 3 bits per character, and, when it has a single digit, a mix of upper and lower case that
looks random rather than camelCase.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
IPV4 = "[IPV4]"
IPV6 = "[IPV6]"
SECRET = "[SECRET]"

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

# Alternatives are tried in this order at each position, so specific shapes come first and
# the generic long-token rule last.
_PATTERN = re.compile(
    r"""
    # Every alternative starts where no letter or digit precedes: checking that once up front
    # lets the scan skip the inside of words at once (most of any text).
    (?<![A-Za-z0-9])
    (?:(?P<kv>
        (?P<kv_key>(?<![A-Za-z0-9])(?i:api[_-]?key|apikey|secret[_-]?key|client[_-]?secret
            |access[_-]?token|auth[_-]?token|refresh[_-]?token|token|password|passwd|pwd)
            ["']?\s*[:=]\s*["']?)
        (?P<kv_val>[^\s"',;&<>]{6,})
    )
    | (?P<sk>(?<![\w-])sk-[A-Za-z0-9_-]{20,})
    | (?P<github>(?<!\w)(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}))
    | (?P<slack>(?<!\w)xox[abprs]-[A-Za-z0-9-]{10,})
    | (?P<aws>(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9]))
    | (?P<jwt>(?<![\w-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,})
    | (?P<bearer>(?<![\w-])(?P<bearer_word>(?i:bearer)\s+)(?P<bearer_tok>[A-Za-z0-9._~+/-]+=*))
    | (?P<email>(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}
        (?![\w-]))
    | (?P<ipv6>(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}
        (?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?:%[0-9A-Za-z]+)?(?!\w|:|\.\d))
    | (?P<ipv4>(?<![\w.])(?:"""
    + _OCTET
    + r"""\.){3}"""
    + _OCTET
    + r"""(?!\w|\.\d))
    | (?P<card>(?<![\w+.-])
        (?:\d{13,19}
          |\d{4}(?P<sep4>[ -])\d{4}(?P=sep4)\d{4}(?P=sep4)\d{1,7}
          |\d{4}(?P<sep6>[ -])\d{6}(?P=sep6)\d{4,5})
        (?![\w-]|\.\d))
    | (?P<phone>(?<![\w+.-])
        (?:\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,6}
          |(?:1[ .-])?(?:\(\d{3}\)\ ?|\d{3}[ .-])\d{3}[ .-]\d{4}
          |\(?0\d{1,4}\)?[ -]\d{3,4}[ -]?\d{3,4})
        (?!\w|[.-]?\d))
    | (?P<token>(?<![\w+/=-])[A-Za-z0-9_+/=-]{32,}(?![\w+/=-])))
    """,
    re.VERBOSE,
)
_DIGITS = re.compile(r"\d")
_SEGMENTS = re.compile(r"[-_/+=]+")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _entropy(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _looks_random(token: str) -> bool:
    if max(len(s) for s in _SEGMENTS.split(token)) < 16:
        return False  # words joined by separators: an identifier, a slug, a UUID
    digits = sum(ch.isdigit() for ch in token)
    letters = sum(ch.isalpha() for ch in token)
    if digits == 0 or letters == 0 or _entropy(token) < 3.0:
        return False
    if digits == 1:
        upper = sum(ch.isupper() for ch in token)
        # camelCase names have few capitals; random base62/base64 has about half.
        return 0.25 <= upper / letters <= 0.75
    return True


def _secret_value(value: str) -> bool:
    """Whether the value after `password=`/`token:` looks like a credential, not prose."""
    return len(value) >= 12 or any(not ch.isalpha() for ch in value)


def _replace(m: re.Match[str]) -> str:
    kind = m.lastgroup
    text = m.group(0)
    if kind == "email":
        return EMAIL
    if kind in ("sk", "github", "slack", "aws", "jwt"):
        return SECRET
    if kind == "ipv4":
        return IPV4
    if kind == "ipv6":
        if not any(ch.isdigit() for ch in text):
            return text  # `a::b`, `::` in code and prose; real addresses nearly always have one
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            return text
        return IPV6
    if kind == "card":
        digits = "".join(_DIGITS.findall(text))
        return CARD if _luhn(digits) else text
    if kind == "phone":
        n = len(_DIGITS.findall(text))
        return PHONE if 8 <= n <= 15 else text
    if kind == "kv":
        return m.group("kv_key") + SECRET if _secret_value(m.group("kv_val")) else text
    if kind == "bearer":
        tok = m.group("bearer_tok")
        if len(tok) >= 8 and (len(tok) >= 20 or any(ch.isdigit() for ch in tok)):
            return m.group("bearer_word") + SECRET
        return text
    if kind == "token":
        return SECRET if _looks_random(text) else text
    return text


def redact(text: str) -> str:
    """`text` with emails, phone numbers, card numbers, IP addresses and secrets replaced."""
    if not text:
        return text
    return _PATTERN.sub(_replace, text)


#: For callers that take a `str -> str` transform (the audit hook).
Redactor = Callable[[str], str]
