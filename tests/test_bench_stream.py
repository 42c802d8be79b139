"""bench/stream.py's streaming upstream speaks OpenAI's wire format: the openai SDK reassembles
its streams to the text and usage the bench's checker expects (no timing here)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest
from openai import AsyncOpenAI

BENCH = Path(__file__).resolve().parent.parent / "bench" / "stream.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_stream", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_stream"] = module
    spec.loader.exec_module(module)
    return module


stream = _load()


@pytest.fixture
async def upstream(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    # Paced streams without waiting: the pacing is timing, which tests do not measure.
    monkeypatch.setattr(stream.UpstreamServer, "first_delay", 0.0)
    monkeypatch.setattr(stream.UpstreamServer, "chunk_delay", 0.0)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(stream.UpstreamServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("prefix", ["/sse/v1", "/v1"])  # fast and paced
@pytest.mark.parametrize("include_usage", [True, False])
async def test_openai_sdk_reassembles_the_stream(
    upstream: str, prefix: str, include_usage: bool
) -> None:
    n = 120
    async with AsyncOpenAI(base_url=upstream + prefix, api_key="sk-test", max_retries=0) as client:
        kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
        chunks = await client.chat.completions.create(
            model="bench-stream",
            messages=[{"role": "user", "content": "go"}],
            max_tokens=n,
            stream=True,
            **kwargs,  # type: ignore[arg-type]
        )
        text: list[str] = []
        roles, finishes, usages, count = [], [], [], 0
        async for chunk in chunks:
            count += 1
            assert chunk.object == "chat.completion.chunk"
            if chunk.usage is not None:
                usages.append(chunk.usage)
            for choice in chunk.choices:
                if choice.delta.role:
                    roles.append(choice.delta.role)
                text.append(choice.delta.content or "")
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
    assert "".join(text) == stream.expected_text(n)
    assert roles == ["assistant"]
    assert finishes == ["stop"]
    assert count == stream.chunk_count(n, include_usage)
    if include_usage:
        assert len(usages) == 1
        assert usages[0].completion_tokens == n
        assert usages[0].prompt_tokens == stream.PROMPT_TOKENS
        assert usages[0].total_tokens == n + stream.PROMPT_TOKENS
    else:
        assert usages == []


def test_checker_accepts_the_upstream_stream_and_rejects_broken_ones() -> None:
    n = 30
    body = b"".join(stream.sse_events(n, True))
    assert stream.check_stream(body, n, True) is None
    assert stream.check_stream(body.replace(b" fox", b" cat", 1), n, True) is not None
    assert stream.check_stream(body.replace(b"data: [DONE]\n\n", b""), n, True) is not None
    assert stream.check_stream(
        body.replace(b'"completion_tokens":30', b'"completion_tokens":3'), n, True
    )
    # the client did not ask for usage, so usage must not reach it
    assert stream.check_stream(body, n, False) is not None
    no_usage = b"".join(stream.sse_events(n, False))
    assert stream.check_stream(no_usage, n, False) is None
    assert stream.check_stream(no_usage, n, True) is not None  # asked for, but missing
