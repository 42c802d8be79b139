"""Tracing through the real gateway: requests from the official SDKs, real upstreams on loopback,
spans read back from a real OTLP/HTTP receiver (tests/otlp_receiver.py). One server span per
request, one client span per upstream attempt (failover included), the first-token event of
streams, the caller's W3C trace context kept and the attempt's sent upstream (never the client's
beside it), every dialect and the pass-through endpoints, refusals and cache hits; and the spans
queued at shutdown reach the collector."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from aigw.config import (
    AuthConfig,
    AuthKey,
    CacheConfig,
    HookSpec,
    ModelConfig,
    ProviderConfig,
    Secret,
    TargetConfig,
    TracingConfig,
)
from aigw.tracing import FIRST_TOKEN_EVENT
from tests.anthropic_upstream import KEY, AnthropicUpstream
from tests.conftest import RunningGateway, make_config
from tests.otlp_receiver import OtlpReceiver, SpanRecord
from tests.upstream import Upstream

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    found = await OtlpReceiver().start()
    yield found
    await found.stop()


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def traced(base: Any, receiver: OtlpReceiver, **settings: Any) -> Any:
    tracing = TracingConfig(enabled=True, endpoint=receiver.endpoint, **settings)
    return dataclasses.replace(base, tracing=tracing)


async def spans_after_stop(gw: RunningGateway, receiver: OtlpReceiver, count: int) -> list[Any]:
    """Stop the gateway (its tracer sends what is queued) and read the spans."""
    await gw.gateway.stop()
    spans = await receiver.wait_for(count, timeout=15)
    assert len(spans) == count, [s.name for s in spans]
    return spans


def server_and_attempts(spans: list[SpanRecord]) -> tuple[SpanRecord, list[SpanRecord]]:
    [server] = [s for s in spans if s.kind == "SERVER"]
    attempts = sorted(
        (s for s in spans if s.kind == "CLIENT"), key=lambda s: s.attributes["aigw.attempt"]
    )
    return server, attempts


def traceparents(headers: list[tuple[str, str]]) -> list[str]:
    return [v for k, v in headers if k == "traceparent"]


async def test_a_failover_stream_is_one_server_span_and_an_attempt_span_per_try(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, receiver: OtlpReceiver
) -> None:
    dead = ProviderConfig(
        name="dead", type="openai", base_url=f"http://127.0.0.1:{refused_port()}/v1"
    )
    live = ProviderConfig(name="live", type="openai", base_url=upstream.url, timeout=5.0)
    base = make_config({}, sock=sock_dir)
    models = {
        "smart": ModelConfig(
            name="smart",
            targets=(TargetConfig(provider="dead", model="dead-model"),),
            fallbacks=("backup",),
        ),
        "backup": ModelConfig(
            name="backup", targets=(TargetConfig(provider="live", model="live-model"),)
        ),
    }
    config = dataclasses.replace(base, providers={"dead": dead, "live": live}, models=models)
    gw: RunningGateway = await start_gateway(traced(config, receiver))
    async with openai.AsyncOpenAI(
        base_url=gw.v1,
        api_key="k",
        max_retries=0,
        default_headers={"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"},
    ) as client:
        stream = await client.chat.completions.create(
            model="smart",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            max_tokens=50,
            stream_options={"include_usage": True},
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        rid = stream.response.headers["x-request-id"]
    assert text
    server, (first, second) = server_and_attempts(await spans_after_stop(gw, receiver, 3))
    # The caller's trace: the server span is its child; the attempts are the server span's.
    assert (server.trace_id, server.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert server.trace_state == "congo=t61rcWkgMzE"
    assert {first.parent_span_id, second.parent_span_id} == {server.span_id}
    assert {first.trace_id, second.trace_id} == {TRACE_ID}
    assert server.name == "POST /v1/chat/completions"
    attrs = server.attributes
    assert attrs["http.response.status_code"] == 200
    assert attrs["gen_ai.request.model"] == "smart"
    assert attrs["gen_ai.request.max_tokens"] == 50
    assert attrs["aigw.request_id"] == rid
    assert attrs["aigw.tenant"] == "default"
    assert attrs["gen_ai.usage.input_tokens"] == 7
    assert server.status == "UNSET"
    # The dead target: an error without an answer. The live one: the answer, its first token.
    assert first.attributes["aigw.provider"] == "dead" and first.status == "ERROR"
    assert "http.response.status_code" not in first.attributes
    assert second.attributes["aigw.provider"] == "live" and second.status == "UNSET"
    assert second.attributes["gen_ai.request.model"] == "live-model"
    assert second.attributes["http.response.status_code"] == 200
    assert second.attributes["gen_ai.usage.output_tokens"] == len(text.split())
    assert [e.name for e in second.events] == [FIRST_TOKEN_EVENT]
    assert "stop" in second.attributes["gen_ai.response.finish_reasons"]
    # The upstream got the second attempt's context, once, and the caller's tracestate.
    [sent] = upstream.header_lists
    assert traceparents(sent) == [f"00-{TRACE_ID}-{second.span_id}-01"]
    assert dict(sent)["tracestate"] == "congo=t61rcWkgMzE"


async def test_the_clients_trace_context_is_never_forwarded_beside_the_gateways(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, receiver: OtlpReceiver
) -> None:
    """Even a provider told to forward traceparent sends only the attempt's."""
    base = make_config({"up": upstream.url}, sock=sock_dir)
    provider = dataclasses.replace(
        base.providers["up"], forward_headers=("traceparent", "tracestate")
    )
    config = traced(dataclasses.replace(base, providers={"up": provider}), receiver)
    gw: RunningGateway = await start_gateway(config)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.v1}/chat/completions",
            json={"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]},
            headers={"traceparent": TRACEPARENT},
        ) as resp,
    ):
        assert resp.status == 200
    _server, [attempt] = server_and_attempts(await spans_after_stop(gw, receiver, 2))
    [sent] = upstream.header_lists
    assert traceparents(sent) == [f"00-{TRACE_ID}-{attempt.span_id}-01"]
    assert "tracestate" not in dict(sent)


async def test_without_tracing_a_client_traceparent_goes_where_forward_headers_say(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    base = make_config({"up": upstream.url}, sock=sock_dir)
    provider = dataclasses.replace(base.providers["up"], forward_headers=("traceparent",))
    gw: RunningGateway = await start_gateway(dataclasses.replace(base, providers={"up": provider}))
    async with aiohttp.ClientSession() as http:
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]}
        async with http.post(
            f"{gw.v1}/chat/completions", json=body, headers={"traceparent": TRACEPARENT}
        ) as resp:
            assert resp.status == 200
    assert traceparents(upstream.header_lists[0]) == [TRACEPARENT]


async def test_a_responses_request_translated_to_chat(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, receiver: OtlpReceiver
) -> None:
    config = traced(make_config({"up": upstream.url}, sock=sock_dir), receiver)
    gw: RunningGateway = await start_gateway(config)
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0) as client:
        answer = await client.responses.create(model="gpt-test", input="hi", max_output_tokens=20)
    server, [attempt] = server_and_attempts(await spans_after_stop(gw, receiver, 2))
    assert server.name == "POST /v1/responses"
    assert server.attributes["gen_ai.operation.name"] == "chat"
    assert server.attributes["gen_ai.request.max_tokens"] == 20
    assert server.attributes["gen_ai.usage.output_tokens"] == answer.usage.output_tokens  # type: ignore[union-attr]
    assert attempt.name == "chat up-model"
    assert attempt.attributes["gen_ai.response.id"].startswith("up-")  # the upstream's id
    assert upstream.headers[0]["traceparent"].split("-")[2] == attempt.span_id


async def test_a_native_messages_stream_and_count_tokens(
    start_gateway: Any, sock_dir: Path, receiver: OtlpReceiver
) -> None:
    up = await AnthropicUpstream().start()
    try:
        base = make_config({}, sock=sock_dir)
        provider = ProviderConfig(
            name="claude", type="anthropic", base_url=up.url, api_key=Secret(KEY), timeout=5.0
        )
        model = ModelConfig(name="claude-test", targets=(TargetConfig(provider="claude"),))
        config = dataclasses.replace(
            base, providers={"claude": provider}, models={"claude-test": model}
        )
        gw: RunningGateway = await start_gateway(traced(config, receiver))
        async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="k", max_retries=0) as c:
            messages: Any = [{"role": "user", "content": "hi"}]
            async with c.messages.stream(
                model="claude-test", max_tokens=30, messages=messages
            ) as stream:
                final = await stream.get_final_message()
            await c.messages.count_tokens(model="claude-test", messages=messages)
        spans = await spans_after_stop(gw, receiver, 4)
    finally:
        await up.stop()
    by_trace: dict[str, list[SpanRecord]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    assert len(by_trace) == 2  # one trace per request
    streamed = next(t for t in by_trace.values() if any(s.name == "POST /v1/messages" for s in t))
    server, [attempt] = server_and_attempts(streamed)
    assert server.attributes["gen_ai.request.stream"] is True
    assert attempt.attributes["gen_ai.provider.name"] == "anthropic"
    assert attempt.attributes["gen_ai.usage.output_tokens"] == final.usage.output_tokens
    assert [e.name for e in attempt.events] == [FIRST_TOKEN_EVENT]
    assert "end_turn" in attempt.attributes["gen_ai.response.finish_reasons"]
    counted = next(t for t in by_trace.values() if t is not streamed)
    server, [attempt] = server_and_attempts(counted)
    assert server.name == "POST /v1/messages/count_tokens"
    assert attempt.attributes["http.response.status_code"] == 200
    # Each upstream request carried its own attempt's context.
    sent = [h["traceparent"].split("-")[2] for h in up.headers]
    assert sorted(sent) == sorted(s.span_id for s in spans if s.kind == "CLIENT")


async def test_refusals_and_upstream_errors_set_the_status(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, receiver: OtlpReceiver
) -> None:
    base = make_config({"up": upstream.url}, sock=sock_dir)
    auth = AuthConfig(keys=(AuthKey(tenant="team-a", key=Secret("sk-good-0123456789")),))
    gw: RunningGateway = await start_gateway(traced(dataclasses.replace(base, auth=auth), receiver))
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key="sk-bad", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="gpt-test", messages=[])
    upstream.behaviour.status = 503
    good = openai.AsyncOpenAI(base_url=gw.v1, api_key="sk-good-0123456789", max_retries=0)
    async with good as client:
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "x"}]
            )
    spans = await spans_after_stop(gw, receiver, 3)
    servers = sorted(
        (s for s in spans if s.kind == "SERVER"),
        key=lambda s: s.attributes["http.response.status_code"],
    )
    refused, failed = servers
    assert refused.attributes["http.response.status_code"] == 401
    assert refused.status == "UNSET" and refused.attributes["error.type"]  # the client's fault
    assert "aigw.tenant" not in refused.attributes
    assert failed.attributes["http.response.status_code"] >= 500 and failed.status == "ERROR"
    assert failed.attributes["aigw.tenant"] == "team-a"
    [attempt] = [s for s in spans if s.kind == "CLIENT"]
    assert attempt.parent_span_id == failed.span_id
    assert attempt.attributes["http.response.status_code"] == 503 and attempt.status == "ERROR"
    assert "sk-good-0123456789" not in json.dumps([s.attributes for s in spans], default=str)


async def test_a_cache_hit_has_no_attempt(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, receiver: OtlpReceiver
) -> None:
    config = make_config({"up": upstream.url}, sock=sock_dir, cache=CacheConfig(enabled=True))
    gw: RunningGateway = await start_gateway(traced(config, receiver))
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0) as client:
        for _ in range(2):
            await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "same"}], temperature=0
            )
    spans = await spans_after_stop(gw, receiver, 3)
    servers = [s for s in spans if s.kind == "SERVER"]
    assert sorted(s.attributes["aigw.cache.hit"] for s in servers) == [False, True]
    hit = next(s for s in servers if s.attributes["aigw.cache.hit"])
    assert not [s for s in spans if s.parent_span_id == hit.span_id]


async def test_captured_content_of_a_stream_is_redacted(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, receiver: OtlpReceiver
) -> None:
    upstream.behaviour.words = ["mail", "ops@example.com", "now"]
    config = make_config({"up": upstream.url}, sock=sock_dir)
    gw: RunningGateway = await start_gateway(traced(config, receiver, capture_content=True))
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "write to bob@example.com"}],
            stream=True,
        )
        async for _ in stream:
            pass
    server, _ = server_and_attempts(await spans_after_stop(gw, receiver, 2))
    captured = json.dumps(
        [server.attributes["gen_ai.input.messages"], server.attributes["gen_ai.output.messages"]]
    )
    assert "[EMAIL]" in captured and "example.com" not in captured
    assert "mail" in captured and "now" in captured


async def test_a_pass_through_endpoint_is_traced(
    start_gateway: Any, sock_dir: Path, receiver: OtlpReceiver
) -> None:
    base = make_config({}, sock=sock_dir)
    mock = ProviderConfig(name="mock", type="mock")
    model = ModelConfig(name="img", targets=(TargetConfig(provider="mock"),))
    config = dataclasses.replace(base, providers={"mock": mock}, models={"img": model})
    gw: RunningGateway = await start_gateway(traced(config, receiver))
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0) as client:
        await client.images.generate(model="img", prompt="a blue whale")
    server, [attempt] = server_and_attempts(await spans_after_stop(gw, receiver, 2))
    assert server.name == "POST /v1/images/generations"
    assert server.attributes["http.response.status_code"] == 200
    assert attempt.attributes["aigw.provider"] == "mock"


async def test_a_hook_rejection_is_a_span_too(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, receiver: OtlpReceiver
) -> None:
    hooks = (HookSpec("content_filter", {"deny": ["forbidden"]}),)
    config = make_config({"up": upstream.url}, sock=sock_dir, hooks=hooks)
    gw: RunningGateway = await start_gateway(traced(config, receiver))
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "forbidden"}]
            )
    [server] = await spans_after_stop(gw, receiver, 1)
    assert server.attributes["error.type"] == "content_filtered"
    assert upstream.requests == []
