"""aigw/dialects/messages.py, the client side: a Messages client, a chat target.

Every object and event it writes is validated with the `anthropic` SDK's own pydantic types, and
end to end the real SDK client (`AsyncAnthropic`) reads it from a tiny aiohttp app on 127.0.0.1
made of these functions over canned chat answers. The mock provider's native Messages answers
are checked the same way."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
from aiohttp import web
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from aigw import errors, sse
from aigw.config import MockOptions, ProviderConfig
from aigw.dialects import messages
from aigw.errors import (
    GatewayError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    UpstreamStatusError,
)
from aigw.exchange import Usage
from aigw.providers.mock import MockProvider

EVENT = TypeAdapter(RawMessageStreamEvent)
PNG = "iVBORw0KGgo="  # base64 of a PNG signature: enough for a shape test


def request(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    body.update(fields)
    return body


def chat_answer(
    content: str | None = "Hi there.",
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str = "stop",
    usage: dict[str, Any] | None = None,
    **message_fields: Any,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, **message_fields}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage or {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
    }


def call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-model",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
        **extra,
    }


def usage_chunk(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-model",
        "choices": [],
        "usage": usage,
    }


USAGE = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}


def text_chunks(*pieces: str, finish: str = "stop") -> list[dict[str, Any]]:
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": p}) for p in pieces),
        chunk({}, finish),
        usage_chunk(USAGE),
    ]


def tool_chunks() -> list[dict[str, Any]]:
    """Two parallel tool calls, streamed as OpenAI does: id and name first, then arguments."""
    return [
        chunk({"role": "assistant", "content": "Checking."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "time", "arguments": '{"tz": "CET"}'},
                    }
                ]
            }
        ),
        chunk({}, "tool_calls"),
        usage_chunk(USAGE),
    ]


def events_of(raw: bytes) -> list[dict[str, Any]]:
    """Every event of a Messages stream, checked: its `event:` name is its `type`, and the SDK's
    own types accept it."""
    out = []
    for event in sse.events(raw):
        data = json.loads(event.data)
        assert event.event == data["type"]
        if data["type"] not in ("ping", "error"):
            EVENT.validate_python(data)
        out.append(data)
    return out


def run_stream(
    body: dict[str, Any], chunks: list[dict[str, Any]], usage: Usage | None = None
) -> bytes:
    stream = messages.StreamFromChat(body, message_id="msg_1")
    return stream.start() + b"".join(stream.feed(c) for c in chunks) + stream.finish(usage)


# --- to_chat ---------------------------------------------------------------------------------


def test_text_and_system_string() -> None:
    chat = messages.to_chat(request(system="Be brief.", temperature=0.3, top_p=0.9))
    assert chat == {
        "model": "claude-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ],
        "max_completion_tokens": 256,
        "temperature": 0.3,
        "top_p": 0.9,
    }


def test_system_blocks_are_joined_and_cache_control_dropped() -> None:
    system = [
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "Be careful.", "cache_control": {"type": "ephemeral"}},
    ]
    user = [
        {"type": "text", "text": "<reminder>"},
        {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}},
    ]
    chat = messages.to_chat(request(system=system, messages=[{"role": "user", "content": user}]))
    assert chat["messages"] == [
        {"role": "system", "content": "You are Claude Code.\nBe careful."},
        {"role": "user", "content": "<reminder>\nHi"},
    ]


def test_images_base64_and_url() -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    chat = messages.to_chat(request(messages=[{"role": "user", "content": content}]))
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


def test_documents_base64_and_text() -> None:
    content = [
        {
            "type": "document",
            "title": "r.pdf",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        },
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
        },
    ]
    chat = messages.to_chat(request(messages=[{"role": "user", "content": content}]))
    assert chat["messages"][0]["content"] == [
        {
            "type": "file",
            "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "r.pdf"},
        },
        {"type": "text", "text": "notes"},
    ]


def test_tool_use_and_results_keep_their_order_then_the_users_text() -> None:
    body = request(
        tools=[
            {
                "name": "weather",
                "description": "Weather of a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
            {"name": "time", "input_schema": {"type": "object", "properties": {}}, "strict": True},
        ],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Two tools.", "signature": "c2lnbmF0dXJl"},
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    },
                    {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [{"type": "text", "text": "clock unavailable"}],
                    },
                    {"type": "text", "text": "Thanks!"},
                ],
            },
        ],
    )
    chat = messages.to_chat(body)
    assert chat["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",  # the thinking block is dropped
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny, 21 C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: clock unavailable"},
        {"role": "user", "content": "Thanks!"},
    ]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "time",
                "parameters": {"type": "object", "properties": {}},
                "strict": True,
            },
        },
    ]
    assert chat["tool_choice"] == "auto"
    assert chat["parallel_tool_calls"] is False


def test_images_of_a_tool_result_follow_the_tool_messages() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    body = request(
        messages=[
            {"role": "user", "content": "Screenshot please"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "done"}, image],
                    },
                    {"type": "text", "text": "What do you see?"},
                ],
            },
        ]
    )
    chat = messages.to_chat(body)
    assert chat["messages"][2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "done"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "text", "text": "What do you see?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "weather"},
            {"type": "function", "function": {"name": "weather"}},
        ),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: object) -> None:
    tools = [{"name": "weather", "input_schema": {"type": "object"}}]
    chat = messages.to_chat(request(tools=tools, tool_choice=choice))
    assert chat["tool_choice"] == expected
    assert "parallel_tool_calls" not in chat


def test_sampling_stop_metadata_stream_and_what_is_dropped() -> None:
    chat = messages.to_chat(
        request(
            stop_sequences=["END", "STOP"],
            top_k=40,  # no chat equivalent: dropped
            thinking={"type": "enabled", "budget_tokens": 1024},  # dropped
            metadata={"user_id": "u-123"},
            service_tier="auto",
            stream=True,
        )
    )
    assert chat == {
        "model": "claude-test",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_completion_tokens": 256,
        "stop": ["END", "STOP"],
        "user": "u-123",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_structured_output_format() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    expected = {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }
    chat = messages.to_chat(
        request(output_config={"format": {"type": "json_schema", "schema": schema}})
    )
    assert chat["response_format"] == expected
    chat = messages.to_chat(request(output_format={"type": "json_schema", "schema": schema}))
    assert chat["response_format"] == expected


def test_count_tokens_needs_no_max_tokens() -> None:
    body = request()
    del body["max_tokens"]
    chat = messages.count_tokens_to_chat({**body, "stream": True})
    assert chat == {"model": "claude-test", "messages": [{"role": "user", "content": "Hello"}]}
    with pytest.raises(InvalidRequestError) as info:
        messages.to_chat(body)
    assert info.value.param == "max_tokens"


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"model": ""}, "model"),
    ({"messages": []}, "messages"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    (
        {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
        "messages[0].content[0].type",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "file", "file_id": "f1"}}],
                }
            ]
        },
        "messages[0].content[0].source.type",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}
                    ],
                }
            ]
        },
        "messages[0].content[0].source.type",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [{"type": "search_result"}],
                        }
                    ],
                }
            ]
        },
        "messages[0].content[0].content[0].type",
    ),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": [
                        {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}
                    ],
                }
            ]
        },
        "messages[0].content[0].type",
    ),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "t", "name": "x", "input": "not an object"}
                    ],
                }
            ]
        },
        "messages[0].content[0].input",
    ),
    ({"system": [{"type": "image"}]}, "system[0].type"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"name": "x"}]}, "tools[0].input_schema"),
    (
        {"tools": [{"name": "x", "input_schema": {}}], "tool_choice": {"type": "maybe"}},
        "tool_choice.type",
    ),
    ({"mcp_servers": [{"type": "url", "url": "https://mcp", "name": "m"}]}, "mcp_servers"),
    ({"container": "container_1"}, "container"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"temperature": "hot"}, "temperature"),
    ({"output_config": {"format": {"type": "regex"}}}, "output_config.format.type"),
]


@pytest.mark.parametrize(("fields", "param"), REFUSED, ids=[p for _, p in REFUSED])
def test_refused_with_the_exact_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        messages.to_chat(request(**fields))
    assert info.value.param == param
    assert info.value.status == 400
    assert param.split("[")[0].split(".")[0] in info.value.message


# --- from_chat -------------------------------------------------------------------------------


def test_from_chat_text_with_usage_cached_and_reasoning() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 30,
        "total_tokens": 130,
        "prompt_tokens_details": {"cached_tokens": 60},
        "completion_tokens_details": {"reasoning_tokens": 20},
    }
    out = messages.from_chat(chat_answer("Hi there.", usage=usage), request(), message_id="msg_1")
    message = Message.model_validate(out)
    assert message.id == "msg_1" and message.model == "claude-test"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Hi there."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == 40
    assert message.usage.cache_read_input_tokens == 60
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.output_tokens == 30
    assert message.usage.output_tokens_details is not None
    assert message.usage.output_tokens_details.thinking_tokens == 20
    assert messages.usage(out["usage"]) == Usage(100, 30, 130, 60, 0, 20)


def test_from_chat_parallel_tool_calls() -> None:
    answer = chat_answer(
        None,
        tool_calls=[call("call_a", "weather", {"city": "Paris"}), call("call_b", "time", {})],
        finish="tool_calls",
    )
    message = Message.model_validate(messages.from_chat(answer, request(), message_id="msg_1"))
    assert message.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in message.content] == [  # type: ignore[union-attr]
        ("tool_use", "call_a", "weather", {"city": "Paris"}),
        ("tool_use", "call_b", "time", {}),
    ]


def test_from_chat_tool_call_finished_with_stop_and_bad_arguments() -> None:
    # Ollama finishes a tool call with "stop"; a small model may write broken JSON.
    bad = {"id": "", "type": "function", "function": {"name": "x", "arguments": "{oops"}}
    answer = chat_answer("", tool_calls=[bad], finish="stop")
    out = messages.from_chat(answer, request(), message_id="msg_9")
    assert out["stop_reason"] == "tool_use"
    assert out["content"] == [{"type": "tool_use", "id": "toolu_msg_9_0", "name": "x", "input": {}}]
    Message.model_validate(out)


@pytest.mark.parametrize(
    ("finish", "extra", "stop_reason", "stop_sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("length", {}, "max_tokens", None),
        ("content_filter", {}, "refusal", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),  # vLLM names the stop it hit
        ("stop", {"stop_reason": "other"}, "end_turn", None),
        ("stop", {"stop_reason": 128001}, "end_turn", None),  # vLLM: an EOS token id
    ],
)
def test_from_chat_stop_reasons(
    finish: str, extra: dict[str, Any], stop_reason: str, stop_sequence: str | None
) -> None:
    answer = chat_answer("x", finish=finish)
    answer["choices"][0].update(extra)
    out = messages.from_chat(answer, request(stop_sequences=["END"]), message_id="m")
    assert (out["stop_reason"], out["stop_sequence"]) == (stop_reason, stop_sequence)
    Message.model_validate(out)


def test_from_chat_reasoning_only_when_thinking_was_asked() -> None:
    answer = chat_answer("42.", reasoning_content="Six times seven.")
    plain = messages.from_chat(answer, request(), message_id="m")
    assert [b["type"] for b in plain["content"]] == ["text"]
    thinking = request(thinking={"type": "enabled", "budget_tokens": 2048})
    out = messages.from_chat(answer, thinking, message_id="m")
    assert out["content"] == [
        {"type": "thinking", "thinking": "Six times seven.", "signature": ""},
        {"type": "text", "text": "42."},
    ]
    Message.model_validate(out)
    # vLLM's newer field name
    answer = chat_answer("42.", reasoning="Six times seven.")
    assert messages.from_chat(answer, thinking, message_id="m")["content"][0]["type"] == "thinking"


def test_from_chat_refusal() -> None:
    answer = chat_answer(None, refusal="I can't help with that.")
    out = messages.from_chat(answer, request(), message_id="m")
    assert out["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert out["stop_reason"] == "refusal"
    Message.model_validate(out)


# --- StreamFromChat ------------------------------------------------------------------------


def test_stream_text_event_by_event() -> None:
    events = events_of(run_stream(request(), text_chunks("Hel", "lo", "!")))
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["id"] == "msg_1"
    assert events[0]["message"]["model"] == "claude-test"
    assert [e["delta"]["text"] for e in events[3:6]] == ["Hel", "lo", "!"]
    assert events[7]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[7]["usage"] == {
        "input_tokens": 10,
        "output_tokens": 4,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_stream_usage_on_the_finish_chunk_or_given_to_finish() -> None:
    chunks = [chunk({"content": "a"}), chunk({}, "length", usage=USAGE)]
    events = events_of(run_stream(request(), chunks))
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"
    assert events[-2]["usage"]["output_tokens"] == 4
    # the usage the gateway read wins; none at all is zeros
    events = events_of(run_stream(request(), chunks, Usage(50, 7, 57, 20, 5, 0)))
    assert events[-2]["usage"] == {
        "input_tokens": 25,
        "output_tokens": 7,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 20,
    }
    events = events_of(run_stream(request(), [chunk({"content": "a"}), chunk({}, "stop")]))
    assert events[-2]["usage"]["output_tokens"] == 0


def test_stream_parallel_tool_calls() -> None:
    events = events_of(run_stream(request(), tool_chunks()))
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [s["content_block"] for s in starts] == [
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}},
        {"type": "tool_use", "id": "call_b", "name": "time", "input": {}},
    ]
    deltas = [(e["index"], e["delta"]) for e in events if e["type"] == "content_block_delta"]
    assert deltas == [
        (0, {"type": "text_delta", "text": "Checking."}),
        (1, {"type": "input_json_delta", "partial_json": '{"city": '}),
        (1, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
        (2, {"type": "input_json_delta", "partial_json": '{"tz": "CET"}'}),
    ]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert stops == [0, 1, 2]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_stream_thinking_then_text() -> None:
    chunks = [
        chunk({"role": "assistant", "reasoning_content": "Let me "}),
        chunk({"reasoning_content": "think."}),
        chunk({"content": "Done."}),
        chunk({}, "stop", usage=USAGE),
    ]
    body = request(thinking={"type": "enabled", "budget_tokens": 1024})
    events = events_of(run_stream(body, chunks))
    assert [(e["type"], e.get("index")) for e in events if "index" in e] == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
    ]
    assert events[2]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[3]["delta"] == {"type": "thinking_delta", "thinking": "Let me "}
    # without thinking asked, the reasoning is left out
    events = events_of(run_stream(request(), chunks))
    assert [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"] == [
        "text"
    ]


def test_stream_fail_is_an_error_event() -> None:
    stream = messages.StreamFromChat(request(), message_id="m")
    raw = (
        stream.start() + stream.feed(chunk({"content": "par"})) + stream.fail(UpstreamError("cut"))
    )
    events = events_of(raw)
    assert events[-1] == {"type": "error", "error": {"type": "api_error", "message": "cut"}}


# --- errors ----------------------------------------------------------------------------------


# Every class of aigw/errors.py a client can see, built with its simplest arguments.
def _all_errors() -> list[GatewayError]:
    out: list[GatewayError] = []
    for cls in _subclasses(GatewayError):
        if cls is errors.UpstreamStatusError:
            continue
        try:
            out.append(cls("boom"))
        except TypeError:
            try:
                out.append(cls("boom", 1.0))  # type: ignore[call-arg]
            except TypeError:
                out.append(cls("some-name"))  # type: ignore[call-arg]
    return out


def _subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found


EXPECTED_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    417: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@pytest.mark.parametrize("err", _all_errors(), ids=lambda e: type(e).__name__)
def test_every_gateway_error_in_anthropics_shape(err: GatewayError) -> None:
    body = json.loads(messages.error_body(err))
    assert body == {
        "type": "error",
        "error": {"type": EXPECTED_TYPES[err.status], "message": err.message},
    }
    event = list(sse.events(messages.error_event(err)))
    assert [e.event for e in event] == ["error"]
    assert json.loads(event[0].data) == body


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 429, 500, 503, 504, 529])
def test_upstream_errors_mapped_by_status_or_passed_through(status: int) -> None:
    openai_shaped = json.dumps({"error": {"message": "nope", "type": "x", "code": None}}).encode()
    err = UpstreamStatusError(status, openai_shaped)
    assert json.loads(messages.error_body(err)) == {
        "type": "error",
        "error": {"type": EXPECTED_TYPES[status], "message": "nope"},
    }
    native = json.dumps(
        {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "request_id": "req_1",
        }
    ).encode()
    err = UpstreamStatusError(status, native)
    assert messages.error_body(err) == native  # byte for byte
    (event,) = sse.events(messages.error_event(err))
    assert json.loads(event.data)["error"] == {
        "type": "overloaded_error",
        "message": "Overloaded",
    }
    assert json.loads(messages.error_to_chat(native) or b"") == {
        "error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": None}
    }
    assert messages.error_to_chat(openai_shaped) is None


def test_usage_reads_anthropic_accounting() -> None:
    data = {
        "input_tokens": 5,
        "output_tokens": 9,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "output_tokens_details": {"thinking_tokens": 4},
    }
    assert messages.usage(data) == Usage(125, 9, 134, 100, 20, 4)
    assert messages.usage({"input_tokens": -1, "output_tokens": 1}) is None
    assert messages.usage({"input_tokens": "x"}) is None
    assert messages.usage(None) is None
    assert messages.usage_json(Usage(125, 9, 134, 100, 20, 4)) == data


# --- end to end: the anthropic SDK against a Messages app made of these functions -----------


class MessagesApp:
    """`POST /v1/messages` and `/v1/messages/count_tokens` built from the client-side functions
    over a canned chat upstream (`answer` for whole answers, `chunks` for streams)."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] = chat_answer()
        self.chunks: list[dict[str, Any]] = text_chunks("Hi", " there.")
        self.error: GatewayError | None = None
        self.fail_after: int | None = None  # chunks sent before the stream fails
        self.chat_requests: list[dict[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> MessagesApp:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    def _error(err: GatewayError) -> web.Response:
        headers = {**err.headers, "Content-Type": "application/json"}
        return web.Response(status=err.status, body=messages.error_body(err), headers=headers)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        try:
            if self.error is not None:
                raise self.error
            chat = messages.to_chat(body)
        except GatewayError as err:
            return self._error(err)
        self.chat_requests.append(chat)
        if not body.get("stream"):
            out = messages.from_chat(self.answer, body, message_id="msg_e2e")
            return web.json_response(out)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        stream = messages.StreamFromChat(body, message_id="msg_e2e")
        await resp.write(stream.start())
        for i, piece in enumerate(self.chunks):
            if i == self.fail_after:
                err = UpstreamStatusError(
                    529,
                    b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
                )
                await resp.write(stream.fail(err))
                return resp
            out = stream.feed(piece)
            if out:
                await resp.write(out)
        await resp.write(stream.finish(None))
        return resp

    async def count_tokens(self, request: web.Request) -> web.Response:
        try:
            chat = messages.count_tokens_to_chat(json.loads(await request.read()))
        except GatewayError as err:
            return self._error(err)
        words = sum(len(str(m.get("content") or "").split()) for m in chat["messages"])
        return web.json_response({"input_tokens": words})


@pytest.fixture
async def app() -> AsyncIterator[MessagesApp]:
    server = await MessagesApp().start()
    yield server
    await server.stop()


@pytest.fixture
async def client(app: MessagesApp) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{app.port}", api_key="tenant-key", max_retries=0
    )
    yield sdk
    await sdk.close()


async def test_sdk_create_text_with_system(
    app: MessagesApp, client: anthropic.AsyncAnthropic
) -> None:
    message = await client.messages.create(
        model="claude-test",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.content[0].type == "text" and message.content[0].text == "Hi there."
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 4)
    assert app.chat_requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_sdk_stream_text_and_usage(
    app: MessagesApp, client: anthropic.AsyncAnthropic
) -> None:
    app.chunks = text_chunks("Hi", " there", ".")
    app.chunks[-1] = usage_chunk(
        {
            "prompt_tokens": 30,
            "completion_tokens": 3,
            "total_tokens": 33,
            "prompt_tokens_details": {"cached_tokens": 20},
        }
    )
    async with client.messages.stream(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        texts = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == ["Hi", " there", "."]
    assert final.content[0].text == "Hi there."  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 10 and final.usage.cache_read_input_tokens == 20
    assert final.usage.output_tokens == 3
    assert app.chat_requests[0]["stream_options"] == {"include_usage": True}


async def test_sdk_tool_use_round_trip(app: MessagesApp, client: anthropic.AsyncAnthropic) -> None:
    tools: list[Any] = [
        {
            "name": "weather",
            "description": "Weather of a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "time", "input_schema": {"type": "object", "properties": {}}},
    ]
    app.chunks = tool_chunks()
    history: list[Any] = [{"role": "user", "content": "Weather and time in Paris?"}]
    async with client.messages.stream(
        model="claude-test", max_tokens=100, tools=tools, messages=history
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [
        ("call_a", "weather", {"city": "Paris"}),
        ("call_b", "time", {"tz": "CET"}),
    ]
    # the client answers both calls; the chat upstream sees tool messages in order
    history += [
        final.to_param(),
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "Sunny"},
                {"type": "tool_result", "tool_use_id": "call_b", "content": "10:00"},
            ],
        },
    ]
    app.answer = chat_answer("Sunny, 10:00 in Paris.")
    message = await client.messages.create(
        model="claude-test", max_tokens=100, tools=tools, messages=history
    )
    assert message.content[0].text == "Sunny, 10:00 in Paris."  # type: ignore[union-attr]
    sent = app.chat_requests[1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert sent[1]["tool_calls"][0]["function"] == {
        "name": "weather",
        "arguments": '{"city":"Paris"}',
    }
    assert [(m["tool_call_id"], m["content"]) for m in sent[2:]] == [
        ("call_a", "Sunny"),
        ("call_b", "10:00"),
    ]
    # the same turn answered whole
    app.answer = chat_answer(None, tool_calls=[call("call_c", "time", {})], finish="tool_calls")
    message = await client.messages.create(
        model="claude-test", max_tokens=100, tools=tools, messages=history[:1]
    )
    assert message.stop_reason == "tool_use" and message.content[0].type == "tool_use"


async def test_sdk_image_input(app: MessagesApp, client: anthropic.AsyncAnthropic) -> None:
    await client.messages.create(
        model="claude-test",
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.png"},
                    },
                    {"type": "text", "text": "Describe"},
                ],
            }
        ],
    )
    parts = app.chat_requests[0]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[0]["image_url"]["url"] == f"data:image/png;base64,{PNG}"


async def test_sdk_stop_reasons(app: MessagesApp, client: anthropic.AsyncAnthropic) -> None:
    app.answer = chat_answer("cut", finish="length")
    message = await client.messages.create(
        model="claude-test", max_tokens=1, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.stop_reason == "max_tokens"
    app.answer = chat_answer("one two")
    app.answer["choices"][0]["stop_reason"] = "THREE"
    message = await client.messages.create(
        model="claude-test",
        max_tokens=9,
        stop_sequences=["THREE"],
        messages=[{"role": "user", "content": "Count"}],
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "THREE")
    assert app.chat_requests[-1]["stop"] == ["THREE"]
    app.chunks = text_chunks("a", finish="length")
    async with client.messages.stream(
        model="claude-test", max_tokens=1, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "max_tokens"


async def test_sdk_thinking(app: MessagesApp, client: anthropic.AsyncAnthropic) -> None:
    app.chunks = [
        chunk({"role": "assistant", "content": None, "reasoning_content": "Six "}),
        chunk({"reasoning_content": "times seven."}),
        chunk({"content": "42"}),
        chunk({}, "stop"),
        usage_chunk(
            {
                "prompt_tokens": 5,
                "completion_tokens": 9,
                "total_tokens": 14,
                "completion_tokens_details": {"reasoning_tokens": 6},
            }
        ),
    ]
    async with client.messages.stream(
        model="claude-test",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "6*7?"}],
    ) as stream:
        kinds = [e.type async for e in stream]
        final = await stream.get_final_message()
    assert "thinking" in kinds and "text" in kinds
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == "Six times seven."
    assert final.content[0].signature == ""
    assert final.content[1].type == "text" and final.content[1].text == "42"
    assert final.usage.output_tokens_details is not None
    assert final.usage.output_tokens_details.thinking_tokens == 6
    # sent back in the next turn, the unsigned thinking block is dropped for the chat upstream
    app.answer = chat_answer("ok")
    await client.messages.create(
        model="claude-test",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[
            {"role": "user", "content": "6*7?"},
            final.to_param(),
            {"role": "user", "content": "Sure?"},
        ],
    )
    assert app.chat_requests[-1]["messages"][1] == {"role": "assistant", "content": "42"}


async def test_sdk_errors_in_anthropics_shape(
    app: MessagesApp, client: anthropic.AsyncAnthropic
) -> None:
    app.error = RateLimitError("Too many requests for tenant t", 3.0)
    with pytest.raises(anthropic.RateLimitError) as limited:
        await client.messages.create(
            model="claude-test", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
        )
    assert limited.value.type == "rate_limit_error"
    assert limited.value.api_message == "Too many requests for tenant t"
    assert limited.value.response.headers["retry-after"] == "3"
    app.error = None
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(
            model="claude-test",
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                }
            ],
        )
    assert bad.value.type == "invalid_request_error"
    assert "messages[0].content[0].source.type" in (bad.value.api_message or "")
    # a failure after the first byte is an `event: error` the SDK raises
    app.fail_after = 2
    with pytest.raises(anthropic.APIStatusError) as failed:
        async with client.messages.stream(
            model="claude-test", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            async for _ in stream:
                pass
    assert failed.value.type == "overloaded_error"


async def test_sdk_count_tokens(app: MessagesApp, client: anthropic.AsyncAnthropic) -> None:
    counted = await client.messages.count_tokens(
        model="claude-test",
        system="Be brief now.",
        messages=[{"role": "user", "content": "one two three"}],
    )
    assert counted.input_tokens == 6


# --- the mock provider answers Messages natively ---------------------------------------------


def mock(**options: Any) -> MockProvider:
    return MockProvider(ProviderConfig(name="m", type="mock", mock=MockOptions(**options)))


async def test_mock_answers_messages_whole_and_streamed() -> None:
    provider = mock(answer="alpha beta gamma")
    body = request(system="sys", max_tokens=2)
    resp = await provider.send("messages", json.dumps(body).encode(), stream=False, timeout=5)
    message = Message.model_validate_json(await resp.read())
    assert resp.status == 200 and resp.headers["content-type"] == "application/json"
    assert message.content[0].text == "alpha beta"  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 2)
    resp = await provider.send(
        "messages?beta=true", json.dumps({**body, "stream": True}).encode(), stream=True, timeout=5
    )
    raw = b"".join([c async for c in resp.iter_chunks()])
    events = events_of(raw)
    assert (
        "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
        == "alpha beta"
    )
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"
    assert events[-2]["usage"]["output_tokens"] == 2


async def test_mock_counts_tokens_and_refuses_in_anthropics_shape() -> None:
    provider = mock()
    body = {"model": "m", "system": "a b", "messages": [{"role": "user", "content": "c d e"}]}
    resp = await provider.send(
        "messages/count_tokens", json.dumps(body).encode(), stream=False, timeout=5
    )
    assert json.loads(await resp.read()) == {"input_tokens": 5}
    resp = await provider.send("messages", json.dumps(body).encode(), stream=False, timeout=5)
    assert resp.status == 400
    assert json.loads(await resp.read()) == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "max_tokens: a maximum number of tokens is required",
        },
    }


async def test_sdk_reads_the_mock() -> None:
    """The SDK against a pass-through app in front of the mock's native Messages answers."""
    provider = mock(answer="one two three")

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        stream = bool(json.loads(body).get("stream"))
        upstream = await provider.send("messages", body, stream=stream, timeout=5)
        resp = web.StreamResponse(status=upstream.status, headers=dict(upstream.headers))
        await resp.prepare(request)
        async for piece in upstream.iter_chunks():
            await resp.write(piece)
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
        base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", api_key="k", max_retries=0
    )
    try:
        message = await client.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].text == "one two three"  # type: ignore[union-attr]
        async with client.messages.stream(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            assert await stream.get_final_text() == "one two three"
    finally:
        await client.close()
        await runner.cleanup()
