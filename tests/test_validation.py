"""The `validation` hook: every rule rejects with OpenAI's `param`, valid OpenAI bodies pass."""

from __future__ import annotations

import copy
import json
from typing import Any

import openai
import pytest
from aiohttp import web

from aigw.errors import InvalidRequestError, ModelNotFoundError
from aigw.hooks.base import Hook, RequestContext
from aigw.hooks.validation import ValidationHook, endpoint_for_body, validate_request

MODEL = "gpt-test"
MODELS = frozenset({MODEL, "embed-test"})

CHAT = "chat/completions"
COMP = "completions"
EMB = "embeddings"

USER = {"role": "user", "content": "hi"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
ASSISTANT_CALLS = {"role": "assistant", "content": None, "tool_calls": [CALL]}
TOOL_REPLY = {"role": "tool", "tool_call_id": "call_1", "content": "42"}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def chat(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [USER]}
    body.update(fields)
    return body


def msgs(*messages: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages)}


def user(content: Any) -> dict[str, Any]:
    return msgs({"role": "user", "content": content})


def assistant(**fields: Any) -> dict[str, Any]:
    """A conversation whose messages[1] is an assistant message with these fields."""
    return msgs(USER, {"role": "assistant", **fields})


def call(**fields: Any) -> dict[str, Any]:
    """A conversation whose messages[1].tool_calls[0] is this tool call."""
    return assistant(content=None, tool_calls=[fields])


def tool_msg(**fields: Any) -> dict[str, Any]:
    """A conversation whose messages[2] is a tool message with these fields."""
    return msgs(USER, ASSISTANT_CALLS, {"role": "tool", **fields})


def comp(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "prompt": "Say hi"}
    body.update(fields)
    return body


def emb(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "embed-test", "input": "hello"}
    body.update(fields)
    return body


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    body = dict(body)
    del body[key]
    return body


def text(t: Any = "hi") -> dict[str, Any]:
    return {"type": "text", "text": t}


IMAGE = {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
FILE = {"type": "file", "file": {"file_id": "file-1", "filename": "a.pdf"}}
REFUSAL = {"type": "refusal", "refusal": "I can't."}


# Each row: endpoint, body, the exact `param` OpenAI would name.
REJECTED = [
    # --- the body and the model
    pytest.param(CHAT, [USER], None, id="body-not-object"),
    pytest.param(CHAT, without(chat(), "model"), "model", id="model-missing"),
    pytest.param(CHAT, chat(model=5), "model", id="model-not-string"),
    pytest.param(CHAT, chat(model=""), "model", id="model-empty"),
    pytest.param(CHAT, chat(model=None), "model", id="model-null"),
    # --- messages
    pytest.param(CHAT, without(chat(), "messages"), "messages", id="messages-missing"),
    pytest.param(CHAT, chat(messages="hi"), "messages", id="messages-string"),
    pytest.param(CHAT, chat(messages=[]), "messages", id="messages-empty"),
    pytest.param(CHAT, chat(messages=None), "messages", id="messages-null"),
    pytest.param(CHAT, msgs(USER, "hi"), "messages[1]", id="message-not-object"),
    pytest.param(CHAT, msgs({"content": "hi"}), "messages[0].role", id="role-missing"),
    pytest.param(
        CHAT, msgs({"role": "bot", "content": "x"}), "messages[0].role", id="role-unknown"
    ),
    pytest.param(CHAT, msgs({"role": "User", "content": "x"}), "messages[0].role", id="role-case"),
    pytest.param(CHAT, msgs({"role": 1, "content": "x"}), "messages[0].role", id="role-int"),
    pytest.param(
        CHAT, msgs({"role": ["user"], "content": "x"}), "messages[0].role", id="role-list"
    ),
    pytest.param(CHAT, msgs({**USER, "name": 5}), "messages[0].name", id="name-int"),
    pytest.param(CHAT, msgs({**USER, "name": None}), "messages[0].name", id="name-null"),
    # --- user / system / developer content
    pytest.param(CHAT, msgs({"role": "user"}), "messages[0].content", id="user-content-missing"),
    pytest.param(CHAT, user(None), "messages[0].content", id="user-content-null"),
    pytest.param(CHAT, user([]), "messages[0].content", id="user-content-empty-list"),
    pytest.param(CHAT, user(5), "messages[0].content", id="user-content-int"),
    pytest.param(CHAT, user(text()), "messages[0].content", id="user-content-bare-part"),
    pytest.param(
        CHAT, msgs({"role": "system"}), "messages[0].content", id="system-content-missing"
    ),
    pytest.param(
        CHAT,
        msgs({"role": "developer", "content": None}),
        "messages[0].content",
        id="developer-content-null",
    ),
    pytest.param(
        CHAT, msgs({"role": "system", "content": []}), "messages[0].content", id="system-empty-list"
    ),
    # --- content parts
    pytest.param(CHAT, user(["hi"]), "messages[0].content[0]", id="part-not-object"),
    pytest.param(
        CHAT, user([{"text": "hi"}]), "messages[0].content[0].type", id="part-type-missing"
    ),
    pytest.param(CHAT, user([{"type": 1}]), "messages[0].content[0].type", id="part-type-int"),
    pytest.param(CHAT, user([{"type": "text"}]), "messages[0].content[0].text", id="text-missing"),
    pytest.param(CHAT, user([text(5)]), "messages[0].content[0].text", id="text-int"),
    pytest.param(CHAT, user([text(None)]), "messages[0].content[0].text", id="text-null"),
    pytest.param(CHAT, user([text(), text([])]), "messages[0].content[1].text", id="text-2nd-part"),
    pytest.param(
        CHAT, user([{"type": "image_url"}]), "messages[0].content[0].image_url", id="image-missing"
    ),
    pytest.param(
        CHAT,
        user([{"type": "image_url", "image_url": "https://x/y.png"}]),
        "messages[0].content[0].image_url",
        id="image-url-as-string",
    ),
    pytest.param(
        CHAT,
        user([{"type": "image_url", "image_url": {}}]),
        "messages[0].content[0].image_url.url",
        id="image-url-missing",
    ),
    pytest.param(
        CHAT,
        user([{"type": "image_url", "image_url": {"url": 5}}]),
        "messages[0].content[0].image_url.url",
        id="image-url-int",
    ),
    pytest.param(
        CHAT,
        user([{"type": "input_audio", "input_audio": "UklGRg=="}]),
        "messages[0].content[0].input_audio",
        id="audio-not-object",
    ),
    pytest.param(
        CHAT,
        user([{"type": "input_audio", "input_audio": {"format": "wav"}}]),
        "messages[0].content[0].input_audio.data",
        id="audio-data-missing",
    ),
    pytest.param(
        CHAT,
        user([{"type": "input_audio", "input_audio": {"data": "x"}}]),
        "messages[0].content[0].input_audio.format",
        id="audio-format-missing",
    ),
    pytest.param(CHAT, user([{"type": "file"}]), "messages[0].content[0].file", id="file-missing"),
    pytest.param(
        CHAT,
        user([{"type": "file", "file": "file-1"}]),
        "messages[0].content[0].file",
        id="file-not-object",
    ),
    pytest.param(
        CHAT,
        user([{"type": "file", "file": {"file_id": 5}}]),
        "messages[0].content[0].file.file_id",
        id="file-id-int",
    ),
    pytest.param(CHAT, user([REFUSAL]), "messages[0].content[0].type", id="refusal-part-in-user"),
    pytest.param(
        CHAT,
        msgs({"role": "system", "content": [IMAGE]}),
        "messages[0].content[0].type",
        id="image-in-system",
    ),
    pytest.param(
        CHAT,
        msgs({"role": "developer", "content": [AUDIO]}),
        "messages[0].content[0].type",
        id="audio-in-developer",
    ),
    pytest.param(
        CHAT, assistant(content=[IMAGE]), "messages[1].content[0].type", id="image-in-asst"
    ),
    pytest.param(
        CHAT,
        assistant(content=[{"type": "refusal"}]),
        "messages[1].content[0].refusal",
        id="refusal-part-missing-text",
    ),
    # --- assistant messages
    pytest.param(CHAT, assistant(), "messages[1].content", id="assistant-nothing"),
    pytest.param(CHAT, assistant(content=None), "messages[1].content", id="assistant-null-only"),
    pytest.param(CHAT, assistant(content=[]), "messages[1].content", id="assistant-empty-list"),
    pytest.param(CHAT, assistant(content=5), "messages[1].content", id="assistant-content-int"),
    pytest.param(
        CHAT,
        assistant(content="x", tool_calls=None),
        "messages[1].tool_calls",
        id="tool-calls-null",
    ),
    pytest.param(
        CHAT,
        assistant(content=None, tool_calls={"id": "c"}),
        "messages[1].tool_calls",
        id="tool-calls-object",
    ),
    pytest.param(
        CHAT,
        assistant(content=None, tool_calls=[]),
        "messages[1].tool_calls",
        id="tool-calls-empty",
    ),
    pytest.param(
        CHAT,
        assistant(content=None, tool_calls=["call_1"]),
        "messages[1].tool_calls[0]",
        id="tool-call-not-object",
    ),
    pytest.param(CHAT, call(**without(CALL, "id")), "messages[1].tool_calls[0].id", id="call-id"),
    pytest.param(CHAT, call(**{**CALL, "id": 7}), "messages[1].tool_calls[0].id", id="call-id-int"),
    pytest.param(
        CHAT,
        call(**without(CALL, "type")),
        "messages[1].tool_calls[0].type",
        id="call-type-missing",
    ),
    pytest.param(
        CHAT, call(**{**CALL, "type": "tool"}), "messages[1].tool_calls[0].type", id="call-type-bad"
    ),
    pytest.param(
        CHAT,
        call(**without(CALL, "function")),
        "messages[1].tool_calls[0].function",
        id="call-function-missing",
    ),
    pytest.param(
        CHAT,
        call(**{**CALL, "function": {"arguments": "{}"}}),
        "messages[1].tool_calls[0].function.name",
        id="call-name-missing",
    ),
    pytest.param(
        CHAT,
        call(**{**CALL, "function": {"name": "f", "arguments": {"x": 1}}}),
        "messages[1].tool_calls[0].function.arguments",
        id="call-arguments-object",
    ),
    pytest.param(
        CHAT,
        call(**{**CALL, "function": {"name": "f"}}),
        "messages[1].tool_calls[0].function.arguments",
        id="call-arguments-missing",
    ),
    pytest.param(
        CHAT,
        call(id="c", type="custom", custom={"name": "g"}),
        "messages[1].tool_calls[0].custom.input",
        id="custom-call-input-missing",
    ),
    pytest.param(
        CHAT,
        assistant(content=None, function_call="f"),
        "messages[1].function_call",
        id="function-call-string",
    ),
    pytest.param(
        CHAT,
        assistant(content=None, function_call={"name": "f"}),
        "messages[1].function_call.arguments",
        id="function-call-arguments-missing",
    ),
    pytest.param(CHAT, assistant(refusal=5), "messages[1].refusal", id="refusal-int"),
    pytest.param(CHAT, assistant(audio="a1"), "messages[1].audio", id="audio-string"),
    pytest.param(CHAT, assistant(audio={}), "messages[1].audio.id", id="audio-id-missing"),
    # --- tool and function messages
    pytest.param(
        CHAT, tool_msg(content="42"), "messages[2].tool_call_id", id="tool-call-id-missing"
    ),
    pytest.param(
        CHAT,
        tool_msg(tool_call_id=1, content="42"),
        "messages[2].tool_call_id",
        id="tool-call-id-int",
    ),
    pytest.param(
        CHAT,
        tool_msg(tool_call_id=None, content="42"),
        "messages[2].tool_call_id",
        id="tool-call-id-null",
    ),
    pytest.param(
        CHAT, tool_msg(tool_call_id="call_1"), "messages[2].content", id="tool-no-content"
    ),
    pytest.param(
        CHAT,
        tool_msg(tool_call_id="call_1", content=None),
        "messages[2].content",
        id="tool-content-null",
    ),
    pytest.param(
        CHAT,
        tool_msg(tool_call_id="call_1", content={"answer": 42}),
        "messages[2].content",
        id="tool-content-object",
    ),
    pytest.param(
        CHAT,
        tool_msg(tool_call_id="call_1", content=[IMAGE]),
        "messages[2].content[0].type",
        id="tool-content-image",
    ),
    pytest.param(
        CHAT,
        msgs(USER, {"role": "function", "content": "42"}),
        "messages[1].name",
        id="function-name-missing",
    ),
    pytest.param(
        CHAT,
        msgs(USER, {"role": "function", "name": "f", "content": 42}),
        "messages[1].content",
        id="function-content-int",
    ),
    # --- sampling numbers (booleans are not numbers)
    pytest.param(CHAT, chat(temperature=3), "temperature", id="temperature-high"),
    pytest.param(CHAT, chat(temperature=-0.1), "temperature", id="temperature-low"),
    pytest.param(CHAT, chat(temperature="1"), "temperature", id="temperature-string"),
    pytest.param(CHAT, chat(temperature=True), "temperature", id="temperature-bool"),
    pytest.param(CHAT, chat(temperature=float("nan")), "temperature", id="temperature-nan"),
    pytest.param(CHAT, chat(top_p=1.5), "top_p", id="top-p-high"),
    pytest.param(CHAT, chat(top_p=-1), "top_p", id="top-p-low"),
    pytest.param(CHAT, chat(top_p=False), "top_p", id="top-p-bool"),
    pytest.param(CHAT, chat(presence_penalty=2.5), "presence_penalty", id="presence-high"),
    pytest.param(CHAT, chat(presence_penalty=-3), "presence_penalty", id="presence-low"),
    pytest.param(CHAT, chat(frequency_penalty="0"), "frequency_penalty", id="frequency-string"),
    pytest.param(CHAT, chat(frequency_penalty=-2.01), "frequency_penalty", id="frequency-low"),
    pytest.param(CHAT, chat(max_tokens=0), "max_tokens", id="max-tokens-zero"),
    pytest.param(CHAT, chat(max_tokens=-5), "max_tokens", id="max-tokens-negative"),
    pytest.param(CHAT, chat(max_tokens=10.5), "max_tokens", id="max-tokens-float"),
    pytest.param(CHAT, chat(max_tokens=10.0), "max_tokens", id="max-tokens-float-whole"),
    pytest.param(CHAT, chat(max_tokens=True), "max_tokens", id="max-tokens-bool"),
    pytest.param(CHAT, chat(max_tokens="10"), "max_tokens", id="max-tokens-string"),
    pytest.param(CHAT, chat(max_completion_tokens=0), "max_completion_tokens", id="max-compl-zero"),
    pytest.param(CHAT, chat(n=0), "n", id="n-zero"),
    pytest.param(CHAT, chat(n=129), "n", id="n-too-big"),
    pytest.param(CHAT, chat(n=2.0), "n", id="n-float"),
    pytest.param(CHAT, chat(seed=1.5), "seed", id="seed-float"),
    pytest.param(CHAT, chat(seed="7"), "seed", id="seed-string"),
    pytest.param(CHAT, chat(seed=2**63), "seed", id="seed-beyond-int64"),
    # --- streaming
    pytest.param(CHAT, chat(stream="true"), "stream", id="stream-string"),
    pytest.param(CHAT, chat(stream=1), "stream", id="stream-int"),
    pytest.param(CHAT, chat(stream=True, stream_options="usage"), "stream_options", id="so-string"),
    pytest.param(
        CHAT, chat(stream_options={"include_usage": True}), "stream_options", id="so-no-stream"
    ),
    pytest.param(
        CHAT,
        chat(stream=False, stream_options={"include_usage": True}),
        "stream_options",
        id="so-stream-false",
    ),
    pytest.param(
        CHAT,
        chat(stream=True, stream_options={"include_usage": "yes"}),
        "stream_options.include_usage",
        id="so-include-usage-string",
    ),
    pytest.param(
        CHAT,
        chat(stream=True, stream_options={"include_usage": None}),
        "stream_options.include_usage",
        id="so-include-usage-null",
    ),
    # --- stop
    pytest.param(CHAT, chat(stop=5), "stop", id="stop-int"),
    pytest.param(CHAT, chat(stop=["a", "b", "c", "d", "e"]), "stop", id="stop-five"),
    pytest.param(CHAT, chat(stop=["a", 1]), "stop[1]", id="stop-item-int"),
    pytest.param(CHAT, chat(stop={"a": 1}), "stop", id="stop-object"),
    # --- logprobs, user
    pytest.param(CHAT, chat(logprobs=1), "logprobs", id="chat-logprobs-int"),
    pytest.param(CHAT, chat(top_logprobs=21), "top_logprobs", id="top-logprobs-high"),
    pytest.param(CHAT, chat(top_logprobs=-1), "top_logprobs", id="top-logprobs-negative"),
    pytest.param(CHAT, chat(top_logprobs=True), "top_logprobs", id="top-logprobs-bool"),
    pytest.param(CHAT, chat(user=5), "user", id="user-int"),
    pytest.param(CHAT, chat(user=None), "user", id="user-null"),
    # --- tools
    pytest.param(CHAT, chat(tools=TOOL), "tools", id="tools-object"),
    pytest.param(CHAT, chat(tools=[]), "tools", id="tools-empty"),
    pytest.param(CHAT, chat(tools=None), "tools", id="tools-null"),
    pytest.param(CHAT, chat(tools=["f"]), "tools[0]", id="tool-string"),
    pytest.param(
        CHAT, chat(tools=[TOOL, {"function": {"name": "g"}}]), "tools[1].type", id="tool-no-type"
    ),
    pytest.param(CHAT, chat(tools=[{"type": 1}]), "tools[0].type", id="tool-type-int"),
    pytest.param(
        CHAT, chat(tools=[{"type": "function"}]), "tools[0].function", id="tool-no-function"
    ),
    pytest.param(
        CHAT,
        chat(tools=[{"type": "function", "function": {}}]),
        "tools[0].function.name",
        id="tool-no-name",
    ),
    pytest.param(
        CHAT,
        chat(tools=[{"type": "function", "function": {"name": ""}}]),
        "tools[0].function.name",
        id="tool-empty-name",
    ),
    pytest.param(
        CHAT,
        chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "{}"}}]),
        "tools[0].function.parameters",
        id="tool-parameters-string",
    ),
    pytest.param(
        CHAT,
        chat(tools=[{"type": "custom", "custom": {}}]),
        "tools[0].custom.name",
        id="custom-tool-no-name",
    ),
    pytest.param(CHAT, chat(tool_choice="any"), "tool_choice", id="tool-choice-unknown"),
    pytest.param(CHAT, chat(tool_choice=5), "tool_choice", id="tool-choice-int"),
    pytest.param(CHAT, chat(tool_choice={}), "tool_choice.type", id="tool-choice-no-type"),
    pytest.param(
        CHAT,
        chat(tool_choice={"type": "function"}),
        "tool_choice.function",
        id="tool-choice-no-function",
    ),
    pytest.param(
        CHAT,
        chat(tool_choice={"type": "function", "function": {}}),
        "tool_choice.function.name",
        id="tool-choice-no-name",
    ),
    pytest.param(
        CHAT, chat(parallel_tool_calls="yes"), "parallel_tool_calls", id="parallel-string"
    ),
    # --- response_format
    pytest.param(CHAT, chat(response_format="json"), "response_format", id="rf-string"),
    pytest.param(CHAT, chat(response_format=None), "response_format", id="rf-null"),
    pytest.param(CHAT, chat(response_format={}), "response_format.type", id="rf-no-type"),
    pytest.param(CHAT, chat(response_format={"type": 1}), "response_format.type", id="rf-type-int"),
    pytest.param(
        CHAT,
        chat(response_format={"type": "json_schema"}),
        "response_format.json_schema",
        id="rf-schema-missing",
    ),
    pytest.param(
        CHAT,
        chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        "response_format.json_schema.name",
        id="rf-schema-no-name",
    ),
    # --- completions
    pytest.param(COMP, without(comp(), "prompt"), "prompt", id="prompt-missing"),
    pytest.param(COMP, comp(prompt=5), "prompt", id="prompt-int"),
    pytest.param(COMP, comp(prompt=[]), "prompt", id="prompt-empty-list"),
    pytest.param(COMP, comp(prompt={"text": "x"}), "prompt", id="prompt-object"),
    pytest.param(COMP, comp(prompt=["a", 1]), "prompt[1]", id="prompt-mixed-str-int"),
    pytest.param(COMP, comp(prompt=[1, "a"]), "prompt[1]", id="prompt-mixed-int-str"),
    pytest.param(COMP, comp(prompt=[1, 2, True]), "prompt[2]", id="prompt-token-bool"),
    pytest.param(COMP, comp(prompt=[1.5]), "prompt[0]", id="prompt-token-float"),
    pytest.param(COMP, comp(prompt=[[1], []]), "prompt[1]", id="prompt-empty-token-list"),
    pytest.param(COMP, comp(prompt=[[1, "a"]]), "prompt[0][1]", id="prompt-token-list-str"),
    pytest.param(COMP, comp(prompt=[[1], 2]), "prompt[1]", id="prompt-list-then-int"),
    pytest.param(COMP, comp(prompt=[None]), "prompt[0]", id="prompt-null-item"),
    pytest.param(COMP, comp(logprobs=True), "logprobs", id="comp-logprobs-bool"),
    pytest.param(COMP, comp(logprobs=6), "logprobs", id="comp-logprobs-high"),
    pytest.param(COMP, comp(best_of=21), "best_of", id="best-of-high"),
    pytest.param(COMP, comp(echo="yes"), "echo", id="echo-string"),
    pytest.param(COMP, comp(suffix=5), "suffix", id="suffix-int"),
    pytest.param(COMP, comp(temperature=2.5), "temperature", id="comp-temperature"),
    pytest.param(COMP, comp(max_tokens=0), "max_tokens", id="comp-max-tokens"),
    pytest.param(COMP, comp(n=200), "n", id="comp-n"),
    pytest.param(COMP, comp(stop=[1]), "stop[0]", id="comp-stop"),
    pytest.param(
        COMP, comp(stream_options={"include_usage": True}), "stream_options", id="comp-so"
    ),
    pytest.param(COMP, comp(user=[]), "user", id="comp-user"),
    pytest.param(COMP, without(comp(), "model"), "model", id="comp-model-missing"),
    # --- embeddings
    pytest.param(EMB, without(emb(), "input"), "input", id="input-missing"),
    pytest.param(EMB, emb(input=None), "input", id="input-null"),
    pytest.param(EMB, emb(input=""), "input", id="input-empty-string"),
    pytest.param(EMB, emb(input=[]), "input", id="input-empty-list"),
    pytest.param(EMB, emb(input=5), "input", id="input-int"),
    pytest.param(EMB, emb(input=[""]), "input[0]", id="input-list-empty-string"),
    pytest.param(EMB, emb(input=["a", ""]), "input[1]", id="input-list-2nd-empty"),
    pytest.param(EMB, emb(input=[[]]), "input[0]", id="input-empty-token-list"),
    pytest.param(EMB, emb(input=[[1, 2], [3, None]]), "input[1][1]", id="input-token-null"),
    pytest.param(EMB, emb(input=[1, "a"]), "input[1]", id="input-mixed"),
    pytest.param(EMB, emb(input=[{"text": "a"}]), "input[0]", id="input-object-item"),
    pytest.param(EMB, emb(encoding_format="int8"), "encoding_format", id="encoding-unknown"),
    pytest.param(EMB, emb(encoding_format=None), "encoding_format", id="encoding-null"),
    pytest.param(EMB, emb(dimensions=0), "dimensions", id="dimensions-zero"),
    pytest.param(EMB, emb(dimensions=256.0), "dimensions", id="dimensions-float"),
    pytest.param(EMB, emb(dimensions=None), "dimensions", id="dimensions-null"),
    pytest.param(EMB, emb(dimensions=False), "dimensions", id="dimensions-bool"),
    pytest.param(EMB, emb(user=5), "user", id="emb-user"),
    pytest.param(EMB, emb(model=""), "model", id="emb-model-empty"),
]


@pytest.mark.parametrize(("endpoint", "body", "param"), REJECTED)
def test_rejected_with_exact_param(endpoint: str, body: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as info:
        validate_request(endpoint, body, MODELS)
    err = info.value
    assert err.param == param, err.message
    assert err.status == 400
    assert err.type == "invalid_request_error"
    # The message names the field (when there is one), so a human sees what to fix.
    if param is not None:
        assert f"'{param}'" in err.message


VALID = [
    # --- chat
    pytest.param(CHAT, chat(), id="minimal"),
    pytest.param(
        CHAT,
        msgs(
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi", "name": "alice"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "Thanks"},
        ),
        id="multi-turn-with-tools",
    ),
    pytest.param(CHAT, msgs(USER, ASSISTANT_CALLS, TOOL_REPLY), id="assistant-null-tool-calls"),
    pytest.param(
        CHAT,
        msgs(USER, {"role": "assistant", "tool_calls": [CALL]}, TOOL_REPLY),
        id="assistant-no-content-key",
    ),
    pytest.param(
        CHAT,
        msgs(
            USER,
            {"role": "assistant", "content": "", "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
            TOOL_REPLY,
            {**TOOL_REPLY, "tool_call_id": "call_2", "content": [text("b")]},
        ),
        id="parallel-calls-tool-text-parts",
    ),
    pytest.param(
        CHAT, user([text("What is this?"), IMAGE, AUDIO, FILE]), id="user-parts-all-kinds"
    ),
    pytest.param(
        CHAT,
        user(
            [
                {
                    "type": "file",
                    "file": {
                        "file_data": "data:application/pdf;base64,JVBERi0=",
                        "filename": "a.pdf",
                    },
                }
            ]
        ),
        id="file-data",
    ),
    pytest.param(CHAT, user(""), id="user-empty-string"),
    pytest.param(
        CHAT, msgs({"role": "developer", "content": [text("rules")]}, USER), id="developer-parts"
    ),
    pytest.param(
        CHAT, msgs({"role": "system", "content": "s", "name": "ops"}, USER), id="sys-name"
    ),
    pytest.param(CHAT, assistant(content=[text("a"), REFUSAL]), id="assistant-text-refusal-parts"),
    pytest.param(CHAT, assistant(content=None, refusal="I can't."), id="assistant-refusal-only"),
    pytest.param(CHAT, assistant(refusal="no", content=None, audio=None), id="assistant-nulls"),
    pytest.param(CHAT, assistant(audio={"id": "audio_1"}), id="assistant-audio-only"),
    pytest.param(
        CHAT,
        assistant(content=None, function_call={"name": "f", "arguments": "{}"}),
        id="assistant-function-call",
    ),
    pytest.param(
        CHAT,
        msgs(
            USER,
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "f", "arguments": "{}"},
            },
            {"role": "function", "name": "f", "content": None},
        ),
        id="function-message-null-content",
    ),
    pytest.param(
        CHAT,
        call(id="c1", type="custom", custom={"name": "grep", "input": "foo"}),
        id="custom-tool-call",
    ),
    pytest.param(
        CHAT,
        msgs(
            {
                "role": "user",
                "content": [text(), {"type": "video_url", "video_url": {"url": "v"}}],
                "x_meta": 1,
            }
        ),
        id="unknown-part-type-and-message-field",
    ),
    pytest.param(
        CHAT,
        user(
            [
                {
                    **text(),
                    "cache_control": {"type": "ephemeral"},
                    "prompt_cache_breakpoint": {"mode": "explicit"},
                }
            ]
        ),
        id="unknown-part-fields",
    ),
    pytest.param(
        CHAT,
        chat(
            temperature=0,
            top_p=1,
            n=1,
            max_tokens=16,
            max_completion_tokens=32,
            stream=True,
            stream_options={"include_usage": True, "include_obfuscation": False},
            presence_penalty=-2,
            frequency_penalty=2.0,
            stop=["a", "b", "c", "d"],
            logprobs=True,
            top_logprobs=20,
            seed=-(2**63),
            user="u-1",
            parallel_tool_calls=False,
            tools=[
                TOOL,
                {"type": "custom", "custom": {"name": "grep"}},
                {"type": "browser_search"},
            ],
            tool_choice={"type": "function", "function": {"name": "f"}},
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": {"type": "object"}},
            },
        ),
        id="every-known-field",
    ),
    pytest.param(
        CHAT,
        chat(
            temperature=None,
            top_p=None,
            n=None,
            max_tokens=None,
            max_completion_tokens=None,
            stream=None,
            stream_options=None,
            presence_penalty=None,
            frequency_penalty=None,
            stop=None,
            logprobs=None,
            top_logprobs=None,
            seed=None,
        ),
        id="nullable-fields-null",
    ),
    pytest.param(CHAT, chat(temperature=2, top_p=0, n=128, seed=2**63 - 1), id="bounds-inclusive"),
    pytest.param(CHAT, chat(temperature=1.7, stop="\n", stream=False), id="stop-string"),
    pytest.param(CHAT, chat(stop=[]), id="stop-empty-list"),
    pytest.param(CHAT, chat(stream=False, stream_options=None), id="stream-options-null"),
    pytest.param(CHAT, chat(tool_choice="required", tools=[TOOL]), id="tool-choice-required"),
    pytest.param(
        CHAT,
        chat(tool_choice={"type": "allowed_tools", "allowed_tools": {}}),
        id="tool-choice-allowed-tools",
    ),
    pytest.param(CHAT, chat(response_format={"type": "json_object"}), id="rf-json-object"),
    pytest.param(CHAT, chat(response_format={"type": "regex", "regex": "a+"}), id="rf-unknown"),
    pytest.param(
        CHAT,
        chat(
            logit_bias={"50256": -100},
            metadata={"k": "v"},
            modalities=["text"],
            reasoning_effort="low",
            service_tier="auto",
            store=False,
            verbosity="low",
            prediction={"type": "content", "content": "x"},
            top_k=40,
            repetition_penalty=1.1,
            extra_body_thing={"anything": [1, 2]},
        ),
        id="unknown-and-unchecked-fields",
    ),
    # --- completions
    pytest.param(COMP, comp(), id="prompt-string"),
    pytest.param(COMP, comp(prompt=""), id="prompt-empty-string"),
    pytest.param(COMP, comp(prompt=None), id="prompt-null"),
    pytest.param(COMP, comp(prompt=["a", "b"]), id="prompt-strings"),
    pytest.param(COMP, comp(prompt=["a", ""]), id="prompt-strings-with-empty"),
    pytest.param(COMP, comp(prompt=[1212, 318, 257]), id="prompt-tokens"),
    pytest.param(COMP, comp(prompt=[[1212, 318], [257]]), id="prompt-token-lists"),
    pytest.param(
        COMP,
        comp(
            logprobs=5,
            echo=True,
            suffix=None,
            best_of=2,
            n=1,
            stream=True,
            stream_options={"include_usage": False},
            stop="\n",
            seed=1,
            user="u",
        ),
        id="comp-known-fields",
    ),
    pytest.param(COMP, comp(logprobs=None, echo=None, best_of=None), id="comp-nulls"),
    pytest.param(
        COMP, comp(max_completion_tokens="x", top_logprobs=[]), id="comp-chat-only-fields"
    ),
    # --- embeddings
    pytest.param(EMB, emb(), id="input-string"),
    pytest.param(EMB, emb(input=["a", "b"]), id="input-strings"),
    pytest.param(EMB, emb(input=[1212, 318]), id="input-tokens"),
    pytest.param(EMB, emb(input=[[1212, 318], [257]]), id="input-token-lists"),
    pytest.param(EMB, emb(encoding_format="base64", dimensions=256, user="u"), id="emb-options"),
    pytest.param(EMB, emb(encoding_format="float", truncate="END"), id="emb-unknown-field"),
]


@pytest.mark.parametrize(("endpoint", "body"), VALID)
def test_valid_bodies_pass_unchanged(endpoint: str, body: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    validate_request(endpoint, body, MODELS)
    assert body == before


def test_unknown_model_is_404() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        validate_request(CHAT, chat(model="gpt-nope"), MODELS)
    assert info.value.status == 404
    assert info.value.param == "model"
    assert info.value.code == "model_not_found"
    assert "gpt-nope" in info.value.message


def test_models_collection_decides() -> None:
    validate_request(EMB, emb(model="only-here"), ["only-here"])
    with pytest.raises(ModelNotFoundError):
        validate_request(EMB, emb(model="embed-test"), ["only-here"])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (chat(temperature=3), "'temperature' must be a number between 0 and 2, got 3"),
        (chat(temperature=True), "'temperature' must be a number between 0 and 2, got true"),
        (chat(n=0), "'n' must be an integer between 1 and 128, got 0"),
        (chat(max_tokens=0), "'max_tokens' must be an integer >= 1, got 0"),
        (
            user(None),
            "'messages[0].content' must be a string or a non-empty array of content "
            "parts, got null",
        ),
        (msgs({"role": "bot", "content": "x"}), "got 'bot'"),
        (without(chat(), "messages"), "Missing required parameter: 'messages'."),
        (
            chat(stream_options={"include_usage": True}),
            "'stream_options' is only allowed when 'stream' is true",
        ),
        (comp(prompt=["a", 1]), "'prompt[1]' must be a string like prompt[0], got 1"),
    ],
)
def test_messages_are_clear(body: dict[str, Any], expected: str) -> None:
    endpoint = endpoint_for_body(body)
    with pytest.raises(InvalidRequestError) as info:
        validate_request(endpoint, body, MODELS)
    assert expected in info.value.message


def test_messages_do_not_echo_user_text() -> None:
    secret = "sk-live-do-not-echo"
    with pytest.raises(InvalidRequestError) as info:
        validate_request(CHAT, chat(temperature=secret), MODELS)
    assert secret not in info.value.message
    assert secret.encode() not in info.value.body()


def test_first_problem_wins() -> None:
    body = chat(temperature=5, top_p=5)
    with pytest.raises(InvalidRequestError) as info:
        validate_request(CHAT, body, MODELS)
    assert info.value.param == "temperature"


def test_unknown_endpoint_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown endpoint"):
        validate_request("fine_tuning/jobs", chat(), MODELS)


@pytest.mark.parametrize(
    ("body", "endpoint"),
    [
        (chat(), CHAT),
        ({"model": MODEL}, CHAT),
        (comp(), COMP),
        (emb(), EMB),
        ({"model": MODEL, "input": [1], "prompt": "x"}, EMB),
    ],
)
def test_endpoint_for_body(body: dict[str, Any], endpoint: str) -> None:
    assert endpoint_for_body(body) == endpoint


def _ctx(endpoint: str, body: dict[str, Any]) -> RequestContext:
    return RequestContext(request_id="r1", tenant="t", endpoint=endpoint, body=body, started=0.0)


async def test_hook_rejects_and_passes() -> None:
    hook = ValidationHook(MODELS)
    assert isinstance(hook, Hook)
    await hook.before_request(_ctx(CHAT, msgs(USER, ASSISTANT_CALLS, TOOL_REPLY)))
    with pytest.raises(InvalidRequestError) as info:
        await hook.before_request(_ctx(CHAT, chat(top_p=2)))
    assert info.value.param == "top_p"
    with pytest.raises(ModelNotFoundError):
        await hook.before_request(_ctx(EMB, emb(model="nope")))


async def test_hook_sees_replaced_models() -> None:
    hook = ValidationHook(frozenset({"old"}))
    hook.models = frozenset({"new"})
    await hook.before_request(_ctx(CHAT, chat(model="new")))
    with pytest.raises(ModelNotFoundError):
        await hook.before_request(_ctx(CHAT, chat(model="old")))


# --- bodies exactly as the openai SDK sends them -------------------------------------------------


def _fake_answer(endpoint: str) -> dict[str, Any]:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    if endpoint == EMB:
        return {
            "object": "list",
            "model": "m",
            "usage": usage,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}],
        }
    if endpoint == COMP:
        return {
            "id": "c",
            "object": "text_completion",
            "created": 0,
            "model": "m",
            "usage": usage,
            "choices": [{"index": 0, "text": "hi", "finish_reason": "stop", "logprobs": None}],
        }
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "usage": usage,
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}
        ],
    }


async def test_bodies_captured_from_the_openai_sdk(aiohttp_server: Any) -> None:
    captured: list[tuple[str, dict[str, Any]]] = []

    async def record(request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint"]
        captured.append((endpoint, json.loads(await request.read())))
        return web.json_response(_fake_answer(endpoint))

    app = web.Application()
    app.router.add_post("/v1/{endpoint:.+}", record)
    server = await aiohttp_server(app)

    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="x", max_retries=0
    ) as client:
        await client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "developer", "content": "Answer in French."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in these?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBO", "detail": "high"},
                        },
                        {
                            "type": "input_audio",
                            "input_audio": {"data": "UklGRg==", "format": "mp3"},
                        },
                        {"type": "file", "file": {"file_id": "file-abc"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_9", "content": "found"},
            ],
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "lookup",
                        "description": "Look up",
                        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                        "strict": True,
                    },
                }
            ],
            tool_choice="auto",
            temperature=0.2,
            max_completion_tokens=64,
            response_format={"type": "json_object"},
            seed=3,
            user="u-7",
            extra_body={"top_k": 5},
        )
        await client.completions.create(
            model=MODEL, prompt=[[1212, 318], [257]], max_tokens=5, logprobs=2, echo=True
        )
        await client.completions.create(model=MODEL, prompt=["a", "b"], stop=["\n"])
        await client.embeddings.create(model="embed-test", input=[[1212, 318], [257]], dimensions=8)
        await client.embeddings.create(model="embed-test", input="hello")

    assert [endpoint for endpoint, _ in captured] == [CHAT, COMP, COMP, EMB, EMB]
    # The SDK's own wire choices we rely on: null content kept, base64 asked by default.
    assert captured[0][1]["messages"][2]["content"] is None
    assert captured[4][1]["encoding_format"] == "base64"
    for endpoint, body in captured:
        assert endpoint_for_body(body) == endpoint
        validate_request(endpoint, body, MODELS)

    # And a defect injected into a real body is caught with OpenAI's param name.
    chat_body = captured[0][1]
    del chat_body["messages"][3]["tool_call_id"]
    with pytest.raises(InvalidRequestError) as info:
        validate_request(CHAT, chat_body, MODELS)
    assert info.value.param == "messages[3].tool_call_id"
