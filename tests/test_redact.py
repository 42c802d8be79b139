"""Redaction table: what must be replaced, and look-alikes that must stay as they are."""

from __future__ import annotations

import pytest

from aigw.redact import redact

REDACTED = [
    # emails
    ("mail john.doe@example.com now", "mail [EMAIL] now"),
    ("Contact john.doe+tag@mail.example.co.uk.", "Contact [EMAIL]."),
    ("<ALICE_99@Example.ORG>", "<[EMAIL]>"),
    # phones
    ("call +1 (415) 555-2671 today", "call [PHONE] today"),
    ("call 415-555-2671", "call [PHONE]"),
    ("call 415.555.2671", "call [PHONE]"),
    ("call (415) 555-2671", "call [PHONE]"),
    ("toll free 1-800-555-0199", "toll free [PHONE]"),
    ("UK +44 20 7946 0958", "UK [PHONE]"),
    ("DE +4915112345678", "DE [PHONE]"),
    ("FR +33 1 23 45 67 89", "FR [PHONE]"),
    ("London 020 7946 0958", "London [PHONE]"),
    # cards (all pass Luhn)
    ("visa 4111 1111 1111 1111 exp", "visa [CARD] exp"),
    ("visa 4111-1111-1111-1111", "visa [CARD]"),
    ("mc 5555555555554444", "mc [CARD]"),
    ("amex 3782 822463 10005", "amex [CARD]"),
    ("amex 378282246310005.", "amex [CARD]."),
    ("visa13 4222222222222", "visa13 [CARD]"),
    # IPv4
    ("from 192.168.1.1 to 10.0.0.255.", "from [IPV4] to [IPV4]."),
    ("http://127.0.0.1:8080/v1", "http://[IPV4]:8080/v1"),
    ("net 172.16.0.0/12", "net [IPV4]/12"),
    ("version 1.2.3.4", "version [IPV4]"),  # a valid dotted quad is redacted (documented)
    # IPv6
    ("ip 2001:db8::8a2e:370:7334 ok", "ip [IPV6] ok"),
    ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "full [IPV6]"),
    ("loopback ::1 here", "loopback [IPV6] here"),
    ("link fe80::1%eth0", "link [IPV6]"),
    ("mapped ::ffff:192.0.2.1", "mapped [IPV6]"),
    ("[2001:db8::1]:443", "[[IPV6]]:443"),
    # secrets
    ("key sk-proj-abcDEF1234567890abcdefGHIJklmn", "key [SECRET]"),
    ("key sk-abcdefghijklmnopqrstuvwxyz123456", "key [SECRET]"),
    ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", "gh [SECRET]"),
    ("pat github_pat_11ABCDEFG0123456789_abcdefghij", "pat [SECRET]"),
    ("slack xoxb-1234567890-abcdefghij", "slack [SECRET]"),
    ("slack xoxp-1234567890-0987654321-abc", "slack [SECRET]"),
    ("aws AKIAIOSFODNN7EXAMPLE", "aws [SECRET]"),
    ("aws secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws secret [SECRET]"),
    ("Authorization: Bearer abc.def123ghi", "Authorization: Bearer [SECRET]"),
    ("authorization: bearer tok_9f8e7d6c5b4a", "authorization: bearer [SECRET]"),
    ("password=hunter22", "password=[SECRET]"),
    ('api_key: "abcd1234efgh"', 'api_key: "[SECRET]"'),
    ("https://x.io/cb?token=abc123def456&x=1", "https://x.io/cb?token=[SECRET]&x=1"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abcdefghijk", "jwt [SECRET]"),
    ("sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "sha256 [SECRET]"),
    ("token Zx8pQ2mN7vK4rT9wL1sY6uB3eH5jA0cD", "token [SECRET]"),
    # several kinds in one text
    (
        "Mail a@b.io, card 4111111111111111, ip 8.8.8.8, key sk-ant-api03-ABCDEFGHIJKLMNOPQRST",
        "Mail [EMAIL], card [CARD], ip [IPV4], key [SECRET]",
    ),
]

KEPT = [
    "Python 3.11.7 is out",
    "release v1.2.3",
    "build v1.2.3.4",
    "semver 10.20.30",
    "five parts 1.2.3.4.5",
    "bad octet 999.1.1.1",
    "bad octet 256.1.1.1",
    "date 2024-01-15",
    "date 15/01/2024 and 01-15-2024",
    "timestamp 2024-01-15T10:30:00Z",
    "time 12:30:45",
    "ratio 3:2:1",
    "price $1,234.56 or €1.299,00",
    "order 1234567890123 shipped",  # 13 digits, fails Luhn
    "card 4111 1111 1111 1112",  # fails Luhn
    "order #987654321",
    "MAC 00:1A:2B:3C:4D:5E",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "C++ std::vector and a::b",
    "@decorator and user@localhost",
    "the Bearer of bad news",
    "password: hello",
    "max_tokens: 1000000",
    "AbstractSingletonProxyFactoryBean2",
    "ThisIsAVeryLongCamelCaseIdentifierName",
    "this_is_a_very_long_snake_case_identifier_name_2024",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1",
    "sk-short",
    "ISBN 978-3-16-148410-0",
    "pi is 3.14159265358979",
    "",
]


@pytest.mark.parametrize(("text", "expected"), REDACTED)
def test_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_look_alikes_stay(text: str) -> None:
    assert redact(text) == text


def test_table_size() -> None:
    assert len(REDACTED) + len(KEPT) >= 40


def test_redaction_is_idempotent() -> None:
    for text, expected in REDACTED:
        assert redact(expected) == expected, text
