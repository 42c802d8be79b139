"""The OpenAI Responses dialect (aigw/dialects/responses.py): requests to chat, chat answers and
streams back to Responses objects and events, checked against the openai SDK's own types and,
end to end, read by the SDK's real client from a loopback server; and the mock provider
answering `responses` natively."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pydantic
import pytest

from aigw import sse
from aigw.config import MockOptions, ProviderConfig
from aigw.dialects import responses
from aigw.errors import InvalidRequestError, QuotaExceededError, RateLimitError, UpstreamError
from aigw.exchange import Usage
from aigw.jsonutil import dumps
from aigw.providers.mock import MockProvider
from tests.responses_shapes import (
    ResponsesServer,
    Script,
    chat_answer,
    chat_chunks,
    run_stream,
    strict_events,
    strict_response,
)

USAGE = {
    "prompt_tokens": 50,
    "completion_tokens": 20,
    "total_tokens": 70,
    "prompt_tokens_details": {"cached_tokens": 30},
    "completion_tokens_details": {"reasoning_tokens": 8},
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
CHAT_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": WEATHER["parameters"],
        "strict": True,
    },
}
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def translate(**body: Any) -> dict[str, Any]:
    return responses.to_chat({"model": "gpt-test", **body})


def refused(body: dict[str, Any]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        responses.to_chat(body)
    return info.value


# --- requests ------------------------------------------------------------------------------


def test_string_input_with_instructions() -> None:
    chat = translate(instructions="Be brief.", input="Hi there")
    assert chat == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
        ],
    }


def test_roles_and_text_parts() -> None:
    chat = translate(
        input=[
            {"role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
            {"type": "message", "role": "system", "content": "more rules"},
            {"role": "user", "content": [{"type": "input_text", "text": "one part"}]},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "a"},
                    {"type": "input_text", "text": "b"},
                ],
            },
            {"role": "assistant", "content": "earlier answer"},
        ]
    )
    assert chat["messages"] == [
        {"role": "system", "content": "rules"},
        {"role": "system", "content": "more rules"},
        {"role": "user", "content": "one part"},  # a lone text part: plain string
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "earlier answer"},
    ]


def test_images_by_url_and_by_base64_data_url() -> None:
    chat = translate(
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "compare"},
                    {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "low"},
                    {"type": "input_image", "image_url": PNG, "detail": "high"},
                    {"type": "input_image", "image_url": PNG},
                ],
            }
        ]
    )
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}},
        {"type": "image_url", "image_url": {"url": PNG}},
    ]


def test_files_and_audio_map_to_chat_parts() -> None:
    pdf = "data:application/pdf;base64,JVBERi0="
    chat = translate(
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_file", "file_data": pdf, "filename": "a.pdf"},
                    {"type": "input_file", "file_id": "file-123"},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                ],
            }
        ]
    )
    assert chat["messages"][0]["content"] == [
        {"type": "file", "file": {"file_data": pdf, "filename": "a.pdf"}},
        {"type": "file", "file": {"file_id": "file-123"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    ]


def test_an_assistant_turn_with_function_calls_folds_into_one_chat_message() -> None:
    chat = translate(
        input=[
            {"role": "user", "content": "weather in Paris and Rome?"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
            },
            {"type": "function_call", "call_id": "call_a", "name": "get_weather",
             "arguments": '{"city":"Paris"}', "id": "fc_1", "status": "completed"},
            {"type": "reasoning", "id": "rs_2", "summary": []},
            {"type": "function_call", "call_id": "call_b", "name": "get_weather",
             "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
            {"type": "function_call_output", "call_id": "call_b",
             "output": [{"type": "input_text", "text": "21C"}]},
            {"role": "assistant",
             "content": [{"type": "output_text", "text": "Paris 18C, Rome 21C."}]},
        ]
    )  # fmt: skip
    assert chat["messages"] == [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "21C"}]},
        {"role": "assistant", "content": "Paris 18C, Rome 21C."},
    ]  # fmt: skip


def test_text_after_function_calls_joins_their_turn_and_refusals_keep_their_field() -> None:
    chat = translate(
        input=[
            {"role": "user", "content": "q"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "calling f"}]},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
            {"role": "user", "content": "do something bad"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
            {"role": "assistant", "content": []},
        ]
    )
    assert chat["messages"][5] == {"role": "assistant", "content": ""}
    assert chat["messages"][1] == {
        "role": "assistant",
        "content": "calling f",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    assert chat["messages"][4] == {"role": "assistant", "content": None, "refusal": "I can't."}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "name": "get_weather"},
         {"type": "function", "function": {"name": "get_weather"}}),
        ({"type": "allowed_tools", "mode": "required",
          "tools": [{"type": "function", "name": "get_weather"}]},
         {"type": "allowed_tools", "allowed_tools": {
             "mode": "required",
             "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}),
    ],
)  # fmt: skip
def test_tools_and_tool_choice(choice: Any, expected: Any) -> None:
    chat = translate(input="hi", tools=[WEATHER], tool_choice=choice, parallel_tool_calls=False)
    assert chat["tools"] == [CHAT_WEATHER]
    assert chat["tool_choice"] == expected
    assert chat["parallel_tool_calls"] is False


def test_tool_choice_and_parallel_calls_are_not_sent_without_tools() -> None:
    # OpenAI's chat refuses both without tools; they mean nothing there anyway.
    chat = translate(input="hi", tool_choice="auto", parallel_tool_calls=True, tools=[])
    assert "tool_choice" not in chat and "parallel_tool_calls" not in chat and "tools" not in chat


def test_text_format_and_verbosity() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    chat = translate(
        input="hi",
        text={
            "format": {"type": "json_schema", "name": "A", "schema": schema, "strict": True,
                       "description": "an A"},
            "verbosity": "low",
        },
    )  # fmt: skip
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "A", "schema": schema, "description": "an A", "strict": True},
    }
    assert chat["verbosity"] == "low"
    chat = translate(input="hi", text={"format": {"type": "json_object"}})
    assert chat["response_format"] == {"type": "json_object"}
    assert "response_format" not in translate(input="hi", text={"format": {"type": "text"}})


def test_sampling_limits_and_passed_fields() -> None:
    chat = translate(
        input="hi",
        max_output_tokens=300,
        temperature=0.2,
        top_p=0.9,
        user="u-1",
        safety_identifier="s-1",
        prompt_cache_key="k-1",
        service_tier="flex",
        reasoning={"effort": "high", "summary": "auto"},
        metadata={"trace": "t1"},
        store=False,
        background=False,
        truncation="auto",
        include=["reasoning.encrypted_content"],
        max_tool_calls=3,
        stream_options={"include_obfuscation": False},
        n=1,
        seed=7,  # chat knows it: passes through
        top_k=40,  # an upstream's own extension: passes through
    )
    assert chat == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 300,
        "reasoning_effort": "high",
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u-1",
        "safety_identifier": "s-1",
        "prompt_cache_key": "k-1",
        "service_tier": "flex",
        "seed": 7,
        "top_k": 40,
    }


def test_logprobs_include_and_stream() -> None:
    chat = translate(
        input="hi", include=["message.output_text.logprobs"], top_logprobs=2, stream=True
    )
    assert chat["logprobs"] is True and chat["top_logprobs"] == 2
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    chat = translate(input="hi", top_logprobs=3)  # alternatives come with their logprobs
    assert chat["logprobs"] is True and chat["top_logprobs"] == 3
    assert "logprobs" not in translate(input="hi", top_logprobs=0)


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"conversation": {"id": "conv_1"}}, "conversation"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": ["x", {"id": "msg_1"}]}, "input[0]"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"context_management": [{"type": "compaction"}]}, "context_management"),
        ({"tools": [WEATHER, {"type": "web_search"}]}, "tools[1].type"),
        ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "tools[0].type"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "mcp"}]}},
         "tool_choice.tools[0]"),
        ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
        ({"input": [{"type": "custom_tool_call", "call_id": "c"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [
            {"type": "input_image", "file_id": "file-1", "detail": "auto"}]}]},
         "input[0].content[0].file_id"),
        ({"input": [{"role": "user", "content": [
            {"type": "input_file", "file_url": "https://x.test/a.pdf"}]}]},
         "input[0].content[0].file_url"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": [
            {"type": "input_text", "text": "t"}, {"type": "input_image", "image_url": PNG}]}]},
         "input[0].output[1].type"),
        ({"input": [{"role": "system", "content": [{"type": "input_image", "image_url": PNG}]}]},
         "input[0].content[0].type"),
        ({"include": ["reasoning.encrypted_content", "something.new"]}, "include[1]"),
        ({"reasoning": {"mode": "pro"}}, "reasoning.mode"),
        ({"n": 2}, "n"),
        ({"truncation": "sometimes"}, "truncation"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
        ({"max_tokens": 10}, "max_tokens"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)  # fmt: skip
def test_refused_when_translated(patch: dict[str, Any], param: str) -> None:
    err = refused({"model": "gpt-test", "input": "hi", **patch})
    assert err.param == param
    assert err.status == 400 and err.type == "invalid_request_error"
    assert f"'{param}" in err.message  # the message names it too


def test_stateful_refusal_says_it_works_natively() -> None:
    err = refused({"model": "gpt-test", "input": "hi", "previous_response_id": "resp_1"})
    assert "natively" in err.message and "previous_response_id" in err.message
    body = json.loads(err.body())
    assert body["error"]["param"] == "previous_response_id"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": 5, "input": "hi"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": {"role": "user"}}, "input"),
        ({"model": "m", "input": 3}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": [{"type": "reasoning", "summary": []}]}, "input"),
        ({"model": "m", "input": ["hi"]}, "input[0]"),
        ({"model": "m", "input": [{"content": "hi"}]}, "input[0].type"),
        ({"model": "m", "input": [{"type": "message", "content": "hi"}]}, "input[0].role"),
        ({"model": "m", "input": [{"role": "tool", "content": "hi"}]}, "input[0].role"),
        ({"model": "m", "input": [{"role": "user"}]}, "input[0].content"),
        ({"model": "m", "input": [{"role": "user", "content": 1}]}, "input[0].content"),
        ({"model": "m", "input": [{"role": "user", "content": [{"text": "x"}]}]},
         "input[0].content[0].type"),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
         "input[0].content[0].text"),
        ({"model": "m",
          "input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
         "input[0].content[0].type"),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
         "input[0].content[0].image_url"),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
         "input[0].content[0].file_data"),
        ({"model": "m", "input": [{"role": "assistant", "content": [{"type": "input_image"}]}]},
         "input[0].content[0].type"),
        ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]},
         "input[0].call_id"),
        ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]},
         "input[0].output"),
        ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
         "input[0].name"),
        ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f",
                                   "arguments": {"a": 1}}]}, "input[0].arguments"),
        ({"model": "m", "input": [{"type": 7}]}, "input[0].type"),
        ({"model": "m", "input": "hi", "instructions": ["x"]}, "instructions"),
        ({"model": "m", "input": "hi", "tools": {"type": "function"}}, "tools"),
        ({"model": "m", "input": "hi", "tools": [{"name": "f"}]}, "tools[0].type"),
        ({"model": "m", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f",
                                                  "parameters": "x"}]}, "tools[0].parameters"),
        ({"model": "m", "input": "hi", "tools": [WEATHER], "tool_choice": "sometimes"},
         "tool_choice"),
        ({"model": "m", "input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function"}},
         "tool_choice.name"),
        ({"model": "m", "input": "hi", "tools": [WEATHER], "parallel_tool_calls": "yes"},
         "parallel_tool_calls"),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "A"}}},
         "text.format.schema"),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}},
         "text.format.name"),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"model": "m", "input": "hi", "max_output_tokens": "10"}, "max_output_tokens"),
        ({"model": "m", "input": "hi", "stream": "yes"}, "stream"),
        ({"model": "m", "input": "hi", "include": "x"}, "include"),
        ({"model": "m", "input": "hi", "top_logprobs": "2"}, "top_logprobs"),
        ({"model": "m", "input": "hi", "reasoning": "high"}, "reasoning"),
    ],
)  # fmt: skip
def test_malformed_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    assert refused(body).param == param


def test_a_request_that_is_not_an_object() -> None:
    with pytest.raises(InvalidRequestError):
        responses.to_chat([])  # type: ignore[arg-type]


def test_to_chat_never_asks_for_several_choices() -> None:
    assert "n" not in translate(input="hi", n=1)


# --- whole answers -------------------------------------------------------------------------

REQUEST = {
    "model": "gpt-test",
    "instructions": "Be brief.",
    "input": "hi",
    "tools": [WEATHER],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "temperature": 0.3,
    "top_p": 0.8,
    "max_output_tokens": 256,
    "metadata": {"trace": "t1"},
    "text": {"format": {"type": "text"}, "verbosity": "low"},
    "reasoning": {"effort": "low", "summary": "auto"},
    "user": "u-1",
}


def respond(answer: dict[str, Any], request: dict[str, Any] = REQUEST) -> Any:
    return strict_response(
        responses.from_chat(answer, request, response_id="resp_abc", created_at=1700000000)
    )


def test_a_text_answer_echoes_the_request() -> None:
    response = respond(chat_answer(content="Hello!", usage=USAGE))
    assert response.id == "resp_abc" and response.object == "response"
    assert response.created_at == 1700000000
    assert response.status == "completed" and response.error is None
    assert response.incomplete_details is None
    assert response.output_text == "Hello!"
    [message] = response.output
    assert message.type == "message" and message.id == "msg_abc_0"
    assert message.role == "assistant" and message.status == "completed"
    assert response.model == "gpt-test"
    assert response.instructions == "Be brief."
    assert [t.name for t in response.tools] == ["get_weather"]
    assert response.tool_choice == "auto" and response.parallel_tool_calls is True
    assert response.temperature == 0.3 and response.top_p == 0.8
    assert response.max_output_tokens == 256
    assert response.metadata == {"trace": "t1"}
    assert response.text is not None and response.text.verbosity == "low"
    assert response.reasoning is not None and response.reasoning.effort == "low"
    assert response.user == "u-1"
    assert response.model_extra == {"store": False}
    assert response.truncation == "disabled" and response.background is False


def test_defaults_are_echoed_as_openai_does() -> None:
    response = respond(chat_answer(content="x"), {"model": "m", "input": "hi"})
    assert response.temperature == 1.0 and response.top_p == 1.0
    assert response.tool_choice == "auto" and response.tools == []
    assert response.parallel_tool_calls is True and response.metadata == {}
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "text"
    assert response.usage is None  # the chat answer had none


def test_usage_with_cached_and_reasoning_tokens() -> None:
    usage = respond(chat_answer(content="x", usage=USAGE)).usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (50, 20, 70)
    assert usage.input_tokens_details.cached_tokens == 30
    assert usage.output_tokens_details.reasoning_tokens == 8


def test_parallel_tool_calls_become_function_call_items() -> None:
    answer = chat_answer(
        content=None,
        tool_calls=[("call_a", "get_weather", '{"city":"Paris"}'),
                    ("call_b", "get_weather", '{"city":"Rome"}')],
        finish="tool_calls",
    )  # fmt: skip
    response = respond(answer)
    assert response.status == "completed"
    assert [(o.type, o.id, o.call_id, o.name, o.arguments, o.status) for o in response.output] == [
        ("function_call", "fc_abc_0", "call_a", "get_weather", '{"city":"Paris"}', "completed"),
        ("function_call", "fc_abc_1", "call_b", "get_weather", '{"city":"Rome"}', "completed"),
    ]
    assert response.output_text == ""


def test_text_and_tool_calls_together() -> None:
    answer = chat_answer(
        content="Checking.", tool_calls=[("call_a", "f", "{}")], finish="tool_calls"
    )
    assert [o.type for o in respond(answer).output] == ["message", "function_call"]


@pytest.mark.parametrize(
    ("finish", "status", "reason"),
    [
        ("stop", "completed", None),
        ("tool_calls", "completed", None),
        ("length", "incomplete", "max_output_tokens"),
        ("content_filter", "incomplete", "content_filter"),
        (None, "completed", None),
    ],
)
def test_finish_reasons_become_the_status(finish: Any, status: str, reason: str | None) -> None:
    response = respond(chat_answer(content="cut", finish=finish))
    assert response.status == status
    if reason is None:
        assert response.incomplete_details is None
        assert response.output[0].status == "completed"
    else:
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == reason
        assert response.output[0].status == "incomplete"


def test_a_refusal_is_a_refusal_part() -> None:
    response = respond(chat_answer(content=None, refusal="I can't help with that."))
    [message] = response.output
    assert [(p.type, getattr(p, "refusal", None)) for p in message.content] == [
        ("refusal", "I can't help with that.")
    ]


def test_reasoning_content_becomes_a_reasoning_item() -> None:
    response = respond(chat_answer(content="42", reasoning="6 times 7"))
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id == "rs_abc_0"
    assert reasoning.summary == []
    assert [(c.type, c.text) for c in reasoning.content or []] == [("reasoning_text", "6 times 7")]
    assert message.id == "msg_abc_1" and response.output_text == "42"


def test_logprobs_are_carried() -> None:
    probs = [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105],
         "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]},
    ]  # fmt: skip
    response = respond(chat_answer(content="Hi", logprobs=probs))
    part = response.output[0].content[0]
    assert part.logprobs is not None
    assert [(p.token, p.bytes, p.logprob) for p in part.logprobs] == [("Hi", [72, 105], -0.1)]
    assert part.logprobs[0].top_logprobs[0].token == "Hi"


def test_an_empty_answer_still_has_its_message() -> None:
    response = respond({"choices": [{"index": 0, "message": {"role": "assistant", "content": None},
                                     "finish_reason": "stop"}]})  # fmt: skip
    assert [o.type for o in response.output] == ["message"]
    assert response.output_text == ""
    assert respond({}).output_text == ""  # nothing at all: still a well-formed response


def test_a_strange_answer_does_not_crash() -> None:
    answer = {
        "choices": [
            {
                "message": {
                    "content": [{"type": "text", "text": "parts"}],
                    "tool_calls": [None, {"id": "c", "function": None}],
                }
            }
        ]
    }
    response = respond(answer)  # fmt: skip
    assert response.output_text == "parts"
    assert response.output[1].type == "function_call" and response.output[1].call_id == "c"


# --- streams -------------------------------------------------------------------------------

TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def stream_of(answer: dict[str, Any], request: dict[str, Any] = REQUEST, **kw: Any) -> list[Any]:
    return strict_events(run_stream(request, chat_chunks(answer, **kw)))


def test_a_text_stream_is_the_real_event_sequence() -> None:
    events = stream_of(chat_answer(content="Hello there", usage=USAGE))
    assert [e.type for e in events] == TEXT_EVENTS
    created, in_progress = events[0], events[1]
    assert created.response.status == in_progress.response.status == "in_progress"
    assert created.response.output == [] and created.response.usage is None
    assert created.response.instructions == "Be brief."
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == [
        "Hello ",
        "there",
    ]
    assert events[6].text == "Hello there"
    completed = events[-1].response
    assert completed.status == "completed" and completed.output_text == "Hello there"
    assert completed.id == created.response.id == "resp_test"
    assert completed.usage is not None and completed.usage.input_tokens == 50
    assert completed.usage.input_tokens_details.cached_tokens == 30
    assert completed.usage.output_tokens_details.reasoning_tokens == 8


@pytest.mark.parametrize("mode", ["separate", "finish"])
def test_stream_usage_on_its_own_chunk_or_on_the_finish_chunk(mode: str) -> None:
    events = stream_of(chat_answer(content="hi", usage=USAGE), usage=mode)
    usage = events[-1].response.usage
    assert usage is not None and usage.total_tokens == 70


def test_stream_without_usage_and_the_usage_given_to_finish() -> None:
    chunks = chat_chunks(chat_answer(content="hi", usage=USAGE), usage="none")
    events = strict_events(run_stream(REQUEST, chunks))
    assert events[-1].response.usage is None  # the SDK takes a null usage
    given = Usage(prompt_tokens=9, completion_tokens=1, total_tokens=10, cached_tokens=4)
    events = strict_events(run_stream(REQUEST, chunks, finish_usage=given))
    usage = events[-1].response.usage
    assert usage is not None and (usage.input_tokens, usage.total_tokens) == (9, 10)
    assert usage.input_tokens_details.cached_tokens == 4
    # what the caller read wins over the chunks' usage
    chunks = chat_chunks(chat_answer(content="hi", usage=USAGE))
    events = strict_events(run_stream(REQUEST, chunks, finish_usage=given))
    assert events[-1].response.usage.total_tokens == 10


def test_a_stream_of_parallel_tool_calls() -> None:
    answer = chat_answer(
        content=None,
        tool_calls=[("call_a", "get_weather", '{"city":"Paris"}'),
                    ("call_b", "get_weather", '{"city":"Rome"}')],
        finish="tool_calls",
        usage=USAGE,
    )  # fmt: skip
    events = stream_of(answer)
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-1] == "response.completed"
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [(e.output_index, e.item.call_id, e.item.name) for e in added] == [
        (0, "call_a", "get_weather"),
        (1, "call_b", "get_weather"),
    ]
    for index, args in ((0, '{"city":"Paris"}'), (1, '{"city":"Rome"}')):
        deltas = [
            e.delta
            for e in events
            if e.type == "response.function_call_arguments.delta" and e.output_index == index
        ]
        assert "".join(deltas) == args  # fmt: skip
        [done] = [
            e
            for e in events
            if e.type == "response.function_call_arguments.done" and e.output_index == index
        ]
        assert done.arguments == args  # fmt: skip
        [item_done] = [
            e for e in events if e.type == "response.output_item.done" and e.output_index == index
        ]
        assert (item_done.item.arguments, item_done.item.status) == (args, "completed")
    final = events[-1].response
    assert [(o.id, o.call_id) for o in final.output] == [
        ("fc_test_0", "call_a"),
        ("fc_test_1", "call_b"),
    ]
    assert "response.output_text.delta" not in types


def test_interleaved_tool_call_deltas_keep_whole_arguments() -> None:
    base = {"object": "chat.completion.chunk"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "c0", "function": {"name": "f", "arguments": '{"a"'}},
            {"index": 1, "id": "c1", "function": {"name": "g", "arguments": '{"b"'}},
        ]}}]},
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "function": {"arguments": ":2}"}},
            {"index": 0, "function": {"arguments": ":1}"}},
        ]}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]  # fmt: skip
    final = strict_events(run_stream(REQUEST, chunks))[-1].response
    assert [(o.call_id, o.name, o.arguments) for o in final.output] == [
        ("c0", "f", '{"a":1}'),
        ("c1", "g", '{"b":2}'),
    ]


def test_a_tool_call_whose_name_comes_after_its_id() -> None:
    def calls(*deltas: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": list(deltas)}}]}

    chunks = [
        calls({"index": 0, "id": "c0", "type": "function", "function": {"arguments": "{"}}),
        calls({"index": 0, "function": {"name": "f"}}),
        calls({"index": 0, "function": {"arguments": "}"}}),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    events = strict_events(run_stream(REQUEST, chunks))
    [added] = [e for e in events if e.type == "response.output_item.added"]
    assert added.item.name == "f" and added.item.call_id == "c0"
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(deltas) == "{}"
    assert events[-1].response.output[0].arguments == "{}"


def test_text_then_tool_calls_in_one_stream() -> None:
    answer = chat_answer(
        content="Let me check.", tool_calls=[("call_a", "f", "{}")], finish="tool_calls"
    )
    events = stream_of(answer)
    final = events[-1].response
    assert [o.type for o in final.output] == ["message", "function_call"]
    # the message closed before the call opened: items in order, as OpenAI streams them
    kinds = [(e.type, e.output_index) for e in events if e.type.startswith("response.output_item")]
    assert kinds == [
        ("response.output_item.added", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.output_item.done", 1),
    ]


def test_a_stream_cut_by_the_length_limit_ends_incomplete() -> None:
    events = stream_of(chat_answer(content="a b c", finish="length", usage=USAGE))
    assert events[-1].type == "response.incomplete"
    response = events[-1].response
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert response.usage is not None and response.usage.total_tokens == 70
    item_done = [e for e in events if e.type == "response.output_item.done"]
    assert item_done[0].item.status == "incomplete"


def test_a_content_filtered_stream_ends_incomplete() -> None:
    events = stream_of(chat_answer(content="a b", finish="content_filter"))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "content_filter"


def test_a_streamed_refusal() -> None:
    events = stream_of(chat_answer(content=None, refusal="I can't do that."))
    types = [e.type for e in events]
    assert "response.refusal.delta" in types and "response.refusal.done" in types
    [done] = [e for e in events if e.type == "response.refusal.done"]
    assert done.refusal == "I can't do that."
    parts = events[-1].response.output[0].content
    assert [(p.type, p.refusal) for p in parts] == [("refusal", "I can't do that.")]


def test_text_then_refusal_are_two_parts_of_one_message() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "Sure. "}}]},
        {"choices": [{"index": 0, "delta": {"refusal": "Actually, no."}}]},
        {"choices": [{"index": 0, "delta": {"content": "Bye."}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    events = strict_events(run_stream(REQUEST, chunks))
    [message] = events[-1].response.output
    assert [p.type for p in message.content] == ["output_text", "refusal", "output_text"]
    added = [e.content_index for e in events if e.type == "response.content_part.added"]
    assert added == [0, 1, 2]
    assert events[-1].response.output_text == "Sure. Bye."


def test_streamed_reasoning_is_a_reasoning_item_before_the_message() -> None:
    events = stream_of(chat_answer(content="42", reasoning="six times seven"))
    types = [e.type for e in events]
    assert types[2:9] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
    ]
    reasoning, message = events[-1].response.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == "six times seven"
    assert message.type == "message" and events[-1].response.output_text == "42"


def test_streamed_logprobs() -> None:
    probs = [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}]
    events = stream_of(chat_answer(content="Hi", logprobs=probs))
    [delta] = [e for e in events if e.type == "response.output_text.delta"]
    assert [(p.token, p.logprob) for p in delta.logprobs] == [("Hi", -0.5)]
    final_part = events[-1].response.output[0].content[0]
    assert final_part.logprobs[0].bytes == [72, 105]


def test_an_empty_stream_still_has_its_message() -> None:
    events = strict_events(run_stream(REQUEST, []))
    assert [e.type for e in events] == [t for t in TEXT_EVENTS if not t.endswith(".delta")]
    assert events[-1].response.output_text == ""


def test_a_failure_after_the_first_byte() -> None:
    stream = responses.StreamFromChat(REQUEST, response_id="resp_f", created_at=1)
    raw = stream.start()
    raw += stream.feed({"choices": [{"index": 0, "delta": {"content": "partial"}}]})
    raw += stream.fail(UpstreamError("upstream went away"))
    assert stream.feed({"choices": [{"index": 0, "delta": {"content": "x"}}]}) == b""
    assert stream.finish(None) == b"" and stream.fail(UpstreamError("again")) == b""
    events = strict_events(raw)
    assert [e.type for e in events][-2:] == ["response.failed", "error"]
    failed = events[-2].response
    assert failed.status == "failed" and failed.id == "resp_f"
    assert failed.error is not None
    assert (failed.error.code, failed.error.message) == ("server_error", "upstream went away")
    assert failed.output[0].status == "incomplete" and failed.output_text == "partial"
    error = events[-1]
    assert (error.code, error.message) == ("upstream_error", "upstream went away")
    assert error.model_extra["error"]["type"] == "server_error"


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (RateLimitError("slow down", 1.0), "rate_limit_exceeded"),
        (QuotaExceededError("out of quota"), "server_error"),
        (UpstreamError("boom"), "server_error"),
    ],
)
def test_failure_codes_are_openais(err: Any, code: str) -> None:
    stream = responses.StreamFromChat(REQUEST, response_id="resp_f", created_at=1)
    events = strict_events(stream.fail(err))  # before any byte: created comes first
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.failed", "error",
    ]  # fmt: skip
    assert events[2].response.error.code == code
    assert events[3].code == err.code


def test_finish_after_the_finish_reason_only_completes() -> None:
    stream = responses.StreamFromChat(REQUEST, response_id="resp_x", created_at=1)
    raw = stream.start() + stream.feed({"choices": [{"index": 0, "delta": {"content": "a"},
                                                     "finish_reason": "stop"}]})  # fmt: skip
    # chunks after the finish reason: only their usage counts
    raw += stream.feed({"choices": [{"index": 0, "delta": {"content": "ignored"}}], "usage": USAGE})
    raw += stream.finish(None)
    assert stream.finish(None) == b""
    events = strict_events(raw)
    assert events[-1].response.output_text == "a" and events[-1].response.usage.total_tokens == 70


def test_the_last_words_and_the_finish_reason_in_one_chunk() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "a "}}]},
        {"choices": [{"index": 0, "delta": {"content": "b"}, "finish_reason": "length"}]},
        {"choices": [], "usage": USAGE},
    ]
    events = strict_events(run_stream(REQUEST, chunks))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.output_text == "a b"
    assert events[-1].response.usage.total_tokens == 70


def test_other_choices_and_junk_chunks_are_ignored() -> None:
    chunks: list[Any] = [
        {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
        {"choices": None},
        {"choices": ["junk"]},
        {"choices": [{"index": 0, "delta": {"content": "mine", "tool_calls": "junk"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": ["junk"]}]},
    ]
    events = strict_events(run_stream(REQUEST, chunks))
    assert events[-1].response.output_text == "mine"
    response = respond({"choices": [{"message": {"content": "x"}, "finish_reason": ["junk"]}]})
    assert response.status == "completed"


def test_the_hot_path_event_is_what_sse_encode_writes() -> None:
    stream = responses.StreamFromChat(REQUEST, response_id="resp_h", created_at=1)
    stream.start()
    stream.feed({"choices": [{"index": 0, "delta": {"content": "a"}}]})
    raw = stream.feed({"choices": [{"index": 0, "delta": {"content": 'say "hi"\n\u2028'}}]})
    payload = {
        "type": "response.output_text.delta",
        "item_id": "msg_h_0",
        "output_index": 0,
        "content_index": 0,
        "logprobs": [],
        "delta": 'say "hi"\n\u2028',
        "sequence_number": 5,
    }
    assert raw == sse.encode(dumps(payload), event="response.output_text.delta")


# --- usage ---------------------------------------------------------------------------------


def test_usage_reads_a_responses_usage_object() -> None:
    data = {
        "input_tokens": 50,
        "input_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 5},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 8},
        "total_tokens": 70,
    }
    assert responses.usage(data) == Usage(50, 20, 70, 30, 5, 8)
    assert responses.usage({"input_tokens": 3, "output_tokens": 2}) == Usage(3, 2, 5)
    for bad in (None, "x", {"input_tokens": "many"}, {"input_tokens": -1}, [1]):
        assert responses.usage(bad) is None
    event = {"type": "response.completed", "response": {"usage": data}}
    assert responses.usage_of_event(event) == Usage(50, 20, 70, 30, 5, 8)
    assert responses.usage_of_event({"type": "response.output_text.delta"}) is None


def test_usage_round_trips_through_a_response() -> None:
    response = responses.from_chat(chat_answer(content="x", usage=USAGE), REQUEST,
                                   response_id="resp_u", created_at=1)  # fmt: skip
    assert responses.usage(response["usage"]) == Usage.from_json(USAGE)


# --- end to end: the openai SDK's real client ----------------------------------------------


def _echo_script(chat: dict[str, Any]) -> dict[str, Any]:
    """Answers what it was asked, images included (as their URLs), so the test sees that the
    translated chat request carried them; structured output and tools get their shapes."""
    if chat.get("response_format", {}).get("type") == "json_schema":
        return chat_answer(content=json.dumps({"city": "Paris", "celsius": 18}), usage=USAGE)
    if chat.get("tools") and chat["messages"][-1]["role"] == "user":
        return chat_answer(
            content=None,
            tool_calls=[("call_a", "get_weather", '{"city":"Paris"}'),
                        ("call_b", "get_weather", '{"city":"Rome"}')],
            finish="tool_calls",
            usage=USAGE,
        )  # fmt: skip
    last = chat["messages"][-1]
    content = last["content"]
    if isinstance(content, list):
        said = " ".join(
            p["text"] if p["type"] == "text" else f"[image {p['image_url']['url'][:22]}]"
            for p in content
        )
    else:
        said = content or ""
    if last["role"] == "tool":
        said = f"tool said {said}"
    words, finish = f"You said: {said}".split(" "), "stop"
    limit = chat.get("max_completion_tokens")
    if limit is not None and len(words) > limit:
        words, finish = words[:limit], "length"
    return chat_answer(content=" ".join(words), usage=USAGE, finish=finish)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[ResponsesServer]]]:
    servers: list[ResponsesServer] = []

    async def start(script: Script = _echo_script, **options: Any) -> ResponsesServer:
        server = await ResponsesServer(script, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def client_for(server: ResponsesServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url, api_key="k", max_retries=0, timeout=10)


async def test_sdk_create_text(serve: Any) -> None:
    server = await serve()
    async with client_for(server) as client:
        response = await client.responses.create(
            model="gpt-test", instructions="Be brief.", input="hello gateway", temperature=0.5
        )
    assert response.output_text == "You said: hello gateway"
    assert response.status == "completed" and response.temperature == 0.5
    assert response.usage is not None and response.usage.input_tokens_details.cached_tokens == 30
    assert server.chat_bodies[0]["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_sdk_create_parallel_tool_calls_and_their_results(serve: Any) -> None:
    server = await serve()
    async with client_for(server) as client:
        first = await client.responses.create(
            model="gpt-test", input="weather in Paris and Rome?", tools=[WEATHER]
        )
        calls = [o for o in first.output if o.type == "function_call"]
        assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [
            ("call_a", "get_weather", {"city": "Paris"}),
            ("call_b", "get_weather", {"city": "Rome"}),
        ]
        second = await client.responses.create(
            model="gpt-test",
            tools=[WEATHER],
            input=[
                {"role": "user", "content": "weather in Paris and Rome?"},
                *[c.model_dump(exclude_none=True) for c in calls],
                {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
                {"type": "function_call_output", "call_id": "call_b", "output": "21C"},
            ],
        )
    assert second.output_text == "You said: tool said 21C"
    chat = server.chat_bodies[1]
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in chat["messages"][1]["tool_calls"]] == ["call_a", "call_b"]


class Weather(pydantic.BaseModel):
    city: str
    celsius: int


async def test_sdk_parse_structured_output(serve: Any) -> None:
    server = await serve()
    async with client_for(server) as client:
        response = await client.responses.parse(
            model="gpt-test", input="weather as JSON", text_format=Weather
        )
    assert response.output_parsed == Weather(city="Paris", celsius=18)
    chat_format = server.chat_bodies[0]["response_format"]
    assert chat_format["type"] == "json_schema" and chat_format["json_schema"]["strict"] is True
    assert chat_format["json_schema"]["name"] == "Weather"
    assert set(chat_format["json_schema"]["schema"]["properties"]) == {"city", "celsius"}


async def test_sdk_images_reach_the_chat_request(serve: Any) -> None:
    server = await serve()
    async with client_for(server) as client:
        response = await client.responses.create(
            model="gpt-test",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what are these?"},
                        {
                            "type": "input_image",
                            "image_url": "https://x.test/cat.png",
                            "detail": "low",
                        },
                        {"type": "input_image", "image_url": PNG, "detail": "auto"},
                    ],
                }
            ],
        )
    assert response.output_text == (
        "You said: what are these? [image https://x.test/cat.png] [image data:image/png;base64,]"
    )
    parts = server.chat_bodies[0]["messages"][0]["content"]
    assert parts[2] == {"type": "image_url", "image_url": {"url": PNG, "detail": "auto"}}


async def test_sdk_stream_helper_reassembles_text_and_usage(serve: Any) -> None:
    server = await serve()
    types, deltas, numbers = [], [], []
    async with (
        client_for(server) as client,
        client.responses.stream(model="gpt-test", input="one two three") as stream,
    ):
        async for event in stream:
            types.append(event.type)
            numbers.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = await stream.get_final_response()
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert numbers == list(range(len(numbers)))
    assert "".join(deltas) == "You said: one two three" == final.output_text
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (50, 20)
    assert final.usage.output_tokens_details.reasoning_tokens == 8
    assert server.chat_bodies[0]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("usage_mode", ["separate", "finish", "none"])
async def test_sdk_stream_with_parallel_tool_calls(serve: Any, usage_mode: str) -> None:
    server = await serve(usage_mode=usage_mode)
    async with (
        client_for(server) as client,
        client.responses.stream(model="gpt-test", input="weather?", tools=[WEATHER]) as stream,
    ):
        done_args = [e.arguments async for e in stream
                     if e.type == "response.function_call_arguments.done"]  # fmt: skip
        final = await stream.get_final_response()
    assert done_args == ['{"city":"Paris"}', '{"city":"Rome"}']
    calls = [(o.call_id, o.arguments) for o in final.output if o.type == "function_call"]
    assert calls == [("call_a", '{"city":"Paris"}'), ("call_b", '{"city":"Rome"}')]
    if usage_mode == "none":
        assert final.usage is None
    else:
        assert final.usage is not None and final.usage.total_tokens == 70


async def test_sdk_create_stream_true_ends_incomplete_at_the_limit(serve: Any) -> None:
    server = await serve()
    async with client_for(server) as client:
        stream = await client.responses.create(
            model="gpt-test", input="a b c d e f", max_output_tokens=3, stream=True
        )
        events = [event async for event in stream]
    assert server.chat_bodies[0]["max_completion_tokens"] == 3
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == "You said: a"


async def test_sdk_refused_parameter_is_a_400_naming_it(serve: Any) -> None:
    server = await serve()
    async with client_for(server) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(
                model="gpt-test", input="hi", previous_response_id="resp_earlier"
            )
    assert info.value.param == "previous_response_id"
    assert info.value.status_code == 400
    assert server.chat_bodies == []


async def test_sdk_sees_a_failure_after_the_first_byte(serve: Any) -> None:
    server = await serve(fail_after=3)
    async with client_for(server) as client:
        stream = await client.responses.create(model="gpt-test", input="one two three", stream=True)
        seen: list[Any] = []
        with pytest.raises(openai.APIError) as info:
            async for event in stream:
                seen.append(event)
    assert "upstream went away" in info.value.message
    assert seen[-1].type == "response.failed"
    assert seen[-1].response.status == "failed"
    assert seen[-1].response.output_text == "You said: "


# --- the mock provider answers `responses` natively ----------------------------------------


def mock(**options: Any) -> MockProvider:
    return MockProvider(ProviderConfig(name="m", type="mock", mock=MockOptions(**options)))


async def test_mock_answers_a_response() -> None:
    body = {"model": "mock", "instructions": "be kind", "input": "one two three"}
    answer = await mock().send(responses.API, json.dumps(body).encode(), stream=False, timeout=5)
    assert answer.status == 200
    response = strict_response(json.loads(await answer.read()))
    assert response.id.startswith("resp_mock") and response.status == "completed"
    assert response.output_text == "You said: be kind one two three"
    assert response.usage is not None and response.usage.output_tokens == 7


async def test_mock_streams_a_response() -> None:
    body = {"model": "mock", "input": "alpha beta", "stream": True, "max_output_tokens": 3}
    answer = await mock().send(responses.API, json.dumps(body).encode(), stream=True, timeout=5)
    assert answer.headers["content-type"] == "text/event-stream"
    raw = b"".join([chunk async for chunk in answer.iter_chunks()])
    events = strict_events(raw)
    assert events[-1].type == "response.incomplete"  # "You said: alpha beta" is 4 words
    assert events[-1].response.output_text == "You said: alpha"
    assert events[-1].response.usage is not None
    assert events[-1].response.usage.output_tokens == 3
    assert b"[DONE]" not in raw  # Responses streams end with their last event


async def test_mock_is_native_so_stateful_parameters_are_accepted() -> None:
    body = {"model": "mock", "input": "hi", "store": True, "previous_response_id": "resp_1"}
    answer = await mock().send(responses.API, json.dumps(body).encode(), stream=False, timeout=5)
    response = strict_response(json.loads(await answer.read()))
    assert answer.status == 200 and response.previous_response_id == "resp_1"


async def test_mock_refuses_what_it_cannot_answer_naming_the_field() -> None:
    body = {"model": "mock", "input": "hi", "tools": [{"type": "web_search"}]}
    answer = await mock().send(responses.API, json.dumps(body).encode(), stream=False, timeout=5)
    assert answer.status == 400
    error = json.loads(await answer.read())["error"]
    assert error["param"] == "tools[0].type" and error["type"] == "invalid_request_error"
