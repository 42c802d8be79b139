"""Providers on their own: the built-in mock, and the openai provider's environment proxies."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from aigw.config import MockOptions, ProviderConfig
from aigw.errors import UpstreamError
from aigw.providers.mock import MockProvider
from aigw.providers.openai import _env_proxy
from aigw.streaming import StreamTap


def mock(**options: object) -> MockProvider:
    return MockProvider(ProviderConfig(name="m", type="mock", mock=MockOptions(**options)))  # type: ignore[arg-type]


CHAT = {"model": "mock", "messages": [{"role": "user", "content": "one two three"}]}


async def test_mock_chat_is_deterministic_with_usage() -> None:
    provider = mock()
    first = await (
        await provider.send("chat/completions", json.dumps(CHAT).encode(), stream=False, timeout=5)
    ).read()
    second = await (
        await provider.send("chat/completions", json.dumps(CHAT).encode(), stream=False, timeout=5)
    ).read()
    a, b = json.loads(first), json.loads(second)
    assert a["choices"] == b["choices"]
    assert a["choices"][0]["message"]["content"] == "You said: one two three"
    assert a["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


async def test_mock_stream_reassembles_and_reports_usage() -> None:
    provider = mock(answer="alpha beta gamma")
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    resp = await provider.send(
        "chat/completions", json.dumps(body).encode(), stream=True, timeout=5
    )
    tap = StreamTap(strip_usage=False, collect=True)
    async for chunk in resp.iter_chunks():
        tap.feed(chunk)
    assert tap.done
    assert tap.usage is not None and tap.usage.completion_tokens == 3
    text = ""
    for event in tap.events or []:
        if event.startswith(b"data: {"):
            for choice in json.loads(event[6:])["choices"]:
                text += choice["delta"].get("content") or ""
    assert text == "alpha beta gamma"


async def test_mock_respects_max_tokens_and_failure_rate() -> None:
    provider = mock(answer="a b c d e")
    body = {**CHAT, "max_tokens": 2}
    data = json.loads(
        await (
            await provider.send(
                "chat/completions", json.dumps(body).encode(), stream=False, timeout=5
            )
        ).read()
    )
    assert data["choices"][0]["message"]["content"] == "a b"
    assert data["choices"][0]["finish_reason"] == "length"
    failing = mock(failure_rate=1.0, seed=1)
    resp = await failing.send(
        "chat/completions", json.dumps(CHAT).encode(), stream=False, timeout=5
    )
    assert resp.status == 500
    assert json.loads(await resp.read())["error"]["code"] == "mock_failure"


async def test_mock_embeddings_float_and_base64() -> None:
    provider = mock()
    floats = json.loads(
        await (
            await provider.send(
                "embeddings", b'{"model": "mock", "input": ["x", "y"]}', stream=False, timeout=5
            )
        ).read()
    )
    assert len(floats["data"]) == 2 and len(floats["data"][0]["embedding"]) == 16
    b64 = json.loads(
        await (
            await provider.send(
                "embeddings",
                b'{"model": "mock", "input": "x", "encoding_format": "base64"}',
                stream=False,
                timeout=5,
            )
        ).read()
    )
    assert isinstance(b64["data"][0]["embedding"], str)


async def test_mock_dimensions_are_bounded() -> None:
    from aigw.providers.mock import MAX_DIMENSIONS

    body = {"model": "mock", "input": "x", "dimensions": MAX_DIMENSIONS + 1}
    resp = await mock().send("embeddings", json.dumps(body).encode(), stream=False, timeout=5)
    assert resp.status == 400
    assert "dimensions must be an integer from 1 to 8192" in (await resp.read()).decode()
    body["dimensions"] = MAX_DIMENSIONS
    resp = await mock().send("embeddings", json.dumps(body).encode(), stream=False, timeout=5)
    assert len(json.loads(await resp.read())["data"][0]["embedding"]) == MAX_DIMENSIONS


async def test_mock_embeddings_over_max_body_fail_like_the_transport() -> None:
    provider = MockProvider(ProviderConfig(name="m", type="mock"), max_body=64 * 1024)
    small = {"model": "mock", "input": ["x"] * 10, "dimensions": 100}
    resp = await provider.send("embeddings", json.dumps(small).encode(), stream=False, timeout=5)
    assert len(json.loads(await resp.read())["data"]) == 10
    large = {**small, "input": ["x"] * 100}  # 10,000 numbers: over 64kB in JSON
    with pytest.raises(
        UpstreamError, match=r"'m' answer exceeds server.max_upstream_body \(64KiB\)"
    ):
        await provider.send("embeddings", json.dumps(large).encode(), stream=False, timeout=5)


async def test_a_mock_stream_is_made_as_it_is_read() -> None:
    words = 50_000
    body = {
        "model": "mock",
        "messages": [{"role": "user", "content": "w " * words}],
        "stream": True,
    }
    raw = json.dumps(body).encode()
    tracemalloc.start()
    try:
        resp = await mock().send("chat/completions", raw, stream=True, timeout=5)
        made = tracemalloc.get_traced_memory()[0]
        events = 0
        async for chunk in resp.iter_chunks():
            events += chunk.count(b"data: ")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert events == words + 5  # role, "You", "said:", the words, finish, [DONE]
    assert made < 2 * 1024 * 1024  # the stream (~10MB of events) is not built in advance
    assert peak < 4 * 1024 * 1024


def test_env_proxy_resolved_once_per_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "all_proxy", "ALL_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert _env_proxy("https://api.openai.com/v1") == "http://proxy.internal:3128"
    assert _env_proxy("http://127.0.0.1:11434/v1") is None
    assert _env_proxy("http://example.com/v1") is None  # no HTTP_PROXY set


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # usage last (OpenAI's order): read from its own slice
        (
            b'{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,'
            b'"total_tokens":7}}',
            (3, 4, 7),
        ),
        # nested details, spaces and a newline before the closing brace
        (
            b'{"usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3,'
            b' "prompt_tokens_details": {"cached_tokens": 0}}\n}\n',
            (2, 1, 3),
        ),
        # another key after usage: the full parse finds it
        (
            b'{"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11},'
            b'"system_fingerprint":"fp"}',
            (5, 6, 11),
        ),
        # a look-alike inside the answer's text (escaped quotes) is never taken for the key
        (
            b'{"choices":[{"message":{"content":"say \\"usage\\": {\\"prompt_tokens\\": 9}"}}],'
            b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}',
            (1, 1, 2),
        ),
        # "usage" as a string value after the real key
        (
            b'{"usage":{"prompt_tokens":4,"completion_tokens":0,"total_tokens":4},'
            b'"choices":[{"message":{"content":"usage"}}]}',
            (4, 0, 4),
        ),
        (b'{"choices":[]}', None),
        (b'{"usage":null}', None),
        (b'{"usage":{"prompt_tokens":-1,"completion_tokens":1}}', None),
        (b"not json", None),
    ],
)
def test_usage_from_body(body: bytes, expected: tuple[int, int, int] | None) -> None:
    from aigw.streaming import usage_from_body

    usage = usage_from_body(body)
    got = (
        None
        if usage is None
        else (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    )
    assert got == expected
