"""Redaction table: what must be replaced, and look-alikes that must stay as they are."""

# ruff: noqa: RUF001 - full-width and Arabic-Indic digits, at signs and colons are the point here

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
    # internationalised emails: Unicode local part and domain, IDN, full-width @
    ("mail jörg@bücher.de now", "mail [EMAIL] now"),
    ("mail josé.garcía@correo.es.", "mail [EMAIL]."),
    ("почта@пример.рф", "[EMAIL]"),
    ("联系我：用户@例子.广告。", "联系我：[EMAIL]。"),
    ("mail user@пример.xn--p1ai", "mail [EMAIL]"),
    ("mail jörg＠bücher.de", "mail [EMAIL]"),
    ("taro@example.jpまでお願いします", "[EMAIL]までお願いします"),
    ("mail o'brien@example.com", "mail [EMAIL]"),  # was `o'[EMAIL]`
    ("mail user@[192.168.1.1]", "mail [EMAIL]"),  # was `user@[[IPV4]]`
    (
        "see path/to/some/very/long/directory/structure/user@x.com",
        "see path/to/some/very/long/directory/structure/[EMAIL]",
    ),
    # secret values replaced whole, whatever punctuation they hold, and no further
    ("password=Tr0ub4dor&3 next", "password=[SECRET] next"),
    ('{"password": "Tr0ub4dor&3, x", "user": "bob"}', '{"password": "[SECRET]", "user": "bob"}'),
    ('{"password":"a\\"b;c","user":"bob"}', '{"password":"[SECRET]","user":"bob"}'),
    ("password: 'pa ss;word' ok", "password: '[SECRET]' ok"),
    ("pwd=p@ss,w;rd<>! rest", "pwd=[SECRET] rest"),
    (
        "https://x.io/login?password=abc&def&user=bob",
        "https://x.io/login?password=[SECRET]&user=bob",
    ),
    ("Set-Cookie: token=abc123def; Path=/", "Set-Cookie: token=[SECRET]; Path=/"),
    ("password = hunter", "password = [SECRET]"),
    ('{"password":12345,"x":1}', '{"password":[SECRET],"x":1}'),
    ("<b>password=ab<c</b>", "<b>password=[SECRET]</b>"),
    ("Authorization: Bearer abc123:def456", "Authorization: Bearer [SECRET]"),  # was cut at `:`
    ("Authorization: Bearer tok*en123456", "Authorization: Bearer [SECRET]"),  # was missed
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic [SECRET]"),
    # JWTs: standard-alphabet signature (was cut at `+`), unsigned, and JWE
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc-def_ghi+jk/l= ok", "jwt [SECRET] ok"),
    ("jwt eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0. ok", "jwt [SECRET] ok"),
    (
        "jwe eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0..abcdefgh.ciphertext123.tag456 ok",
        "jwe [SECRET] ok",
    ),
    # other scripts around a match, Unicode digits, no-break spaces
    ("密钥sk-proj-abcdefghijklmnopqrstuvwx", "密钥[SECRET]"),
    ("token Zx8pQ2mN7vK4rT9wL1sY6uB3eH5jA0cDから", "token [SECRET]から"),
    ("IP地址192.168.1.1から", "IP地址[IPV4]から"),
    ("ip １９２．１６８．１．１ ok", "ip [IPV4] ok"),
    ("ip ١٩٢.١٦٨.١.١", "ip [IPV4]"),
    ("地址2001:db8::1です", "地址[IPV6]です"),
    ("IPv6アドレスfe80::1%eth0です", "IPv6アドレス[IPV6]です"),
    ("link fe80::1%br-lan up", "link [IPV6] up"),  # was `[IPV6]-lan`
    ("link fe80::1%eth0.100 up", "link [IPV6] up"),  # was `[IPV6]%eth0.100`
    ("电话+86 138 1234 5678", "电话[PHONE]"),
    ("tel ＋８６ １３８ １２３４ ５６７８", "tel [PHONE]"),
    ("FR +33\u00a01\u00a023\u00a045\u00a067\u00a089", "FR [PHONE]"),
    ("card ５５５５５５５５５５５５４４４４ ok", "card [CARD] ok"),  # Luhn on the digits' values
    ("card 4111\u00a01111\u00a01111\u00a01111", "card [CARD]"),
    ("card 6222 0200 0000 0000 000 ok", "card [CARD] ok"),  # 19 digits in 4-4-4-4-3
    ("card 4111 1111 1111 1111 123", "card [CARD] 123"),  # 16 digits and a CVV
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
    # look-alikes in other scripts and shapes
    "order ５５５５５５５５５５５５４４４０",  # full-width digits failing Luhn
    "jörg@localhost",
    "x@y.123 and a@b.c",
    '"password": null and "password": ""',
    "basic understanding, Basic auth",
    "the bearer token expired",
    "tokens: 1000",
    "2024-01-15から2024-02-15まで",
    "時刻１２:３０:４５",
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


OPENAI_PROJECT_KEY = "sk-proj-Ab3dE_f6Gh-9JkLmN0pQrStUvWxYz1234567890abcdefGHIJKLMNOPQRSTUVW_qrs7"
ANTHROPIC_KEY = (
    "sk-ant-api03-" + "Zx8pQ2mN7vK4rT9w-L1sY6uB3eH5jA0cD_" * 2 + "abcdefghijklmnopqrstuvwx" + "AA"
)
PROVIDER_KEYS = [
    # (the key as an upstream or a log prints it, a tail that must not survive)
    (OPENAI_PROJECT_KEY, "qrs7"),
    ("sk-" + "Zx8pQ2mN7vK4rT9wL1sY6uB3eH5jA0cDqrs7abcdefgh", "qrs7"),  # legacy
    ("sk-svcacct-Zx8pQ2mN7vK4rT9wL1sY6uB3eH5jA0cD_qrs7", "qrs7"),
    ("sk-proj-" + "*" * 44 + "xyz1", "xyz1"),  # OpenAI's masked echo
    ("sk-abc12" + "*" * 39 + "wxyz", "wxyz"),
    ("sk-proj-abc...xyz", "xyz"),
    ("sk-proj-abc\u2026xyz", "xyz"),
    ("sk-proj-\u2022\u2022\u2022\u2022\u2022\u2022\u2022\u2022xyz1", "xyz1"),
    (ANTHROPIC_KEY, "uvwxAA"),
    ("sk-ant-admin01-Zx8pQ2mN7vK4rT9wL1sY6uB3eH5jA0cD_xyzAA", "xyzAA"),
    ("sk-ant-api03-abcd...WXYZ", "WXYZ"),
    ("sk-ant-api03-" + "*" * 86 + "WXYZ", "WXYZ"),
    ("sk-ant-...WXYZ", "WXYZ"),
]


@pytest.mark.parametrize(("key", "tail"), PROVIDER_KEYS, ids=[k[:16] for k, _ in PROVIDER_KEYS])
@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{}", "[SECRET]"),
        ("key {} here", "key [SECRET] here"),
        (
            "Incorrect API key provided: {}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "Incorrect API key provided: [SECRET]. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
        ),
        ("x-api-key: {}", "x-api-key: [SECRET]"),
        ('{{"x-api-key": "{}", "n": 1}}', '{"x-api-key": "[SECRET]", "n": 1}'),
        ("Authorization: Bearer {}", "Authorization: Bearer [SECRET]"),
        ("密钥{}。", "密钥[SECRET]。"),
    ],
)
def test_provider_keys_are_redacted_whole(
    key: str, tail: str, template: str, expected: str
) -> None:
    out = redact(template.format(key))
    assert out == expected
    assert tail not in out and "sk-" not in out


def test_upstream_error_bodies_keep_all_but_the_key() -> None:
    openai = (
        '{"error": {"message": "Incorrect API key provided: sk-proj-' + "*" * 44 + "xyz1. "
        'You can find your API key at https://platform.openai.com/account/api-keys.", '
        '"type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}'
    )
    assert redact(openai) == (
        '{"error": {"message": "Incorrect API key provided: [SECRET]. '
        'You can find your API key at https://platform.openai.com/account/api-keys.", '
        '"type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}'
    )
    anthropic = (
        '{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}'
    )
    assert redact(anthropic) == anthropic
    unmasked = f'{{"error": {{"message": "Incorrect API key provided: {ANTHROPIC_KEY}."}}}}'
    assert redact(unmasked) == '{"error": {"message": "Incorrect API key provided: [SECRET]."}}'
