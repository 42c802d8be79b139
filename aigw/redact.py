"""PII and secret redaction for logged text: `redact(text)` replaces what it finds with typed
placeholders, in one regex pass.

    [EMAIL]   name@example.com, jörg@bücher.de, 用户@例子.广告, user@xn--p1ai.xn--p1ai
    [PHONE]   +44 20 7946 0958, (415) 555-2671, 415-555-2671, 020 7946 0958, +4915112345678
    [CARD]    13-19 digits, plain or in 4-4-4-x / 4-4-4-4-x / 4-6-5 groups, only when the Luhn
              check passes
    [IPV4]    dotted quads with valid octets, including ones that look like versions (1.2.3.4)
    [IPV6]    what `ipaddress.IPv6Address` accepts (zones, embedded IPv4) and has a digit
    [SECRET]  sk-…/sk-proj-…/sk-ant-… (also masked: sk-proj-****xyz1, sk-ant-api03-abc...xyz),
              ghp_…/github_pat_…, xox[abeprs]-…, AKIA…/ASIA…, AIza…, JWTs (JWS and JWE), the
              token after `Bearer`, the credentials after `Basic`, the value of
              `password=`/`"api_key": "…"`/`token:`… (whole: to the closing quote, or to the
              next space or `&name=`), and long random-looking tokens

Digits may be any Unicode decimal digits (full-width, Arabic-Indic…), and a match may touch
letters of other scripts (`IP地址192.168.1.1から`).

What stays: versions with fewer or more than four parts or a `v` prefix (`v1.2.3`, `3.11.7`),
dates (`2024-01-15`), times (`12:30:45`), prices, digit runs that fail the Luhn check (order
numbers), MAC addresses, UUIDs, `std::vector`/`a::b`, and long identifiers made of words
(`snake_case`, `camelCase`).

A long token counts as a secret when it has 32+ characters of [A-Za-z0-9_+/=-] with a segment of
16+ characters between separators, at least one digit and one letter, a Shannon entropy of at
least 3 bits per character, and, when it has a single digit, a mix of upper and lower case that
looks random rather than camelCase.

Cost: linear in the length of the text, whatever the text. Every repetition is possessive
(`*+`, `++`), so no pattern can backtrack into what it has consumed, and a candidate can only
start where the previous one could not have gone on (the per-kind "not after" checks below), so
no stretch of text is scanned by more than a few candidates. Text longer than `CHUNK` characters
is redacted in pieces cut before a newline (no match spans one), so a thread that redacts a huge
text lets go of the GIL between pieces instead of holding it for the whole text.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Final

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
IPV4 = "[IPV4]"
IPV6 = "[IPV6]"
SECRET = "[SECRET]"

#: Texts longer than this are redacted in pieces cut before a newline (see the module doc).
CHUNK: Final = 64 * 1024


def _anycase(fragment: str) -> str:
    """`pass[_-]?word` -> `[Pp][Aa][Ss][Ss][_-]?[Ww][Oo][Rr][Dd]`. Case-insensitive matching
    without `(?i)`: the engine skips an alternative at once only when it starts with a plain
    character or class (see `_PATTERN`), and ignore-case ones are neither."""
    out: list[str] = []
    in_class = escaped = False
    for ch in fragment:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif "a" <= ch <= "z":
            ch = f"[{ch.upper()}{ch}]"
        out.append(ch)
    return "".join(out)


# Keys whose value is a secret, lower case; `_anycase` makes them match any case.
_SECRET_KEYS = (
    r"api[ _-]?key",
    r"access[_-]?token",
    r"auth[_-]?token",
    r"client[_-]?secret",
    r"passw(?:or)?d",
    r"passphrase",
    r"private[_-]?key",
    r"pwd",
    r"refresh[_-]?token",
    r"secret(?:[_-]?(?:access[_-]?)?key)?",
    r"token",
)

# An unquoted value runs to the next space or quote; `&`, `;` and `,` end it only before a
# space, a quote, the end, or another `name=` (`?token=abc&x=1`), so `Tr0ub4dor&3` stays whole;
# `<` ends it before a closing tag (`<password>x</password>`).
_UNQUOTED = r"""(?:[^\s"'&;,<]++|[&;,](?![\s"'<]|$|[\w.\[\]-]++=)|<(?!/))++"""
# A quoted value runs to its closing quote, backslash escapes included, never past a line end.
_KV_VALUE = (
    r"""["']?+[ \t]*+[:=][ \t]*+"""
    r"""(?:"(?:[^"\\\r\n]++|\\.)*+"|'(?:[^'\\\r\n]++|\\.)*+'|["']?+""" + _UNQUOTED + ")"
)

# OpenAI's "Incorrect API key provided: sk-proj-****xyz1. You can find…": the key is one word,
# and a full stop before a space or the end closes the sentence, not the key.
_PROVIDED_KEY = r"""[ \t]*+:[ \t]*+(?:[^\s."']++|\.(?![\s"']|$))++"""

_PHONE_SEP = r"[ .\-\u00a0\u2009\u202f\u2010\u2011\u2012\u2013]"
_CARD_SEP = r"[ \-\u00a0\u2009\u202f]"
_DOT = r"[.\uff0e]"  # full-width full stop too
_ZERO = r"[0\u0660\u06f0\uff10]"  # a national trunk prefix: 0 in ASCII, Arabic-Indic, full width
_B64 = r"[A-Za-z0-9_+/-]"  # JWT segments: base64url, tolerating the standard alphabet
_NUMBER_END = r"(?![A-Za-z0-9_]|[.-]?\d)"


def _keyword(word: str, rest: str, kind: str, case: bool = False) -> str:
    """An alternative for the keyword group below: the keyword's second character, a check of
    the first two (the first is the group's), the rest, and an empty group naming the kind."""
    head = word[:2] if case else _anycase(word[:2])
    second = word[1] if case else _anycase(word[1])
    tail = re.escape(word[2:]) if case else _anycase(word[2:])
    return f"{second}(?<={head}){tail}{rest}(?P<{kind}>)"


# Shapes that start with a letter of a keyword, dispatched on the keyword's second character.
_KEYWORDS = [
    *(_keyword(key, _KV_VALUE, f"kv_{i}") for i, key in enumerate(_SECRET_KEYS)),
    _keyword(r"api[ _-]?key[ \t]++provided", _PROVIDED_KEY, "kv_provided"),
    _keyword("bearer", rf"[ \t]++{_UNQUOTED}", "bearer"),
    _keyword("basic", r"[ \t]++[A-Za-z0-9+/]++=*+(?![A-Za-z0-9_+/=-])", "basic"),
    # Keys as providers print them, masked ones too: sk-proj-****xyz1, sk-ant-api03-abc...xyz.
    _keyword("sk-", r"(?:[A-Za-z0-9_*\u2022-]++|\.\.\.|\u2026)++", "sk", case=True),
    _keyword("gh", r"[pousr]_[A-Za-z0-9]{36,}+", "github", case=True),
    _keyword("github_pat_", r"[A-Za-z0-9_]{22,}+", "github_pat", case=True),
    _keyword("xox", r"[abeprs]-[A-Za-z0-9-]{10,}+", "slack", case=True),
    _keyword("AKIA", r"[A-Z0-9]{16}(?![A-Za-z0-9])", "aws", case=True),
    _keyword("ASIA", r"[A-Z0-9]{16}(?![A-Za-z0-9])", "aws_session", case=True),
    _keyword("AIza", r"[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])", "google", case=True),
    # JWS (header.payload.signature, the signature possibly empty) or JWE (five segments).
    _keyword(
        "eyJ",
        rf"(?<![._-]eyJ){_B64}{{5,}}+=*+"
        rf"(?:(?:\.{_B64}*+=*+){{4}}|\.eyJ{_B64}*+=*+\.{_B64}*+=*+)",
        "jwt",
        case=True,
    ),
]
_KEYWORD_FIRST = "".join(
    sorted(
        {ch for word in (*_SECRET_KEYS, "bearer", "basic") for ch in (word[0], word[0].upper())}
        | set("Aegsx")  # AKIA/ASIA/AIza, eyJ, gh…/github_pat_, sk-, xox…
    )
)

# Each alternative is a first character (a plain character or class: see `_PATTERN`), the rest,
# and an empty named group that says what was found. Where an alternative must not start after
# some characters, a two-character lookbehind checks the one before its first: `(?<![._]\d)`.
_ALTERNATIVES = [
    f"[{_KEYWORD_FIRST}](?:" + "|".join(_KEYWORDS) + ")",
    # Local part and domain in any script; the top-level domain is checked in `_email`.
    r"""[\w%+-](?<![\w.%+'-].)[\w.%+'-]*+[@\uff20](?:[\w-]++(?:\.[\w-]++)++|\[[\w:.]++\])
        (?P<email>)""",
    # A run of hex groups and at least two colons, an embedded IPv4 or a zone: `ipaddress` decides.
    r"""[0-9A-Fa-f:](?<![:._].)(?:(?<=:)|[0-9A-Fa-f]{0,3}+:)(?:[0-9A-Fa-f]{0,4}+:)++
        (?:[0-9A-Fa-f]{1,4}+(?:(?:\.\d{1,3}+){3})?+)?+(?:%[A-Za-z0-9_-]++(?:\.[A-Za-z0-9_-]++)*+)?+
        (?![A-Za-z0-9_]|\.\d)
        (?P<ipv6>)""",
    rf"""\d(?:
        (?<![._\uff0e]\d)\d{{0,2}}+{_DOT}\d{{1,3}}+{_DOT}\d{{1,3}}+{_DOT}\d{{1,3}}+
            (?![A-Za-z0-9_]|{_DOT}?\d)(?P<ipv4>)
      | (?<![._+-]\d)(?:
          (?:\d{{12,18}}+
            |\d{{3}}(?P<cs4>{_CARD_SEP})\d{{4}}(?P=cs4)\d{{4}}(?P=cs4)
              (?:\d{{4}}(?P=cs4)\d{{1,3}}+|\d{{1,7}}+)
            |\d{{3}}(?P<cs6>{_CARD_SEP})\d{{6}}(?P=cs6)\d{{4,5}}+)
            (?![A-Za-z0-9_-]|{_DOT}?\d)(?P<card>)
        | (?:(?<=1){_PHONE_SEP}(?:\(\d{{3}}\)\ ?|\d{{3}}{_PHONE_SEP})\d{{3}}{_PHONE_SEP}\d{{4}}
            |\d{{2}}{_PHONE_SEP}\d{{3}}{_PHONE_SEP}\d{{4}}
            |(?<={_ZERO})\d{{1,4}}\)?{_PHONE_SEP}\d{{3,4}}{_PHONE_SEP}?\d{{3,4}})
            {_NUMBER_END}(?P<phone>)))""",
    rf"""[+\uff0b](?<![._+-].)\d{{1,3}}+(?:{_PHONE_SEP}?\(?\d{{1,4}}+\)?){{1,6}}+
        {_NUMBER_END}(?P<phone_intl>)""",
    rf"""\((?<![._+-]\()(?:\d{{3}}\)\ ?\d{{3}}{_PHONE_SEP}\d{{4}}
          |{_ZERO}\d{{1,4}}\)?{_PHONE_SEP}\d{{3,4}}{_PHONE_SEP}?\d{{3,4}})
        {_NUMBER_END}(?P<phone_paren>)""",
    # Not when an address follows: `…/user@example.com` is an email after a path.
    r"[A-Za-z0-9_+/=-](?<![_+/=-].)[A-Za-z0-9_+/=-]{31,}+(?![@\uff20])(?P<token>)",
]

# The pattern consumes the character before a candidate (`_BOUNDARY`, anything but an ASCII
# letter or a digit; `redact` puts a space before the text) and gives it back in the
# replacement. So the pattern starts with a character class, which lets the engine skip the
# inside of words in its own tight loop; and at a boundary it enters only the alternatives whose
# first character (a plain character or class, which the engine tests without entering) fits.
# Alternatives are tried in order at each position: specific shapes first, the generic
# long-token rule last.
_BOUNDARY = r"[^A-Za-z\d]"
_PATTERN = re.compile(_BOUNDARY + "(?:" + "\n|".join(_ALTERNATIVES) + ")", re.VERBOSE)
_SEGMENTS = re.compile(r"[-_/+=]++")
_KV_PARTS = re.compile(r"""([^:=]*+[:=][ \t]*+)(.*+)""", re.DOTALL)
_SCHEME_PARTS = re.compile(r"""(\S++[ \t]++)(.*+)""", re.DOTALL)
_CARD_GROUPS = re.compile(_CARD_SEP)
_ASCII_LETTERS = re.compile(r"[A-Za-z]{2,}+")
_OCTET_DOT = re.compile(_DOT)
_MASK = frozenset("*\u2022.\u2026")
_MAX_IPV6 = 64  # longer than any IPv6 text with a zone a system would print


def _digit_values(text: str) -> list[int]:
    return [unicodedata.digit(ch) for ch in text if ch.isdecimal()]


def _luhn(digits: list[int]) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
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
    """Whether a value after `password: ` looks like a credential, not prose (`password: hello`)."""
    return len(value) >= 12 or any(not ch.isalpha() for ch in value)


def _top_level_domain(label: str) -> int:
    """How much of `label` is a top-level domain: all of it, the ASCII letters before other
    scripts (`jpまで` in `taro@example.jpまで`), or none."""
    if label[:4].lower() == "xn--":
        return len(label) if len(label) > 4 else 0  # punycode (IDN)
    ascii_letters = _ASCII_LETTERS.match(label)
    if ascii_letters and not label[ascii_letters.end() : ascii_letters.end() + 1].isascii():
        return ascii_letters.end()
    return len(label) if len(label) >= 2 and label.isalpha() else 0


def _email(body: str) -> str:
    at = max(body.rfind("@"), body.rfind("\uff20"))
    domain = body[at + 1 :]
    if domain.startswith("["):
        return EMAIL
    labels = domain.split(".")
    # `a@b.com.123`: the address ends at the last label that can be a top-level domain.
    for end in range(len(labels), 1, -1):
        tld = _top_level_domain(labels[end - 1])
        if tld:
            rest = ".".join([labels[end - 1][tld:], *labels[end:]])
            return EMAIL + rest
    return body


def _kv(body: str) -> str:
    parts = _KV_PARTS.match(body)
    if parts is None:
        return body
    key, value = parts.groups()
    quote = value[:1]
    if quote in ("'", '"') and len(value) >= 2 and value[-1] == quote:
        return key + quote + SECRET + quote if len(value) > 2 else body
    if quote in ("'", '"'):  # opened and not closed: the value is what follows the quote
        key, value = key + quote, value[1:]
    # `password=x` and `password:x` are data; after `password: ` the word may be prose.
    spaced = key.endswith((" ", "\t")) and key.rstrip(" \t").endswith(":")
    if value and (not spaced or _secret_value(value)):
        return key + SECRET
    return body


def _provided(body: str) -> str:
    key, _, value = body.partition(":")
    return key + ":" + value[: len(value) - len(value.lstrip(" \t"))] + SECRET


def _card(body: str) -> str:
    digits = _digit_values(body)
    if _luhn(digits):
        return CARD
    groups = _CARD_GROUPS.split(body)
    if len(groups) == 5 and _luhn(digits[:16]):
        # 4-4-4-4 then a short group that makes no card: a card and another number (a CVV).
        return CARD + body[len(body) - len(groups[4]) - 1 :]
    return body


def _ipv4(body: str) -> str:
    octets = _OCTET_DOT.split(body)
    if all(not (len(o) > 1 and unicodedata.digit(o[0]) == 0) and int(o) <= 255 for o in octets):
        return IPV4
    return body


def _ipv6(body: str) -> str:
    # `a::b`, `::` in code and prose have no digit; real addresses nearly always have one.
    if len(body) > _MAX_IPV6 or not any(ch.isdigit() for ch in body):
        return body
    try:
        ipaddress.IPv6Address(body)
    except ValueError:
        return body
    return IPV6


def _sk(body: str) -> str:
    key_chars = sum(ch not in _MASK for ch in body) - 3  # without `sk-`
    masked = any(ch in _MASK for ch in body)
    return SECRET if key_chars >= 20 or masked else body


def _bearer(body: str) -> str:
    parts = _SCHEME_PARTS.match(body)
    if parts is None:
        return body
    word, tok = parts.groups()
    if len(tok) >= 8 and (len(tok) >= 20 or any(ch.isdigit() for ch in tok)):
        return word + SECRET
    return word + redact(tok)  # `Bearer sk-ant-...WXYZ`: short, but a (masked) key


def _basic(body: str) -> str:
    parts = _SCHEME_PARTS.match(body)
    if parts is None:
        return body
    word, tok = parts.groups()
    try:
        credentials = base64.b64decode(tok, validate=True)
    except (binascii.Error, ValueError):
        return body
    return word + SECRET if b":" in credentials else body


def _phone(body: str) -> str:
    return PHONE if 8 <= len(_digit_values(body)) <= 15 else body


def _token(body: str) -> str:
    return SECRET if _looks_random(body) else body


def _secret(body: str) -> str:
    return SECRET


_BY_KIND: dict[str, Callable[[str], str]] = {
    "kv_provided": _provided,
    "bearer": _bearer,
    "basic": _basic,
    "sk": _sk,
    "github": _secret,
    "github_pat": _secret,
    "slack": _secret,
    "aws": _secret,
    "aws_session": _secret,
    "google": _secret,
    "jwt": _secret,
    "email": _email,
    "ipv6": _ipv6,
    "ipv4": _ipv4,
    "card": _card,
    "phone": _phone,
    "phone_intl": _phone,
    "phone_paren": _phone,
    "token": _token,
}


def _replace(m: re.Match[str]) -> str:
    found = m.group(0)
    boundary, body = found[0], found[1:]
    kind = m.lastgroup or ""
    check = _BY_KIND.get(kind, _kv)  # kv_0, kv_1…: one per secret key
    return boundary + check(body)


def redact(text: str) -> str:
    """`text` with emails, phone numbers, card numbers, IP addresses and secrets replaced."""
    if not text:
        return text
    if len(text) <= CHUNK:
        return _PATTERN.sub(_replace, " " + text)[1:]
    pieces: list[str] = []
    start = 0
    while start < len(text):
        cut = text.find("\n", start + CHUNK)
        end = len(text) if cut == -1 else cut
        if start == 0:
            pieces.append(_PATTERN.sub(_replace, " " + text[:end])[1:])
        else:  # the piece starts with the newline, a boundary like the space above
            pieces.append(_PATTERN.sub(_replace, text[start:end]))
        start = end
    return "".join(pieces)


#: For callers that take a `str -> str` transform (the audit hook).
Redactor = Callable[[str], str]
