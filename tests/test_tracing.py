"""aigw/tracing.py: the spans the facade makes when driven the way the pipeline drives it, read
back from a real OTLP/HTTP receiver on loopback (tests/otlp_receiver.py); W3C propagation; the
captured content; a dead collector (refusing, or never answering); the disabled path; and the
`tracing:` config section with `aigw validate`."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import typer
from multidict import CIMultiDict, CIMultiDictProxy
from typer.testing import CliRunner

from aigw.cli import validate as validate_cli
from aigw.config import ProviderConfig, TracingConfig, parse_config
from aigw.errors import (
    ConfigError,
    GatewayError,
    RateLimitError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from aigw.exchange import Usage
from aigw.genai import MAX_CONTENT_CHARS, input_messages, output_messages, provider_name
from aigw.tracing import FIRST_TOKEN_EVENT, Tracing, TracingStats, build_tracing
from tests.clock import FakeClock
from tests.otlp_receiver import OtlpReceiver, SpanRecord
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parent.parent
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
CHAT_ROUTE = "/v1/chat/completions"
ANSWER = (
    b'{"id":"chatcmpl-42","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Write to ops@example.com"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":5,'
    b'"total_tokens":16}}'
)
CHAT_BODY: dict[str, Any] = {
    "model": "smart",
    "max_tokens": 64,
    "temperature": 0.5,
    "stream": True,
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "My key is sk-proj-abcdefghijklmnop0123456789ABCDEF, mail me"},
    ],
}


def client_headers(**headers: str) -> CIMultiDictProxy[str]:
    """Request headers as aiohttp hands them to the proxy (case-insensitive)."""
    return CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json", **headers}))


def provider(name: str, base_url: str, type_: str = "openai") -> ProviderConfig:
    return ProviderConfig(name=name, type=type_, base_url=base_url)


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    found = await OtlpReceiver().start()
    yield found
    await found.stop()


@pytest.fixture
def make_tracing() -> Iterator[Callable[..., Tracing]]:
    """`make_tracing(endpoint=..., **settings)`: a tracer, shut down after the test."""
    made: list[Tracing] = []

    def make(clock: Callable[[], float] | None = None, **settings: Any) -> Tracing:
        config = TracingConfig(enabled=True, **settings)
        tracing = build_tracing(config) if clock is None else build_tracing(config, clock=clock)
        assert tracing is not None
        made.append(tracing)
        return tracing

    yield make
    for tracing in made:
        tracing.shutdown(timeout=1.0)


async def flush(tracing: Tracing) -> None:
    """Export what is queued (the exporter blocks: off the loop the receiver runs on)."""
    assert await asyncio.to_thread(tracing.flush)


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- spans, attributes, links ------------------------------------------------------------------


async def test_failover_makes_a_server_span_with_two_attempt_spans(
    receiver: OtlpReceiver, upstream: Upstream, make_tracing: Callable[..., Tracing]
) -> None:
    """The pipeline's failover: the first target refuses the connection, the second streams the
    answer. One server span, two client spans under it, in order, each with its GenAI
    attributes; the incoming trace is kept and the real upstream receives the second attempt's
    traceparent."""
    tracing = make_tracing(endpoint=receiver.endpoint, service_name="gateway-eu")
    dead = provider("dead", f"http://127.0.0.1:{refused_port()}/v1")
    live = provider("live", upstream.url)

    span = tracing.start_request(
        "POST",
        CHAT_ROUTE,
        client_headers(traceparent=TRACEPARENT, tracestate="congo=t61rcWkgMzE,rojo=00f067aa"),
        request_id="req-1",
    )
    span.request("smart", CHAT_BODY, stream=True)
    sent: list[dict[str, str]] = []
    async with aiohttp.ClientSession() as session:
        for target in (dead, live):
            attempt = span.attempt(target, "gpt-4o")
            headers = {"Content-Type": "application/json"}
            attempt.inject(headers)
            sent.append(headers)
            try:
                async with session.post(
                    f"{target.base_url}/chat/completions", json=CHAT_BODY, headers=headers
                ) as resp:
                    last = b""
                    async for chunk in resp.content.iter_any():
                        attempt.first_token()
                        last = chunk
                    usage = Usage(11, 5, 16)
                    attempt.end(resp.status, usage=usage, answer=last)
            except aiohttp.ClientConnectionError:
                attempt.end(error=UpstreamError("Upstream 'dead' is unreachable"))
    span.end(200, tenant="team-a", cache="miss", usage=Usage(11, 5, 16))
    await flush(tracing)

    spans = await receiver.wait_for(3)
    server = one(spans, kind="SERVER")
    first, second = sorted(
        (s for s in spans if s.kind == "CLIENT"), key=lambda s: s.attributes["aigw.attempt"]
    )
    # The caller's trace: same trace id, the server span is the caller's span's child.
    assert {s.trace_id for s in spans} == {TRACE_ID}
    assert server.parent_span_id == PARENT_ID
    assert first.parent_span_id == second.parent_span_id == server.span_id
    assert len({server.span_id, first.span_id, second.span_id}) == 3
    assert server.start_ns <= first.start_ns <= first.end_ns <= second.start_ns
    assert second.end_ns <= server.end_ns
    assert server.trace_state == first.trace_state == "congo=t61rcWkgMzE,rojo=00f067aa"

    assert server.name == "POST /v1/chat/completions"
    assert server.status == "UNSET"
    assert server.attributes == {
        "http.request.method": "POST",
        "url.path": CHAT_ROUTE,
        "http.route": CHAT_ROUTE,
        "aigw.request_id": "req-1",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "smart",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.stream": True,
        "http.response.status_code": 200,
        "aigw.tenant": "team-a",
        "aigw.cache.hit": False,
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 5,
    }
    assert server.resource["service.name"] == "gateway-eu"
    assert server.scope == "aigw"

    assert first.name == second.name == "chat gpt-4o"
    assert first.status == "ERROR"
    assert first.status_message == "Upstream 'dead' is unreachable"
    assert first.attributes["error.type"] == "upstream_error"
    assert first.attributes["aigw.provider"] == "dead"
    assert "http.response.status_code" not in first.attributes
    assert first.events == []

    assert second.status == "UNSET"
    assert second.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.stream": True,
        "gen_ai.response.model": "smart",  # what tests/upstream.py answers: the model asked
        "gen_ai.response.id": second.attributes["gen_ai.response.id"],
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.response.time_to_first_chunk": second.attributes[
            "gen_ai.response.time_to_first_chunk"
        ],
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 5,
        "server.address": "127.0.0.1",
        "server.port": upstream.port,
        "http.response.status_code": 200,
        "aigw.provider": "live",
        "aigw.attempt": 2,
    }
    assert 0 < second.attributes["gen_ai.response.time_to_first_chunk"] < 60
    [event] = second.events
    assert event.name == FIRST_TOKEN_EVENT
    assert second.start_ns <= event.time_ns <= second.end_ns

    # Propagation: each attempt sent its own span as the parent; the upstream got the second.
    lines = f"traceparent: 00-{TRACE_ID}-{second.span_id}-01\r\n"
    lines += "tracestate: congo=t61rcWkgMzE,rojo=00f067aa\r\n"
    assert attempt.header_lines() == lines.encode()
    assert sent[0]["traceparent"] == f"00-{TRACE_ID}-{first.span_id}-01"
    assert sent[1]["traceparent"] == f"00-{TRACE_ID}-{second.span_id}-01"
    assert upstream.headers[-1]["traceparent"] == f"00-{TRACE_ID}-{second.span_id}-01"
    assert upstream.headers[-1]["tracestate"] == "congo=t61rcWkgMzE,rojo=00f067aa"


def one(spans: list[SpanRecord], **where: str) -> SpanRecord:
    [found] = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    return found


async def test_a_request_without_traceparent_starts_a_trace(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint)
    span = tracing.start_request("POST", "/v1/embeddings", client_headers())
    span.request("embed", {"model": "embed", "input": "hello"})
    attempt = span.attempt(provider("oa", "https://api.openai.com/v1"), "text-embedding-3-small")
    headers: dict[str, str] = {}
    attempt.inject(headers)
    attempt.end(200, usage=Usage(2, 0, 2), answer=b'{"object":"list","model":"te-3"}')
    span.end(200, tenant="laptop")
    await flush(tracing)

    server, client = sorted(await receiver.wait_for(2), key=lambda s: s.kind != "SERVER")
    assert server.parent_span_id is None
    assert server.trace_id == span.trace_id != "0" * 32
    assert server.attributes["gen_ai.operation.name"] == "embeddings"
    assert client.name == "embeddings text-embedding-3-small"
    assert client.attributes["gen_ai.operation.name"] == "embeddings"
    assert client.attributes["server.address"] == "api.openai.com"
    assert client.attributes["server.port"] == 443
    assert client.attributes["gen_ai.response.model"] == "te-3"
    assert "gen_ai.response.finish_reasons" not in client.attributes
    assert "tracestate" not in headers
    assert headers["traceparent"] == f"00-{server.trace_id}-{client.span_id}-01"


@pytest.mark.parametrize(
    ("route", "operation"),
    [
        ("/v1/chat/completions", "chat"),
        ("/v1/completions", "text_completion"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/responses", "chat"),
        ("/v1/messages", "chat"),
    ],
)
async def test_every_dialect_has_its_operation_name(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing], route: str, operation: str
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint)
    span = tracing.start_request("POST", route, client_headers())
    span.request("m", {"model": "m"})
    span.attempt(provider("p", "http://127.0.0.1:1/v1"), "up").end(200)
    span.end(200)
    await flush(tracing)
    spans = await receiver.wait_for(2)
    assert {s.attributes["gen_ai.operation.name"] for s in spans} == {operation}
    assert one(spans, kind="CLIENT").name == f"{operation} up"


@pytest.mark.parametrize(
    ("answer", "model", "response_id", "reasons"),
    [
        # Two choices; the text quotes the keys (escaped in JSON), which must not count.
        (
            b'{"id": "chatcmpl-7", "model": "gpt-4o-2024", "choices": [{"message": {"content": '
            b'"say \\"finish_reason\\": \\"x\\" and \\"model\\": \\"y\\""}, "finish_reason": '
            b'"stop"}, {"message": {"content": "' + b"z " * 20_000 + b'"}, "finish_reason": '
            b'"length"}]}',
            "gpt-4o-2024",
            "chatcmpl-7",
            ("stop", "length"),
        ),
        # Anthropic messages.
        (
            b'{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",'
            b'"content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn"}',
            "claude-x",
            "msg_1",
            ("end_turn",),
        ),
        # The last events of a stream: null finish reasons until the last chunk.
        (
            b'data: {"id":"c1","model":"m-1","choices":[{"delta":{"content":"a"},'
            b'"finish_reason":null}]}\n\ndata: {"id":"c1","model":"m-1","choices":[{"delta":{},'
            b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
            "m-1",
            "c1",
            ("stop",),
        ),
        (b"<html>bad gateway</html>", None, None, ()),
    ],
)
async def test_the_answer_gives_model_id_and_finish_reasons(
    receiver: OtlpReceiver,
    make_tracing: Callable[..., Tracing],
    answer: bytes,
    model: str | None,
    response_id: str | None,
    reasons: tuple[str, ...],
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint)
    span = tracing.start_request("POST", CHAT_ROUTE, client_headers())
    span.attempt(provider("oa", "https://api.openai.com/v1"), "gpt-4o").end(200, answer=answer)
    span.end(200)
    await flush(tracing)
    client = one(await receiver.wait_for(2), kind="CLIENT")
    assert client.attributes.get("gen_ai.response.model") == model
    assert client.attributes.get("gen_ai.response.id") == response_id
    assert client.attributes.get("gen_ai.response.finish_reasons", ()) == reasons


async def test_other_routes_get_a_server_span_without_genai_attributes(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint)
    span = tracing.start_request("GET", "/v1/models/{model}", {}, path="/v1/models/gpt-4o")
    span.end(404, error=GatewayError("no such model"))
    await flush(tracing)
    [server] = await receiver.wait_for(1)
    assert server.name == "GET /v1/models/{model}"
    assert server.attributes["url.path"] == "/v1/models/gpt-4o"
    assert not any(key.startswith("gen_ai.") for key in server.attributes)


async def test_a_cache_hit_has_no_attempt(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint)
    span = tracing.start_request("POST", CHAT_ROUTE, client_headers())
    span.request("smart", CHAT_BODY)
    span.end(200, tenant="team-b", cache="hit", usage=Usage(11, 5, 16))
    await flush(tracing)
    [server] = await receiver.wait_for(1)
    assert server.attributes["aigw.cache.hit"] is True
    assert server.attributes["aigw.tenant"] == "team-b"
    assert server.attributes["gen_ai.usage.output_tokens"] == 5


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "span_status", "error_type", "message"),
    [
        (
            502,
            UpstreamError("every target failed"),
            "ERROR",
            "upstream_error",
            "every target failed",
        ),
        (504, UpstreamTimeoutError("too slow"), "ERROR", "upstream_timeout", "too slow"),
        # A client's own 4xx is not the server's error (HTTP conventions), but says what it was.
        (429, RateLimitError("slow down", 1.0), "UNSET", "rate_limit_exceeded", ""),
        (400, UpstreamStatusError(400, b'{"error":{"message":"bad"}}'), "UNSET", "400", ""),
        # An internal failure: its class, never its text (it could hold anything).
        (500, KeyError("secret-bearing detail"), "ERROR", "KeyError", "KeyError"),
        (503, None, "ERROR", "503", "HTTP 503"),
    ],
)
async def test_errors_set_the_server_span_status(
    receiver: OtlpReceiver,
    make_tracing: Callable[..., Tracing],
    status: int,
    error: BaseException | None,
    span_status: str,
    error_type: str,
    message: str,
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint)
    span = tracing.start_request("POST", CHAT_ROUTE, client_headers())
    span.end(status, tenant="t", error=error)
    await flush(tracing)
    [server] = await receiver.wait_for(1)
    assert server.status == span_status
    assert server.status_message == message
    assert server.attributes["error.type"] == error_type
    assert server.attributes["http.response.status_code"] == status


async def test_an_attempt_answered_with_an_error_status_is_an_error(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint)
    span = tracing.start_request("POST", CHAT_ROUTE, client_headers())
    target = provider("oa", "https://api.openai.com/v1")
    err = UpstreamStatusError(429, b'{"error":{"message":"Rate limit reached","code":"rl"}}')
    span.attempt(target, "gpt-4o").end(429, error=err)
    span.attempt(target, "gpt-4o").end(500)
    span.end(429, error=err)
    await flush(tracing)
    spans = await receiver.wait_for(3)
    first, second = sorted(
        (s for s in spans if s.kind == "CLIENT"), key=lambda s: s.attributes["aigw.attempt"]
    )
    assert (first.status, first.attributes["error.type"]) == ("ERROR", "429")
    assert first.status_message == "Rate limit reached"
    assert first.attributes["http.response.status_code"] == 429
    assert (second.status, second.attributes["error.type"]) == ("ERROR", "500")


async def test_end_and_first_token_count_once(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint)
    span = tracing.start_request("POST", CHAT_ROUTE, client_headers())
    attempt = span.attempt(provider("oa", "https://api.openai.com/v1"), "gpt-4o")
    attempt.first_token()
    attempt.first_token()
    attempt.end(200)
    attempt.end(500, error=UpstreamError("late"))
    attempt.first_token()
    span.end(200)
    span.end(500)
    await flush(tracing)
    assert tracing.stats().ended == 2
    spans = await receiver.wait_for(2)
    client = one(spans, kind="CLIENT")
    assert [e.name for e in client.events] == [FIRST_TOKEN_EVENT]
    assert client.status == "UNSET"
    assert one(spans, kind="SERVER").attributes["http.response.status_code"] == 200


# --- propagation and sampling ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # upper-case hex
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is invalid
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
        "garbage",
        "",
    ],
)
async def test_an_invalid_traceparent_starts_a_new_trace(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing], bad: str
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint)
    span = tracing.start_request(
        "POST", CHAT_ROUTE, client_headers(traceparent=bad, tracestate="congo=t61rcWkgMzE")
    )
    headers: dict[str, str] = {}
    span.attempt(provider("oa", "https://api.openai.com/v1"), "m").inject(headers)
    span.end(200)
    await flush(tracing)
    [server] = await receiver.wait_for(1)
    assert server.parent_span_id is None
    assert server.trace_id not in (TRACE_ID, TRACE_ID.upper())
    assert "tracestate" not in headers  # only a valid traceparent's tracestate is kept


async def test_a_later_traceparent_version_is_accepted(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint)
    tracing.start_request(
        "POST", CHAT_ROUTE, client_headers(traceparent=f"01-{TRACE_ID}-{PARENT_ID}-01-later")
    ).end(200)
    await flush(tracing)
    [server] = await receiver.wait_for(1)
    assert (server.trace_id, server.parent_span_id) == (TRACE_ID, PARENT_ID)


async def test_an_unsampled_caller_is_propagated_but_not_recorded(
    make_tracing: Callable[..., Tracing],
) -> None:
    tracing = make_tracing(endpoint=f"http://127.0.0.1:{refused_port()}")
    span = tracing.start_request(
        "POST", CHAT_ROUTE, client_headers(traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00")
    )
    span.request("smart", CHAT_BODY)
    attempt = span.attempt(provider("oa", "https://api.openai.com/v1"), "gpt-4o")
    headers: dict[str, str] = {}
    attempt.inject(headers)
    attempt.first_token()
    attempt.end(200, answer=ANSWER)
    span.end(200, tenant="t")
    assert not span.recording
    assert tracing.stats().ended == 0
    trace, parent, flags = headers["traceparent"].split("-")[1:]
    assert (trace, flags) == (TRACE_ID, "00")
    assert parent != PARENT_ID  # our own (unrecorded) span: the upstream's parent


@pytest.mark.parametrize(("ratio", "recorded"), [(0.0, 0), (1.0, 200)])
async def test_sample_ratio_decides_for_new_traces(
    make_tracing: Callable[..., Tracing], ratio: float, recorded: int
) -> None:
    tracing = make_tracing(
        endpoint=f"http://127.0.0.1:{refused_port()}", sample_ratio=ratio, export_timeout=0.05
    )
    for _ in range(100):
        span = tracing.start_request("POST", CHAT_ROUTE, client_headers())
        span.attempt(provider("oa", "https://api.openai.com/v1"), "m").end(200)
        span.end(200)
    assert tracing.stats().ended == recorded


async def test_a_sampled_caller_is_recorded_even_at_ratio_zero(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint, sample_ratio=0.0)
    tracing.start_request("POST", CHAT_ROUTE, client_headers(traceparent=TRACEPARENT)).end(200)
    await flush(tracing)
    [server] = await receiver.wait_for(1)
    assert server.trace_id == TRACE_ID


def test_provider_name_and_server_address_come_from_the_base_url() -> None:
    cases = {
        "https://api.openai.com/v1": "openai",
        "https://myres.openai.azure.com/openai/deployments/x": "azure.ai.openai",
        "https://api.groq.com/openai/v1": "groq",
        "https://api.mistral.ai/v1": "mistral_ai",
        "https://generativelanguage.googleapis.com/v1beta/openai": "gcp.gemini",
        "https://api.deepseek.com/v1": "deepseek",
        "http://127.0.0.1:11434/v1": "openai",  # an OpenAI-compatible server: openai flavour
        "https://evil-api.openai.com.example/v1": "openai",  # a suffix is not the host
    }
    for url, expected in cases.items():
        assert provider_name(provider("p", url)) == expected, url
    assert provider_name(provider("m", "", type_="mock")) == "aigw.mock"


# --- captured content --------------------------------------------------------------------------


async def test_no_content_is_captured_by_default(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint)
    span = tracing.start_request("POST", CHAT_ROUTE, client_headers())
    span.request("smart", CHAT_BODY)
    span.attempt(provider("oa", "https://api.openai.com/v1"), "gpt-4o").end(200, answer=ANSWER)
    span.end(200, answer=ANSWER)
    await flush(tracing)
    spans = await receiver.wait_for(2)
    for span_record in spans:
        text = json.dumps(span_record.attributes)
        assert "terse" not in text and "ops@" not in text and "sk-proj" not in text
        assert not {"gen_ai.input.messages", "gen_ai.output.messages"} & set(span_record.attributes)


async def test_captured_content_is_redacted_like_the_audit_log(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint, capture_content=True)
    span = tracing.start_request("POST", CHAT_ROUTE, client_headers())
    span.request("smart", CHAT_BODY)
    span.attempt(provider("oa", "https://api.openai.com/v1"), "gpt-4o").end(200, answer=ANSWER)
    span.end(200, answer=ANSWER)
    await flush(tracing)
    spans = await receiver.wait_for(2)
    server = one(spans, kind="SERVER")
    assert json.loads(server.attributes["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "You are terse."}]},
        {"role": "user", "parts": [{"type": "text", "content": "My key is [SECRET], mail me"}]},
    ]
    assert json.loads(server.attributes["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Write to [EMAIL]"}],
            "finish_reason": "stop",
        }
    ]
    # The attempt spans carry no text: one copy per request, on the server span.
    assert not any("messages" in key for key in one(spans, kind="CLIENT").attributes)


async def test_a_streamed_answer_is_captured_from_its_text(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint, capture_content=True)
    span = tracing.start_request("POST", "/v1/messages", client_headers())
    span.request(
        "claude",
        {
            "model": "claude",
            "system": "Call me at 415-555-2671.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        },
        stream=True,
    )
    span.end(200, answer="Sure, 10.1.2.3 it is.")
    await flush(tracing)
    [server] = await receiver.wait_for(1)
    assert json.loads(server.attributes["gen_ai.system_instructions"]) == [
        {"type": "text", "content": "Call me at [PHONE]."}
    ]
    assert json.loads(server.attributes["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Sure, [IPV4] it is."}]}
    ]


def test_captured_text_is_cut_before_a_word_not_inside_it() -> None:
    """A token cut in half could be a secret the redactor no longer recognises: the cut drops
    the token that crosses the limit."""
    secret = "sk-proj-" + "a1B2" * 10
    filler = "x " * ((MAX_CONTENT_CHARS - 10) // 2)
    _, messages = input_messages({"messages": [{"role": "user", "content": filler + secret}]})
    text = messages[0]["parts"][0]["content"]
    assert text.endswith(" [truncated]")
    assert "sk-" not in text
    assert len(text) <= MAX_CONTENT_CHARS + len(" [truncated]")
    # The limit is for all messages together: later ones get nothing.
    _, many = input_messages(
        {"messages": [{"role": "user", "content": "y" * MAX_CONTENT_CHARS}] * 3}
    )
    assert len(many) == 1


def test_content_shapes_of_the_dialects() -> None:
    tool_chat = {
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "rainy"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        ]
    }
    assert input_messages(tool_chat)[1] == [
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "tool_call",
                    "id": "c1",
                    "name": "weather",
                    "arguments": '{"city":"Oslo"}',
                }
            ],
        },
        {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": "c1", "response": "rainy"}],
        },
        {"role": "user", "parts": [{"type": "image_url"}]},
    ]
    assert input_messages({"prompt": ["a", "b"]})[1] == [
        {
            "role": "user",
            "parts": [{"type": "text", "content": "a"}, {"type": "text", "content": "b"}],
        }
    ]
    assert input_messages({"instructions": "be brief", "input": "hello"}) == (
        [{"type": "text", "content": "be brief"}],
        [{"role": "user", "parts": [{"type": "text", "content": "hello"}]}],
    )
    anthropic_answer = (
        b'{"type":"message","role":"assistant","model":"claude","stop_reason":"end_turn",'
        b'"content":[{"type":"text","text":"ok"}]}'
    )
    assert output_messages(anthropic_answer) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "ok"}],
            "finish_reason": "end_turn",
        }
    ]
    completion = b'{"choices":[{"text":"four","finish_reason":"length"}]}'
    assert output_messages(completion) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "four"}],
            "finish_reason": "length",
        }
    ]
    assert output_messages(b"<html>") == []


# --- a dead collector --------------------------------------------------------------------------


async def test_a_refusing_collector_costs_one_log_line_a_minute(
    make_tracing: Callable[..., Tracing], caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    tracing = make_tracing(
        clock=clock, endpoint=f"http://127.0.0.1:{refused_port()}", export_timeout=0.05
    )
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        for _ in range(50):
            span = tracing.start_request("POST", CHAT_ROUTE, client_headers())
            span.attempt(provider("oa", "https://api.openai.com/v1"), "m").end(200)
            span.end(200)
        await asyncio.to_thread(tracing.flush)  # each export fails: connection refused
    lines = [r for r in caplog.records if r.name.startswith(("aigw.tracing", "opentelemetry"))]
    assert [r.name for r in lines] == ["aigw.tracing"]
    assert "are being lost" in lines[0].getMessage()
    assert tracing.stats().failed == 300 and tracing.stats().exported == 0

    clock.advance(60)
    span = tracing.start_request("POST", CHAT_ROUTE, client_headers())
    span.end(200)
    await asyncio.to_thread(tracing.flush)
    lines = [r for r in caplog.records if r.name.startswith(("aigw.tracing", "opentelemetry"))]
    assert len(lines) == 2
    assert "more like it" in lines[1].getMessage()


async def test_a_stuck_collector_never_blocks_and_the_queue_is_capped(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing], caplog: pytest.LogCaptureFixture
) -> None:
    """The collector accepts the first export and never answers while 50,000 spans end: every
    call returns (they run on this loop, which is also the receiver's, so the export cannot
    finish meanwhile), memory stays flat past the queue's size, and once the collector answers
    it gets at most the queue plus the batch that was in flight."""
    receiver.hold = asyncio.Event()
    queue = 1000
    tracing = make_tracing(endpoint=receiver.endpoint, max_queue_size=queue, export_timeout=300)
    target = provider("oa", "https://api.openai.com/v1")
    headers = client_headers()
    total = 50_000

    def requests(count: int) -> None:
        for _ in range(count // 2):
            span = tracing.start_request("POST", CHAT_ROUTE, headers)
            span.request("smart", CHAT_BODY)
            span.attempt(target, "gpt-4o").end(200, usage=Usage(1, 2, 3), answer=ANSWER)
            span.end(200, tenant="t", cache="miss")

    requests(10_000)
    gc.collect()
    after_10k = sys.getallocatedblocks()
    requests(total - 10_000)
    gc.collect()
    after_50k = sys.getallocatedblocks()
    # Memory blocks in use: 40,000 more spans kept would be ~20 blocks each (800,000).
    assert after_50k - after_10k < 20_000, (after_10k, after_50k)
    # The queue (the batch being sent included) took `queue` spans, the rest were dropped.
    assert tracing.stats() == TracingStats(ended=total, exported=0, failed=0, dropped=total - queue)
    lost = [r for r in caplog.records if r.name.startswith(("aigw.tracing", "opentelemetry"))]
    assert [r.getMessage() for r in lost] == [
        f"tracing: spans to {receiver.endpoint}/v1/traces are being lost: "
        f"the export queue is full ({queue} spans)"
    ]

    await asyncio.wait_for(receiver.arrived.wait(), 30)  # the export that was stuck meanwhile
    assert receiver.spans == []
    receiver.hold.set()
    await flush(tracing)
    assert len(receiver.spans) == queue
    assert tracing.stats().exported == queue


async def test_shutdown_returns_in_time_when_the_collector_never_answers(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing], caplog: pytest.LogCaptureFixture
) -> None:
    receiver.hold = asyncio.Event()
    tracing = make_tracing(endpoint=receiver.endpoint, export_timeout=300)
    for _ in range(10):
        tracing.start_request("POST", CHAT_ROUTE, client_headers()).end(200)
    export = asyncio.create_task(asyncio.to_thread(tracing.flush))  # stuck in the export
    await asyncio.wait_for(receiver.arrived.wait(), 30)

    await tracing.close(timeout=0.2)  # returns although the export it waited for never ends

    assert not export.done()
    assert receiver.spans == [] and not receiver.hold.is_set()
    assert "did not take the last spans" in caplog.text
    # Spans that end after shutdown are ignored, not queued.
    tracing.start_request("POST", CHAT_ROUTE, client_headers()).end(200)
    assert tracing.stats().ended == 10
    receiver.hold.set()
    await asyncio.wait_for(export, 30)


async def test_shutdown_sends_what_is_queued(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(endpoint=receiver.endpoint)
    for _ in range(3):
        tracing.start_request("POST", CHAT_ROUTE, client_headers()).end(200)
    await tracing.close()
    assert len(await receiver.wait_for(3)) == 3
    assert tracing.stats().exported == 3


async def test_collector_headers_are_sent_with_every_export(
    receiver: OtlpReceiver, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(
        endpoint=receiver.endpoint + "/v1/traces", headers={"x-honeycomb-team": "hc-key"}
    )
    tracing.start_request("POST", CHAT_ROUTE, client_headers()).end(200)
    await flush(tracing)
    await receiver.wait_for(1)
    assert receiver.headers[0]["x-honeycomb-team"] == "hc-key"
    assert receiver.headers[0]["Content-Type"] == "application/x-protobuf"


# --- disabled ------------------------------------------------------------------------------------


def test_disabled_tracing_imports_no_opentelemetry() -> None:
    """Off (the default), building returns None and nothing of OpenTelemetry is imported: not
    by the config loader, not by aigw.tracing."""
    script = textwrap.dedent(
        """
        import sys
        from aigw.config import parse_config
        from aigw.tracing import build_tracing
        config = parse_config(
            "version: 1\\nproviders: {m: {type: mock}}\\nmodels: {m: {targets: [{provider: m}]}}\\n"
            "tracing: {enabled: false, endpoint: 'http://127.0.0.1:4318'}\\n"
        )
        assert build_tracing(config.tracing) is None
        loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')
        print(loaded)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- config and `aigw validate` --------------------------------------------------------------


def test_tracing_config_defaults_and_export_url() -> None:
    config = TracingConfig()
    assert not config.enabled
    assert config.export_url() == "http://127.0.0.1:4318/v1/traces"
    assert TracingConfig(endpoint="https://otel.example/").export_url() == (
        "https://otel.example/v1/traces"
    )
    assert TracingConfig(endpoint="https://otel.example/v1/traces").export_url() == (
        "https://otel.example/v1/traces"
    )


BASE = "version: 1\nproviders: {m: {type: mock}}\nmodels: {m: {targets: [{provider: m}]}}\n"


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + text, "t.yaml", env=env or {})
    return [p.format() for p in info.value.problems]


def test_tracing_config_is_validated() -> None:
    config = parse_config(
        BASE
        + textwrap.dedent(
            """
            tracing:
              enabled: true
              endpoint: https://api.honeycomb.io
              headers: {x-honeycomb-team: "${HC_KEY}", x-honeycomb-dataset: aigw}
              sample_ratio: 0.1
              export_timeout: 2s
            """
        ),
        env={"HC_KEY": "hc-secret"},
    )
    assert config.tracing.headers == {
        "x-honeycomb-team": "hc-secret",
        "x-honeycomb-dataset": "aigw",
    }
    assert config.tracing.export_timeout == 2.0
    assert "hc-secret" not in repr(config)

    assert problems("tracing: {sample_ratio: 2}") == [
        "t.yaml:4: tracing.sample_ratio: must be at most 1, got 2"
    ]
    [bad_url] = problems("tracing: {endpoint: 'otel:4318'}")
    assert "tracing.endpoint: endpoint must be an http:// or https:// URL" in bad_url
    [in_url] = problems("tracing: {endpoint: 'https://u:p4ss@otel.example'}")
    assert "holds credentials written in the file" in in_url and "p4ss" not in in_url
    for header in ("x-honeycomb-team", "Authorization", "api-key", "x-sf-token"):
        [literal] = problems(f"tracing: {{headers: {{{header}: 'Bearer abc123'}}}}")
        assert f"tracing.headers.{header}: header '{header}' holds a credential" in literal
        assert "abc123" not in literal
    [crlf] = problems('tracing: {headers: {x-dataset: "${D}"}}', env={"D": "a\r\nX-Evil: 1"})
    assert "cannot hold a line break" in crlf
    [latin] = problems("tracing: {headers: {x-dataset: 'café'}}")
    assert "tracing.headers.x-dataset: a header value must be ASCII" in latin


def test_validate_says_when_tracing_is_enabled_without_the_extra(tmp_path: Path) -> None:
    """The otel extra is missing (its packages made unimportable in a fresh interpreter)."""
    path = tmp_path / "aigw.yaml"
    path.write_text(BASE + "tracing:\n  enabled: true\n")
    script = (
        "import sys, runpy; sys.modules['opentelemetry'] = None; "
        f"sys.argv = ['aigw', 'validate', {str(path)!r}]; "
        "runpy.run_module('aigw', run_name='__main__')"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert (
        f"{path}:5: tracing.enabled: tracing is enabled but the OpenTelemetry packages are not "
        "installed (no module opentelemetry.sdk.trace) (Hint: install them with: "
        "pip install 'aigw[otel]', or set enabled: false)"
    ) in out.stdout
    assert "Traceback" not in out.stdout + out.stderr

    # Disabled, the same interpreter has no complaint.
    path.write_text(BASE + "tracing:\n  enabled: false\n")
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tracing: off" in out.stdout


def test_build_tracing_without_the_extra_raises_a_config_error() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules['opentelemetry'] = None
        from aigw.config import TracingConfig
        from aigw.errors import ConfigError
        from aigw.tracing import build_tracing
        try:
            build_tracing(TracingConfig(enabled=True))
        except ConfigError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "tracing.enabled: tracing is enabled but the OpenTelemetry packages" in out.stdout


def test_validate_summary_shows_tracing(tmp_path: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    validate_cli.register(app)
    path = tmp_path / "aigw.yaml"
    path.write_text(
        BASE + "tracing: {enabled: true, endpoint: 'https://u:${PW}@otel.example:4318', "
        "sample_ratio: 0.5, capture_content: true}\n"
    )
    runner = CliRunner(env={"PW": "hunter2"})
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert (
        "tracing: on (OTLP/HTTP to https://u@otel.example:4318/v1/traces, sampling 50% of new "
        "traces, with prompt and answer text)"
    ) in " ".join(result.output.split())  # rich wraps the line
    result = runner.invoke(app, ["validate", "--json", str(path)])
    data = json.loads(result.output)["tracing"]
    assert data == {
        "enabled": True,
        "endpoint": "https://u@otel.example:4318/v1/traces",
        "sample_ratio": 0.5,
        "capture_content": True,
    }
    assert "hunter2" not in result.output
