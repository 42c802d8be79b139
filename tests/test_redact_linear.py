"""Redaction costs time in proportion to the text, whatever the text: no pattern can backtrack,
and the classic pathological inputs of growing sizes finish under a hard timeout (a quadratic
scan of the largest ones would take minutes). Long texts are redacted in pieces cut before a
newline, with the same result as one pass."""

from __future__ import annotations

import re
import string

# The parser behind `re.compile` (3.11+): the one way to see a pattern's repeats as the engine
# will run them.
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser  # type: ignore[attr-defined]
from typing import Any

import pytest

from aigw import redact as redact_module
from aigw.redact import redact
from tests.test_redact import KEPT, REDACTED

# Characters. A quadratic scan of 2**18 takes minutes: far past the timeout.
SIZES = (2**12, 2**15, 2**18)

# Runs of one delimiter: every position is a candidate boundary.
DELIMITERS = sorted(set(string.punctuation + " \t\u00a0\u2022\u2026\uff0b\uff0e\uff20\uff1a"))

# Near misses, repeated: each unit starts a candidate of some kind, which never completes.
NEAR_MISSES = [
    # secret keys and schemes
    "password ",
    "passwor",
    "tokens:",
    "password_x=",
    "password:\n",
    "api key provided ",
    "Bearer\n",
    "bearer",
    "Basic !",
    "sk-..",
    "sk_",
    "ghp_",
    "github_pat_!",
    "xoxb!",
    "AKIA",
    "AIza",
    "eyJ.",
    "eyJaa.",
    "eyJaaaaa.eyJ!",
    "eyJ-",
    # emails
    "a@",
    "@a",
    "a@b",
    "a@b!",
    "a.@",
    "a@b-",
    "\u00e9@",
    "@\u00e9",
    "\u5b57@",
    "x@y.z ",
    "a%",
    "o'",
    "a@[",
    # IPv6, IPv4
    "::",
    "1:",
    "a:",
    "1::",
    "::%a",
    "\u00e91:",
    "f:f ",
    "12:30:45 ",
    "1.",
    "1.1.1.",
    "999.1.1.1 ",
    "\uff11\uff0e",
    "\u0661.",
    # cards, phones
    "1111 ",
    "1234-",
    "4111111111111112 ",
    "+1",
    "+1 ",
    "(1",
    "(0",
    "0 ",
    "+44 20 ",
    "1-",
    "1 ",
    "+\uff11",
    # long tokens
    "a/",
    "/a",
    "a=",
    "_a",
    "-a",
    "aaaa/",
    "Zx8pQ2mN7vK4rT9wL1sY6uB3eH5 ",
]

# A candidate's start, then a run that never ends it.
UNTERMINATED = [
    ('password="', "a"),
    ('password="', "a "),
    ("password='", 'a"'),
    ('"password": "', "\\"),
    ("password=", "a&"),
    ("password=", "&a"),
    ("api_key:", " "),
    ("Bearer ", " "),
    ("Bearer ", "a"),
    ("Basic ", "QUJD"),
    ("sk-", "*"),
    ("sk-", "..."),
    ("eyJ", "a"),
    ("eyJaaaaa.", "a"),
    ("a@", "b"),
    ("a@b", "-"),
    ("a@b.", "\u00e9"),
    ("x", "a-"),
    ("x", "\u00e9"),
    ("", "a" * 31 + "@"),
    ("::", "f:"),
    ("::%", "a"),
    ("+1", " 1"),
    ("[", "1:"),
]


def family_ids(values: list[Any]) -> list[str]:
    return [ascii(v)[:40] for v in values]


@pytest.mark.parametrize(
    "pattern",
    [v for v in vars(redact_module).values() if isinstance(v, re.Pattern)],
    ids=lambda p: ascii(p.pattern)[:40],
)
def test_no_pattern_can_backtrack(pattern: re.Pattern[str]) -> None:
    """Every repeat without an upper bound is possessive: it never gives back what it took, so
    a failing candidate costs what it read, not what it read times the ways to split it."""
    greedy: list[str] = []

    def walk(items: Any) -> None:
        for op, av in items:
            if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
                low, high, body = av
                if high == sre.MAXREPEAT:
                    greedy.append(f"{{{low},}} over {list(body)!r}"[:120])
                walk(body)
            elif op is sre.POSSESSIVE_REPEAT:
                walk(av[2])
            elif op is sre.SUBPATTERN:
                walk(av[3])
            elif op is sre.BRANCH:
                for alternative in av[1]:
                    walk(alternative)
            elif op in (sre.ASSERT, sre.ASSERT_NOT, sre.ATOMIC_GROUP):
                walk(av[1] if op is not sre.ATOMIC_GROUP else av)
            elif op is sre.GROUPREF_EXISTS:
                walk(av[1])
                if av[2] is not None:
                    walk(av[2])

    walk(_parser.parse(pattern.pattern, pattern.flags))
    assert greedy == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize("delimiter", DELIMITERS, ids=family_ids(DELIMITERS))
def test_runs_of_one_delimiter(delimiter: str) -> None:
    for size in SIZES:
        text = delimiter * size
        assert redact(text) == text


@pytest.mark.timeout(20)
@pytest.mark.parametrize("unit", NEAR_MISSES, ids=family_ids(NEAR_MISSES))
def test_repeated_near_misses(unit: str) -> None:
    for size in SIZES:
        text = unit * (size // len(unit))
        assert redact(text) == text


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("start", "run"), UNTERMINATED, ids=family_ids(UNTERMINATED))
def test_unterminated_candidates(start: str, run: str) -> None:
    for size in SIZES:
        text = start + run * (size // len(run))
        out = redact(text)
        # Whatever was found, what is left is never longer than the text plus a placeholder.
        assert len(out) <= len(text) + len("[SECRET]")


@pytest.mark.timeout(10)
def test_megabytes_of_colons() -> None:
    """The reported case (4 MB took ~4 s), 8x: 32 MB of `:` took over 30 s, one try of every
    alternative at every colon; now one candidate reads the run once."""
    text = ":" * (32 * 1024 * 1024)
    assert redact(text) == text


def test_long_text_is_redacted_in_pieces_with_the_result_of_one_pass() -> None:
    lines = [text for text, _ in REDACTED] + KEPT
    text = "\n".join(lines * (4 * redact_module.CHUNK // len("\n".join(lines)) + 1))
    assert len(text) > 4 * redact_module.CHUNK
    expected = "\n".join(redact(line) for line in text.split("\n"))
    assert redact(text) == expected
    assert "\n".join(lines) in text and "4111 1111 1111 1111" not in redact(text)
