"""`type: anthropic`: the provider against a real Messages-speaking upstream on 127.0.0.1 that
checks Anthropic's headers (tests/anthropic_upstream.py), natively and through the provider side
of aigw/dialects/messages.py (a chat request to a Messages-only target); the anthropic SDK end to
end through it; and the config rules of the type."""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from aigw import sse
from aigw.config import ProviderConfig, Secret, parse_config
from aigw.dialects import messages
from aigw.errors import ConfigError, InvalidRequestError, UpstreamError, UpstreamStatusError
from aigw.exchange import Usage
from aigw.headers import client_headers
from aigw.providers import build_provider
from aigw.providers.anthropic import DEFAULT_BASE_URL, AnthropicProvider
from tests.anthropic_upstream import (
    ANSWER_HEADERS,
    KEY,
    AnthropicUpstream,
    Reply,
    events_of,
    sse_bytes,
    text_message,
)

#: A thinking block as Claude signs it; non-ASCII text and an escaped slash, so any
#: re-serialisation on the way would show in the bytes.
THINKING = {
    "type": "thinking",
    "thinking": "L'été: 6\u00d77 \u2192 42 \\/ done",
    "signature": "EqQBCkYIBxgCKkBx/+9mC0J4Xn1Z2k+sig==",
}
#: The answer as Anthropic writes it (spaces after separators, `\u` escapes).
THINKING_ANSWER = json.dumps(
    text_message("42", content=[THINKING, {"type": "text", "text": "42"}])
).encode()


def provider_for(upstream: AnthropicUpstream, **fields: Any) -> AnthropicProvider:
    config = ProviderConfig(
        name="claude",
        type="anthropic",
        base_url=fields.pop("base_url", upstream.url),
        api_key=Secret(fields.pop("key", KEY)),
        timeout=5.0,
        connect_timeout=2.0,
        **fields,
    )
    provider = build_provider(config, max_body=1 << 20)
    assert isinstance(provider, AnthropicProvider)
    return provider


@pytest.fixture
async def upstream() -> AsyncIterator[AnthropicUpstream]:
    up = await AnthropicUpstream().start()
    yield up
    await up.stop()


@pytest.fixture
async def provider(upstream: AnthropicUpstream) -> AsyncIterator[AnthropicProvider]:
    p = provider_for(upstream)
    await p.start()
    yield p
    await p.close()


CLIENT_HEADERS = [
    (b"Host", b"gateway"),
    (b"X-Api-Key", b"tenant-key"),
    (b"Authorization", b"Bearer tenant-key"),
    (b"anthropic-version", b"2023-06-01"),
    (b"anthropic-beta", b"interleaved-thinking-2025-05-14,prompt-caching-2024-07-31"),
    (b"User-Agent", b"claude-cli/2.0"),
    (b"X-Stainless-Lang", b"js"),
    (b"Cookie", b"session=1"),
]

BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "Hi"}],
}


# --- native -----------------------------------------------------------------------------------


async def test_native_request_and_answer_pass_untouched(
    upstream: AnthropicUpstream, provider: AnthropicProvider
) -> None:
    upstream.reply = Reply(body=THINKING_ANSWER)
    raw = json.dumps(BODY, indent=1).encode()  # any bytes: they are not re-encoded
    resp = await provider.send(
        "messages", raw, stream=False, timeout=5, client_headers=CLIENT_HEADERS
    )
    body = await resp.read()
    resp.close()
    assert resp.status == 200
    assert upstream.raw == [raw]  # cache_control and all
    assert body == THINKING_ANSWER  # thinking and its signature, byte for byte
    seen = upstream.headers[0]
    assert upstream.paths == ["/v1/messages"]
    assert seen["x-api-key"] == KEY  # the provider's key, never the tenant's
    assert "authorization" not in seen and "cookie" not in seen
    assert seen["anthropic-version"] == "2023-06-01"
    assert seen["anthropic-beta"] == "interleaved-thinking-2025-05-14,prompt-caching-2024-07-31"
    assert seen["user-agent"] == "claude-cli/2.0" and seen["x-stainless-lang"] == "js"
    assert seen["content-type"] == "application/json"
    assert seen["accept"] == "application/json"
    # what the client gets of the answer's headers
    passed = client_headers(resp.headers, {})
    assert passed["x-upstream-request-id"] == ANSWER_HEADERS["request-id"]
    assert passed["anthropic-ratelimit-requests-remaining"] == "49"
    assert passed["anthropic-ratelimit-tokens-reset"] == "2026-01-01T00:00:00Z"
    assert "anthropic-organization-id" not in passed


async def test_the_version_is_the_clients_else_the_default_else_the_configured(
    upstream: AnthropicUpstream,
) -> None:
    raw = json.dumps(BODY).encode()
    for fields, sent, expected in [
        ({}, [(b"Anthropic-Version", b"2099-01-01")], "2099-01-01"),
        ({}, [], "2023-06-01"),
        (
            {"headers": {"anthropic-version": "2024-10-22"}},
            [(b"anthropic-version", b"x")],
            "2024-10-22",
        ),
    ]:
        p = provider_for(upstream, **fields)
        resp = await p.send("messages", raw, stream=False, timeout=5, client_headers=sent)
        await resp.read()
        resp.close()
        await p.close()
        assert resp.status == 200
        assert upstream.headers[-1]["anthropic-version"] == expected


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_base_url_with_or_without_v1(upstream: AnthropicUpstream, suffix: str) -> None:
    p = provider_for(upstream, base_url=upstream.url + suffix)
    resp = await p.send("messages/count_tokens", json.dumps(BODY).encode(), stream=False, timeout=5)
    assert json.loads(await resp.read()) == {"input_tokens": 42}
    await p.close()
    assert upstream.paths == ["/v1/messages/count_tokens"]


async def test_the_beta_query_of_the_sdks_is_kept(upstream: AnthropicUpstream) -> None:
    body = json.dumps(BODY).encode()
    for base_url, expected in [
        (upstream.url, "/v1/messages?beta=true"),
        (upstream.url + "/v1?tenant=a", "/v1/messages?tenant=a&beta=true"),
    ]:
        p = provider_for(upstream, base_url=base_url)
        resp = await p.send("messages?beta=true", body, stream=False, timeout=5)
        await resp.read()
        await p.close()
        assert resp.status == 200 and upstream.paths[-1] == expected


def test_the_default_base_url() -> None:
    p = AnthropicProvider(ProviderConfig(name="c", type="anthropic"))
    assert p.base_url == DEFAULT_BASE_URL == "https://api.anthropic.com"


async def test_native_stream_passes_byte_for_byte(
    upstream: AnthropicUpstream, provider: AnthropicProvider
) -> None:
    usage = {
        "input_tokens": 3,
        "output_tokens": 20,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 50,
    }
    message = text_message(content=[THINKING, {"type": "text", "text": "42 it is."}], usage=usage)
    stream = sse_bytes(events_of(message))
    upstream.reply = Reply(body=json.dumps(message).encode(), stream=stream)
    body = json.dumps({**BODY, "stream": True}).encode()
    resp = await provider.send(
        "messages", body, stream=True, timeout=5, client_headers=CLIENT_HEADERS
    )
    got = b"".join([c async for c in resp.iter_chunks()])
    resp.close()
    assert got == stream
    assert upstream.headers[0]["accept"] == "text/event-stream"
    tap = messages.StreamUsage()
    for event in sse.events(got):
        tap.feed(event)
    assert tap.usage == Usage(1053, 20, 1073, 1000, 50, 0)
    tap = messages.StreamUsage()
    for frame in sse.frames(got):
        tap.feed_frame(frame)
    assert tap.usage == Usage(1053, 20, 1073, 1000, 50, 0)


async def test_upstream_errors_keep_status_body_and_retry_after(
    upstream: AnthropicUpstream, provider: AnthropicProvider
) -> None:
    error = b'{"type":"error","error":{"type":"rate_limit_error","message":"Slow down"}}'
    upstream.reply = Reply(status=429, body=error, headers={**ANSWER_HEADERS, "retry-after": "7"})
    resp = await provider.send("messages", json.dumps(BODY).encode(), stream=False, timeout=5)
    raw = await resp.read()
    resp.close()
    assert resp.status == 429 and resp.headers["retry-after"] == "7"
    err = UpstreamStatusError(resp.status, raw, headers={"retry-after": "7"})
    assert messages.error_body(err) == error  # a Messages client gets it as it came
    assert json.loads(messages.error_to_chat(raw) or b"")["error"]["type"] == "rate_limit_error"


async def test_a_wrong_key_is_the_upstreams_401(upstream: AnthropicUpstream) -> None:
    p = provider_for(upstream, key="sk-ant-wrong")
    resp = await p.send("messages", json.dumps(BODY).encode(), stream=False, timeout=5)
    body = json.loads(await resp.read())
    await p.close()
    assert resp.status == 401 and body["error"]["type"] == "authentication_error"


async def test_probe_lists_models_and_fails_on_5xx(
    upstream: AnthropicUpstream, provider: AnthropicProvider
) -> None:
    await provider.probe()
    assert upstream.paths == ["/v1/models"]
    assert upstream.headers[0]["x-api-key"] == KEY
    assert upstream.headers[0]["anthropic-version"] == "2023-06-01"
    upstream.reply = Reply(status=503)
    with pytest.raises(UpstreamError, match="503"):
        await provider.probe()


async def test_only_the_messages_endpoints_and_chat_through_them(
    provider: AnthropicProvider,
) -> None:
    with pytest.raises(UpstreamError, match="Messages API only"):
        await provider.send("embeddings", b"{}", stream=False, timeout=5)
    # chat completions are taken, as a Messages call: a chat body it cannot translate is the
    # client's 400, before anything is sent
    with pytest.raises(InvalidRequestError, match="at least one message"):
        await provider.send("chat/completions", b"{}", stream=False, timeout=5)


# --- provider side: a chat request to a Messages-only target ----------------------------------


def chat(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "Hi"}],
    }
    body.update(fields)
    return body


def test_request_from_chat_text_system_and_sampling() -> None:
    out = messages.request_from_chat(
        chat(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "Hi"},
            ],
            temperature=1.7,
            top_p=0.5,
            stop="END",
            user="u-1",
            seed=7,
            presence_penalty=0.5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert out == {
        "model": "claude-sonnet-4-5",
        "max_tokens": messages.DEFAULT_MAX_TOKENS,
        "system": "Be brief.\nUse French.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "stop_sequences": ["END"],
        "temperature": 1.0,  # Anthropic's range is 0..1
        "top_p": 0.5,
        "metadata": {"user_id": "u-1"},
        "stream": True,
    }
    assert messages.request_from_chat(chat(max_tokens=9))["max_tokens"] == 9
    assert (
        messages.request_from_chat(chat(max_tokens=9, max_completion_tokens=7))["max_tokens"] == 7
    )


def test_request_from_chat_tools_round_trip_in_one_user_turn() -> None:
    out = messages.request_from_chat(
        chat(
            messages=[
                {"role": "user", "content": "Weather and time?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "call.b:1",
                            "type": "function",
                            "function": {"name": "time", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_a", "content": "Sunny"},
                {
                    "role": "tool",
                    "tool_call_id": "call.b:1",
                    "content": [{"type": "text", "text": "10:00"}],
                },
                {"role": "user", "content": "Thanks"},
            ],
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "weather",
                        "description": "Weather",
                        "strict": True,
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                        },
                    },
                },
                {"type": "function", "function": {"name": "time"}},
            ],
            tool_choice="required",
            parallel_tool_calls=False,
        )
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather and time?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_a", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_b_1", "name": "time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "Sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_b_1",
                    "content": [{"type": "text", "text": "10:00"}],
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]
    assert out["tools"] == [
        {
            "name": "weather",
            "description": "Weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    named = chat(
        tools=out and [{"type": "function", "function": {"name": "time"}}],
        tool_choice={"type": "function", "function": {"name": "time"}},
    )
    assert messages.request_from_chat(named)["tool_choice"] == {"type": "tool", "name": "time"}


def test_request_from_chat_images_files_cache_control_and_thinking_blocks() -> None:
    out = messages.request_from_chat(
        chat(
            messages=[
                {
                    "role": "system",
                    "content": [
                        {
                            "type": "text",
                            "text": "Long rules",
                            "cache_control": {"type": "ephemeral"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                        },
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/a.jpg", "detail": "high"},
                        },
                        {
                            "type": "file",
                            "file": {
                                "file_data": "data:application/pdf;base64,JVBERi0=",
                                "filename": "a.pdf",
                            },
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": "Seen.",
                    "reasoning_content": "hmm",
                    "thinking_blocks": [THINKING],
                },
                {"role": "user", "content": "More"},
            ],
            thinking={"type": "enabled", "budget_tokens": 1024},
            top_k=5,
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "x",
                    "schema": {"type": "object", "additionalProperties": False},
                },
            },
        )
    )
    assert out["system"] == [
        {"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}}
    ]
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Look"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        },
    ]
    assert out["messages"][1]["content"] == [THINKING, {"type": "text", "text": "Seen."}]
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 1024} and out["top_k"] == 5
    assert out["output_config"] == {
        "format": {
            "type": "json_schema",
            "schema": {"type": "object", "additionalProperties": False},
        }
    }


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"messages": []}, "messages"),
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"modalities": ["text", "audio"]}, "audio"),
    ({"response_format": {"type": "json_object"}}, "response_format.type"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "response_format.json_schema.schema",
    ),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    (
        {"tools": [{"type": "function", "function": {"name": "x"}}], "tool_choice": "sometimes"},
        "tool_choice",
    ),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    (
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        "messages[0].content[0].type",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                }
            ]
        },
        "messages[0].content[0].image_url.url",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}
            ]
        },
        "messages[0].content[0].file",
    ),
    (
        {
            "messages": [
                {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        },
        "messages[0].content[0].type",
    ),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{bad"},
                        }
                    ],
                }
            ]
        },
        "messages[0].tool_calls[0].function.arguments",
    ),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
]


@pytest.mark.parametrize(("fields", "param"), REFUSED, ids=[p for _, p in REFUSED])
def test_request_from_chat_refuses_with_the_exact_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        messages.request_from_chat(chat(**fields))
    assert info.value.param == param


def test_messages_to_chat_and_back_keep_what_both_speak() -> None:
    original = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                    {"type": "text", "text": "And?"},
                ],
            },
        ],
        "tools": [
            {"name": "weather", "description": "Weather", "input_schema": {"type": "object"}}
        ],
        "tool_choice": {"type": "tool", "name": "weather"},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "metadata": {"user_id": "u"},
        "stream": True,
    }
    assert messages.request_from_chat(messages.to_chat(copy.deepcopy(original))) == original


def test_response_to_chat() -> None:
    message = text_message(
        content=[
            THINKING,
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        ],
        stop_reason="tool_use",
        usage={
            "input_tokens": 5,
            "output_tokens": 30,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 20,
            "output_tokens_details": {"thinking_tokens": 12},
        },
    )
    out = messages.response_to_chat(message, created=123)
    parsed = ChatCompletion.model_validate(out)
    assert parsed.id == "msg_01Upstream" and parsed.created == 123
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert out["choices"][0]["message"]["reasoning_content"] == THINKING["thinking"]
    assert out["choices"][0]["message"]["thinking_blocks"] == [THINKING]
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("toolu_1", "weather", {"city": "Paris"})
    ]
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (125, 30)
    assert parsed.usage.prompt_tokens_details.cached_tokens == 100  # type: ignore[union-attr]
    assert parsed.usage.completion_tokens_details.reasoning_tokens == 12  # type: ignore[union-attr]
    for stop, finish in [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ]:
        out = messages.response_to_chat(text_message(stop_reason=stop))
        assert out["choices"][0]["finish_reason"] == finish


def reassemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a chat client makes of the chunks (each checked with the openai SDK's own type)."""
    text = reasoning = ""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    usage = None
    for piece in chunks:
        ChatCompletionChunk.model_validate(piece)
        if piece.get("usage"):
            usage = piece["usage"]
        for choice in piece["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            for c in delta.get("tool_calls") or []:
                slot = calls.setdefault(c["index"], {"id": "", "name": "", "arguments": ""})
                slot["id"] += c.get("id") or ""
                slot["name"] += c.get("function", {}).get("name") or ""
                slot["arguments"] += c.get("function", {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return {"text": text, "reasoning": reasoning, "calls": calls, "finish": finish, "usage": usage}


def test_stream_to_chat() -> None:
    message = text_message(
        content=[
            THINKING,
            {"type": "text", "text": "Checking the weather now."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {"tz": "CET"}},
        ],
        stop_reason="tool_use",
        usage={
            "input_tokens": 5,
            "output_tokens": 30,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 20,
        },
    )
    stream = messages.StreamToChat(created=5)
    chunks = []
    for event in sse.events(sse_bytes(events_of(message, piece=4))):
        chunks.extend(stream.feed(event))
    got = reassemble(chunks)
    assert got["text"] == "Checking the weather now."
    assert got["reasoning"] == THINKING["thinking"]
    assert got["calls"] == {
        0: {"id": "toolu_1", "name": "weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "toolu_2", "name": "time", "arguments": '{"tz": "CET"}'},
    }
    assert got["finish"] == "tool_calls"
    assert got["usage"] == {
        "prompt_tokens": 125,
        "completion_tokens": 30,
        "total_tokens": 155,
        # cache writes travel through the chat form too (for the gateway's cost accounting)
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert Usage.from_json(got["usage"]) == stream.usage
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == []  # the usage-only chunk ends it
    assert all(c["id"] == "msg_01Upstream" and c["created"] == 5 for c in chunks)
    assert stream.usage == Usage(125, 30, 155, 100, 20, 0)


@pytest.mark.parametrize(
    "frame",
    [
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"a\\nb"}}\n\n',
        b'event: content_block_delta\ndata:{"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"a\\nb"}}\n\n',
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
        b'"text":"a\\nb"}}\n\n',
        b': comment\nevent: content_block_delta\nid: 7\ndata: {"type":"content_block_delta",'
        b'"index":0,"delta":{"type":"text_delta","text":"a\\nb"}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,\n'
        b'data: "delta":{"type":"text_delta","text":"a\\nb"}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"a\\nb"}}',
    ],
)
def test_stream_to_chat_reads_raw_frames_of_any_shape(frame: bytes) -> None:
    stream = messages.StreamToChat(created=1)
    (got,) = stream.feed_frame(frame)
    assert got["choices"][0]["delta"] == {"content": "a\nb"}
    assert messages.StreamToChat(created=1).feed(sse.parse(frame)) == [got]
    assert stream.feed_frame(b"event: ping\n\n") == []


def test_stream_to_chat_error_event_raises() -> None:
    stream = messages.StreamToChat()
    stream.feed(
        sse.Event(json.dumps({"type": "message_start", "message": text_message()}).encode())
    )
    assert stream.feed(sse.Event(b'{"type": "ping"}', "ping")) == []
    bad = sse.Event(b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    with pytest.raises(UpstreamError) as info:
        stream.feed(bad)
    assert info.value.code == "overloaded_error" and "Overloaded" in info.value.message
    with pytest.raises(UpstreamError, match="not JSON"):
        stream.feed(sse.Event(b"{oops"))


async def test_chat_request_to_the_anthropic_upstream_whole_and_streamed(
    upstream: AnthropicUpstream, provider: AnthropicProvider
) -> None:
    message = text_message(content=[{"type": "text", "text": "Bonjour, comment ça va ?"}])
    upstream.reply = Reply(body=json.dumps(message).encode())
    body = chat(
        messages=[{"role": "system", "content": "French."}, {"role": "user", "content": "Hi"}]
    )
    request = messages.request_from_chat(body)
    resp = await provider.send("messages", json.dumps(request).encode(), stream=False, timeout=5)
    answer = messages.response_to_chat(json.loads(await resp.read()))
    resp.close()
    assert (
        ChatCompletion.model_validate(answer).choices[0].message.content
        == "Bonjour, comment ça va ?"
    )
    assert upstream.requests[0]["system"] == "French."
    assert upstream.requests[0]["max_tokens"] == messages.DEFAULT_MAX_TOKENS

    request = messages.request_from_chat({**body, "stream": True})
    resp = await provider.send("messages", json.dumps(request).encode(), stream=True, timeout=5)
    framer = sse.Framer()
    stream = messages.StreamToChat()
    chunks: list[dict[str, Any]] = []
    async for piece in resp.iter_chunks():
        for frame in sse.frames(framer.feed(piece)):
            chunks.extend(stream.feed_frame(frame))
    resp.close()
    got = reassemble(chunks)
    assert got["text"] == "Bonjour, comment ça va ?" and got["finish"] == "stop"
    assert got["usage"]["prompt_tokens"] == 12 and got["usage"]["completion_tokens"] == 5


# --- the anthropic SDK end to end, through the provider ---------------------------------------


async def test_sdk_through_the_provider_natively(
    upstream: AnthropicUpstream, provider: AnthropicProvider
) -> None:
    """A pass-through app in front of the provider, as the gateway's native path: the SDK's own
    headers reach the upstream (but not its key), and the signed thinking comes back intact."""
    delivered: list[bytes] = []
    versions: list[str] = []  # the SDK's anthropic-version, as the gateway got it

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        raw_headers = list(request.raw_headers)
        versions.append(request.headers["anthropic-version"])
        stream = bool(json.loads(body).get("stream"))
        answer = await provider.send(
            "messages", body, stream=stream, timeout=5, client_headers=raw_headers
        )
        resp = web.StreamResponse(status=answer.status, headers=client_headers(answer.headers, {}))
        await resp.prepare(request)
        out = b""
        async for piece in answer.iter_chunks():
            out += piece
            await resp.write(piece)
        answer.close()
        delivered.append(out)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    client = anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
        api_key="tenant-key",
        max_retries=0,
        default_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
    )
    upstream.reply = Reply(body=THINKING_ANSWER)
    try:
        raw = await client.messages.with_raw_response.create(
            model="claude-sonnet-4-5",
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "6*7?"}],
        )
        message = await raw.parse()
        assert raw.headers["x-upstream-request-id"] == ANSWER_HEADERS["request-id"]
        assert delivered[0] == THINKING_ANSWER
        thinking = message.content[0]
        assert thinking.type == "thinking"
        assert (thinking.thinking, thinking.signature) == (
            THINKING["thinking"],
            THINKING["signature"],
        )
        async with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[
                {"role": "user", "content": "6*7?"},
                message.to_param(),
                {"role": "user", "content": "Sure?"},
            ],
        ) as stream:
            final = await stream.get_final_message()
        assert final.content[0].type == "thinking"
        assert final.content[0].signature == THINKING["signature"]
        assert delivered[1] == sse_bytes(events_of(json.loads(THINKING_ANSWER)))
        # the thinking block the client sent back reached the upstream with its signature
        assert upstream.requests[1]["messages"][1]["content"][0] == THINKING
    finally:
        await client.close()
        await runner.cleanup()
    assert len(upstream.headers) == len(versions) == 2
    for seen, version in zip(upstream.headers, versions, strict=True):
        assert seen["x-api-key"] == KEY and "authorization" not in seen
        assert seen["anthropic-version"] == version  # the SDK's, not the default
        assert seen["anthropic-beta"] == "interleaved-thinking-2025-05-14"
        assert seen["user-agent"].startswith("AsyncAnthropic/Python")


# --- config -----------------------------------------------------------------------------------


def test_config_type_anthropic() -> None:
    text = (
        "providers:\n"
        "  claude: {type: anthropic, api_key: '${ANTHROPIC_API_KEY}'}\n"
        "models: {sonnet: {targets: [{provider: claude, model: claude-sonnet-4-5}]}}\n"
    )
    config = parse_config(text, "t.yaml", env={"ANTHROPIC_API_KEY": "sk-ant-x"})
    provider = config.providers["claude"]
    assert provider.speaks() == frozenset({"messages"})
    assert provider.base_url == "" and not config.warnings
    built = build_provider(provider, max_body=1024)
    assert isinstance(built, AnthropicProvider) and built.base_url == "https://api.anthropic.com"


def test_config_anthropic_without_a_key_is_warned_about() -> None:
    text = (
        "providers:\n"
        "  claude: {type: anthropic}\n"
        "  local: {type: anthropic, base_url: 'http://127.0.0.1:4000'}\n"  # a proxy: may need none
        "models: {m: {targets: [{provider: claude}, {provider: local}]}}\n"
    )
    warnings = [w.format() for w in parse_config(text, "t.yaml", env={}).warnings]
    assert warnings == [
        "t.yaml:2: providers.claude.api_key: warning: no api_key: api.anthropic.com refuses "
        "requests without one (Hint: api_key: ${ANTHROPIC_API_KEY}, and set the variable in the "
        "environment)"
    ]


def test_config_anthropic_base_url_must_be_http() -> None:
    text = (
        "providers:\n"
        "  claude: {type: anthropic, base_url: 'api.anthropic.com'}\n"
        "models: {m: {targets: [{provider: claude}]}}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.yaml", env={})
    assert [p.format() for p in info.value.problems] == [
        "t.yaml:2: providers.claude.base_url: base_url must be an http:// or https:// URL "
        "with a host"
    ]
