"""Anthropic Messages ⇄ chat, both sides of the gateway.

Client side (a Messages client, a chat target): `to_chat` turns a `POST /v1/messages` body into a
chat body; `from_chat` and `StreamFromChat` turn the chat answer back into a `message` object or
its event stream (`message_start`, `ping`, `content_block_start/delta/stop`, `message_delta`,
`message_stop`); `error_body`/`error_event` write every gateway error in Anthropic's shape.

Provider side (a chat request, a Messages-only target such as api.anthropic.com):
`request_from_chat` builds the Messages request; `response_to_chat` and `StreamToChat` turn the
answer back into chat. `usage()` reads an Anthropic `usage` object; `StreamUsage` reads the usage
of a stream passed through natively.

What has no equivalent on the other side, and what happens to it:

- Messages -> chat. `thinking` / `redacted_thinking` blocks of earlier turns are dropped (a chat
  upstream cannot check their signatures, and most refuse reasoning in their input); the
  `thinking` setting and `output_config.effort` are dropped (`reasoning_effort` is refused by
  chat models that do not reason); `top_k` is dropped (OpenAI refuses unknown fields; it is a
  sampling hint); `cache_control` is dropped (chat has no cache breakpoints). `is_error` on a
  tool result prefixes its text with "Error: ". Images and PDFs inside a tool result go in a
  user message right after the tool messages (chat tool messages carry text only). Server tools
  (`web_search_…`, `bash_…`…), `mcp_servers` and `container` are refused with a 400 naming the
  field: they run on Anthropic's side. `max_tokens` becomes `max_completion_tokens` (OpenAI's
  current name; `max_tokens` is refused by its reasoning models).
- chat -> Messages. System and developer messages, wherever they are, are joined with "\\n" into
  `system` (Anthropic has one system prompt); `temperature` above 1 is clamped to 1; a missing
  `max_completion_tokens`/`max_tokens` becomes `DEFAULT_MAX_TOKENS` (Anthropic requires one);
  `response_format` `json_schema` becomes `output_config.format` (structured outputs), and
  `json_object`, `n` > 1, `logprobs`, audio output and non-function tools are refused with a 400
  naming the field. Sampling hints with no Messages equivalent (`seed`, `presence_penalty`,
  `frequency_penalty`, `logit_bias`, `reasoning_effort`…) are ignored, as Anthropic's own
  OpenAI compatibility layer does. Anthropic fields a chat client may add (`thinking`, `top_k`)
  are passed on.

Thinking from a chat upstream (`reasoning_content`, or `reasoning`) becomes `thinking` blocks
only when the Messages request enabled thinking (as Anthropic answers); they carry an empty
`signature`, which the SDKs accept: a chat upstream has nothing to sign. Sent back, such a block is
dropped again on the way to a chat target, but a native Anthropic target would refuse it.

Hot path: a translated stream event costs one small dict walk and one orjson call; the bytes
around the JSON of each delta are built once per content block.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final

from aigw import sse
from aigw.errors import GatewayError, InvalidRequestError, UpstreamError, UpstreamStatusError
from aigw.exchange import Usage
from aigw.jsonutil import dumps, loads

API: Final = "messages"
#: `max_tokens` of a Messages request built from a chat request that set none (Anthropic
#: requires it); every current Claude model can produce this many.
DEFAULT_MAX_TOKENS: Final = 4096

# --- errors ---------------------------------------------------------------------------------

#: Anthropic's error type for each HTTP status (docs.claude.com/en/api/errors); other 4xx are
#: `invalid_request_error`, other 5xx `api_error`.
ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    known = ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if status < 500 else "api_error"


def _native_error(raw: bytes) -> tuple[str, str] | None:
    """(type, message) of a body already in Anthropic's error shape, else None."""
    if not raw.startswith(b"{") and not raw.lstrip().startswith(b"{"):
        return None
    try:
        data = loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("type") != "error":
        return None
    err = data.get("error")
    if not isinstance(err, dict):
        return None
    etype, message = err.get("type"), err.get("message")
    if not isinstance(etype, str) or not isinstance(message, str):
        return None
    return etype, message


def _error_fields(err: GatewayError) -> tuple[str, str]:
    if isinstance(err, UpstreamStatusError):
        native = _native_error(err.raw_body)
        if native is not None:
            return native
    return error_type(err.status), err.message


def error_body(err: GatewayError) -> bytes:
    """`{"type":"error","error":{"type","message"}}` for `err`, answered with `err.status` (and
    `err.headers`, `retry-after` among them). An upstream's own Anthropic-shaped error body is
    passed through as it came."""
    if isinstance(err, UpstreamStatusError) and _native_error(err.raw_body) is not None:
        return err.raw_body
    etype, message = _error_fields(err)
    return dumps({"type": "error", "error": {"type": etype, "message": message}})


def error_event(err: GatewayError) -> bytes:
    """The in-band `event: error` of a stream that fails after its first byte."""
    etype, message = _error_fields(err)
    return sse.encode(
        dumps({"type": "error", "error": {"type": etype, "message": message}}), event="error"
    )


def error_to_chat(raw: bytes) -> bytes | None:
    """An Anthropic error body rewritten as OpenAI error JSON (for a chat client of a Messages
    target), or None when `raw` is not one."""
    native = _native_error(raw)
    if native is None:
        return None
    etype, message = native
    return dumps({"error": {"message": message, "type": etype, "param": None, "code": None}})


# --- usage ----------------------------------------------------------------------------------


def usage(data: object) -> Usage | None:
    """Read an Anthropic `usage` object. Its `input_tokens` excludes the cache reads and writes;
    the canonical prompt is their sum."""
    if not isinstance(data, dict):
        return None
    try:
        fresh = int(data.get("input_tokens") or 0)
        output = int(data.get("output_tokens") or 0)
        read = int(data.get("cache_read_input_tokens") or 0)
        write = int(data.get("cache_creation_input_tokens") or 0)
        details = data.get("output_tokens_details")
        thinking = int(details.get("thinking_tokens") or 0) if isinstance(details, dict) else 0
    except (TypeError, ValueError, OverflowError):
        return None
    if min(fresh, output, read, write, thinking) < 0:
        return None  # a negative count would credit the tenant's quota
    prompt = fresh + read + write
    return Usage(prompt, output, prompt + output, read, write, thinking)


def usage_json(u: Usage) -> dict[str, Any]:
    """A canonical `Usage` as an Anthropic `usage` object."""
    out: dict[str, Any] = {
        "input_tokens": max(u.prompt_tokens - u.cached_tokens - u.cache_write_tokens, 0),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_tokens,
    }
    if u.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
    return out


def chat_usage_json(u: Usage) -> dict[str, Any]:
    """A canonical `Usage` as an OpenAI chat `usage` object."""
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


# --- client side: Messages request -> chat --------------------------------------------------


def _fail(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _text_of(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise _fail(f"{param}: expected a string", param)
    return value


def _system_text(system: object) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise _fail("system: expected a string or a list of text blocks", "system")
    texts = []
    for i, block in enumerate(system):
        param = f"system[{i}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _fail(f"{param}: system blocks must be text blocks", f"{param}.type")
        texts.append(_text_of(block.get("text"), f"{param}.text"))
    return "\n".join(texts)


def _image_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _fail(f"{param}.source: expected an object", f"{param}.source")
    kind = source.get("type")
    if kind == "base64":
        media = _text_of(source.get("media_type"), f"{param}.source.media_type")
        data = _text_of(source.get("data"), f"{param}.source.data")
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        url = _text_of(source.get("url"), f"{param}.source.url")
    else:
        raise _fail(
            f"{param}.source.type: image source '{kind}' cannot be sent to this model "
            "(only base64 and url images can)",
            f"{param}.source.type",
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _fail(f"{param}.source: expected an object", f"{param}.source")
    kind = source.get("type")
    if kind == "text":
        return {"type": "text", "text": _text_of(source.get("data"), f"{param}.source.data")}
    if kind == "base64":
        media = _text_of(source.get("media_type"), f"{param}.source.media_type")
        data = _text_of(source.get("data"), f"{param}.source.data")
        file: dict[str, Any] = {"file_data": f"data:{media};base64,{data}"}
        title = block.get("title")
        file["filename"] = title if isinstance(title, str) and title else "document.pdf"
        return {"type": "file", "file": file}
    raise _fail(
        f"{param}.source.type: document source '{kind}' cannot be sent to this model "
        "(only base64 and text documents can)",
        f"{param}.source.type",
    )


def _tool_result(
    block: dict[str, Any], param: str, attachments: list[dict[str, Any]]
) -> dict[str, Any]:
    tool_use_id = _text_of(block.get("tool_use_id"), f"{param}.tool_use_id")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            sub = f"{param}.content[{k}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(_text_of(part.get("text"), f"{sub}.text"))
            elif kind == "image":
                attachments.append(_image_part(part, sub))
            elif kind == "document":
                doc = _document_part(part, sub)
                if doc["type"] == "text":
                    texts.append(doc["text"])
                else:
                    attachments.append(doc)
            else:
                raise _fail(
                    f"{sub}.type: '{kind}' blocks in a tool result cannot be sent to this model",
                    f"{sub}.type",
                )
        text = "\n".join(texts)
    else:
        raise _fail(f"{param}.content: expected a string or a list of blocks", f"{param}.content")
    if block.get("is_error") is True:
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _user_to_chat(content: object, param: str, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    if not isinstance(content, list):
        raise _fail(f"{param}: expected a string or a list of blocks", param)
    tools: list[dict[str, Any]] = []
    # images and files of tool results: chat tool messages carry text only
    attachments: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        sub = f"{param}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(block.get("text"), f"{sub}.text")})
        elif kind == "tool_result":
            tools.append(_tool_result(block, sub, attachments))
        elif kind == "image":
            parts.append(_image_part(block, sub))
        elif kind == "document":
            parts.append(_document_part(block, sub))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _fail(f"{sub}.type: '{kind}' blocks cannot be sent to this model", f"{sub}.type")
    out.extend(tools)
    parts = attachments + parts
    if not parts:
        return
    if all(p["type"] == "text" for p in parts):
        out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
    else:
        out.append({"role": "user", "content": parts})


def _assistant_to_chat(content: object, param: str, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "assistant", "content": content})
        return
    if not isinstance(content, list):
        raise _fail(f"{param}: expected a string or a list of blocks", param)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        sub = f"{param}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text_of(block.get("text"), f"{sub}.text"))
        elif kind == "tool_use":
            arguments = block.get("input")
            if arguments is None:
                arguments = {}
            if not isinstance(arguments, dict):
                raise _fail(f"{sub}.input: expected an object", f"{sub}.input")
            calls.append(
                {
                    "id": _text_of(block.get("id"), f"{sub}.id"),
                    "type": "function",
                    "function": {
                        "name": _text_of(block.get("name"), f"{sub}.name"),
                        "arguments": dumps(arguments).decode(),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # see the module docstring
        else:
            raise _fail(f"{sub}.type: '{kind}' blocks cannot be sent to this model", f"{sub}.type")
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        return  # only thinking: nothing a chat upstream can read
    out.append(message)


def _tools_to_chat(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _fail("tools: expected a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _fail(f"{param}: expected an object", param)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _fail(
                f"{param}.type: '{kind}' is a server tool that runs on Anthropic's side; "
                "this model can only be given client tools",
                f"{param}.type",
            )
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _fail(f"{param}.input_schema: expected an object", f"{param}.input_schema")
        function: dict[str, Any] = {
            "name": _text_of(tool.get("name"), f"{param}.name"),
            "parameters": schema,
        }
        description = tool.get("description")
        if isinstance(description, str):
            function["description"] = description
        if tool.get("strict") is True:
            function["strict"] = True
        out.append({"type": "function", "function": function})
    return out


def _tool_choice_to_chat(choice: object, chat: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        raise _fail("tool_choice: expected an object", "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool":
        name = _text_of(choice.get("name"), "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise _fail(
            f"tool_choice.type: '{kind}' is not one of auto, any, tool, none", "tool_choice.type"
        )
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        chat["parallel_tool_calls"] = False


def _format_to_chat(fmt: object, param: str) -> dict[str, Any]:
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise _fail(f"{param}.type: only json_schema output formats are supported", f"{param}.type")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise _fail(f"{param}.schema: expected an object", f"{param}.schema")
    return {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A `POST /v1/messages` body as a chat body (see the module docstring for what maps how).
    Raises `InvalidRequestError` naming the field (`param="messages[2].content[0].type"`)."""
    return _to_chat(body, counting=False)


def count_tokens_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A `POST /v1/messages/count_tokens` body as a chat body, for the gateway's own token
    estimate when the target cannot count (`max_tokens` is not required there)."""
    return _to_chat(body, counting=True)


def _to_chat(body: dict[str, Any], *, counting: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model: a model name is required", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail("messages: at least one message is required", "messages")
    chat_messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _system_text(system)
        if text:
            chat_messages.append({"role": "system", "content": text})
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _fail(f"{param}: expected an object", param)
        role = message.get("role")
        if role == "user":
            _user_to_chat(message.get("content"), f"{param}.content", chat_messages)
        elif role == "assistant":
            _assistant_to_chat(message.get("content"), f"{param}.content", chat_messages)
        else:
            raise _fail(f"{param}.role: '{role}' is not user or assistant", f"{param}.role")
    chat: dict[str, Any] = {"model": model, "messages": chat_messages}

    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        if not counting:
            raise _fail("max_tokens: a maximum number of tokens is required", "max_tokens")
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _fail("max_tokens: expected a positive integer", "max_tokens")
    else:
        chat["max_completion_tokens"] = max_tokens
    for refused in ("mcp_servers", "container"):
        if body.get(refused):
            raise _fail(
                f"{refused}: runs on Anthropic's side; this model cannot provide it", refused
            )
    stops = body.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _fail("stop_sequences: expected a list of strings", "stop_sequences")
        chat["stop"] = stops
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _fail(f"{name}: expected a number", name)
            chat[name] = value
    tools = body.get("tools")
    if tools:
        chat["tools"] = _tools_to_chat(tools)
        if body.get("tool_choice") is not None:
            _tool_choice_to_chat(body["tool_choice"], chat)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    output_config = body.get("output_config")
    if isinstance(output_config, dict) and output_config.get("format") is not None:
        chat["response_format"] = _format_to_chat(output_config["format"], "output_config.format")
    elif body.get("output_format") is not None:  # the structured-outputs beta's spelling
        chat["response_format"] = _format_to_chat(body["output_format"], "output_format")
    if body.get("stream") is True and not counting:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


# --- client side: chat answer -> Message -----------------------------------------------------


def wants_thinking(request: dict[str, Any]) -> bool:
    """Whether a Messages request enabled thinking (then reasoning is answered as `thinking`
    blocks, as Anthropic does; otherwise it is left out)."""
    thinking = request.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


_STOP_REASONS: Final[dict[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def _stop_reason(
    finish: object, matched: object, request: dict[str, Any], tools: bool
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for a chat `finish_reason`; `matched` is vLLM's
    `stop_reason` (the stop string it hit), the only way to tell a stop sequence apart."""
    if tools and finish in ("stop", "tool_calls", "function_call", None):
        return "tool_use", None  # some upstreams (Ollama) finish a tool call with "stop"
    if isinstance(matched, str) and matched:
        stops = request.get("stop_sequences")
        if isinstance(stops, list) and matched in stops:
            return "stop_sequence", matched
    if isinstance(finish, str):
        return _STOP_REASONS.get(finish, "end_turn"), None
    return "end_turn", None


def _tool_input(arguments: object) -> dict[str, Any]:
    """A chat tool call's `arguments` as a `tool_use` input. Invalid JSON (a small model's
    slip) becomes `{}`: the block must hold an object, and the client's schema check then tells
    the model what is missing."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _reasoning_of(message: dict[str, Any]) -> str | None:
    value = message.get("reasoning_content")
    if value is None:
        value = message.get("reasoning")  # vLLM's and OpenRouter's name
    return value if isinstance(value, str) and value else None


def from_chat(
    answer: dict[str, Any], request: dict[str, Any], *, message_id: str
) -> dict[str, Any]:
    """A `chat.completion` answer as a Messages `message` object for `request` (the client's
    Messages body); its `model` is the one the client asked for, as in `StreamFromChat`, whose
    `message_start` is written before the upstream has named its model."""
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        message = {}
    content: list[dict[str, Any]] = []
    if wants_thinking(request):
        reasoning = _reasoning_of(message)
        if reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, list):  # content parts
        text = "".join(p.get("text") or "" for p in text if isinstance(p, dict))
    refusal = message.get("refusal")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    elif isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for i, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            function = call.get("function") or {}
            call_id = call.get("id")
            content.append(
                {
                    "type": "tool_use",
                    "id": call_id
                    if isinstance(call_id, str) and call_id
                    else f"toolu_{message_id}_{i}",
                    "name": str(function.get("name") or ""),
                    "input": _tool_input(function.get("arguments")),
                }
            )
    tools = any(block["type"] == "tool_use" for block in content)
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    matched = choice.get("stop_reason") if isinstance(choice, dict) else None
    stop_reason, stop_sequence = _stop_reason(finish, matched, request, tools)
    if isinstance(refusal, str) and refusal and not text:
        stop_reason = "refusal"
    u = Usage.from_json(answer.get("usage")) or Usage()
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request.get("model") or answer.get("model") or "",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage_json(u),
    }


# --- client side: chat stream -> Messages events ---------------------------------------------

PING: Final = sse.encode(b'{"type":"ping"}', event="ping")
_DELTA_HEAD: Final = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_STOP_HEAD: Final = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
_END: Final = b"}}\n\n"
_MESSAGE_STOP: Final = sse.encode(b'{"type":"message_stop"}', event="message_stop")

# What the open content block is.
_NONE: Final = 0
_TEXT: Final = 1
_THINKING: Final = 2
_TOOL: Final = 3


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return sse.encode(
        dumps({"type": "content_block_start", "index": index, "content_block": block}),
        event="content_block_start",
    )


class StreamFromChat:
    """Turns the chunks of a chat stream into the events of a Messages stream.

    `start()` once (`message_start`, `ping`), `feed()` per parsed `chat.completion.chunk`,
    then `finish(usage)` (`content_block_stop`, `message_delta` with the stop reason and usage,
    `message_stop`) or, for a failure after the first byte, `fail(err)` (`event: error`).
    Only choice 0 is read (a Messages answer has one). The usage given to `finish()` wins over
    the one seen in the chunks; input tokens are known only then, so `message_start` says 0 and
    `message_delta` carries every count (the SDKs take the later values)."""

    __slots__ = (
        "_delta_head",
        "_finish",
        "_index",
        "_kind",
        "_matched",
        "_message_id",
        "_model",
        "_request",
        "_thinking",
        "_tool_blocks",
        "_tool_current",
        "_usage",
    )

    def __init__(self, request: dict[str, Any], *, message_id: str) -> None:
        self._request = request
        self._message_id = message_id
        model = request.get("model")
        self._model = model if isinstance(model, str) else ""
        self._thinking = wants_thinking(request)
        self._index = -1  # the last content block opened
        self._kind = _NONE  # what the open block is (_NONE: none is open)
        self._delta_head = b""  # the bytes before the delta JSON of the open block
        self._tool_blocks: dict[int, int] = {}  # chat tool call index -> block index
        self._tool_current = -1  # the chat tool call index of the open tool block
        self._finish: object = None
        self._matched: object = None
        self._usage: object = None

    def start(self) -> bytes:
        message = {
            "type": "message_start",
            "message": {
                "id": self._message_id,
                "type": "message",
                "role": "assistant",
                "model": self._model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        }
        return sse.encode(dumps(message), event="message_start") + PING

    def _open(self, kind: int, block: dict[str, Any], delta_type: bytes) -> bytes:
        out = self._close()
        self._index += 1
        self._kind = kind
        self._delta_head = (
            _DELTA_HEAD + str(self._index).encode() + b',"delta":{"type":"' + delta_type + b'",'
        )
        return out + _block_start(self._index, block)

    def _close(self) -> bytes:
        if self._kind == _NONE:
            return b""
        self._kind = _NONE
        return _STOP_HEAD + str(self._index).encode() + b"}\n\n"

    def feed(self, chunk: dict[str, Any]) -> bytes:
        u = chunk.get("usage")
        if u:
            self._usage = u
        choices = chunk.get("choices")
        if not choices:
            return b""
        choice = choices[0]
        if choice.get("index", 0) != 0:
            return b""
        finish = choice.get("finish_reason")
        if finish:
            self._finish = finish
            self._matched = choice.get("stop_reason")
        delta = choice.get("delta")
        if not delta:
            return b""
        text = delta.get("content")
        calls = delta.get("tool_calls")
        reasoning = None
        if self._thinking:
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if self._kind == _TEXT and text and not calls and not reasoning:
            # the common case: one more piece of the open text block
            return self._delta_head + b'"text":' + dumps(text) + _END
        out = b""
        if reasoning and isinstance(reasoning, str):
            if self._kind != _THINKING:
                out += self._open(
                    _THINKING,
                    {"type": "thinking", "thinking": "", "signature": ""},
                    b"thinking_delta",
                )
            out += self._delta_head + b'"thinking":' + dumps(reasoning) + _END
        if text and isinstance(text, str):
            if self._kind != _TEXT:
                out += self._open(_TEXT, {"type": "text", "text": ""}, b"text_delta")
            out += self._delta_head + b'"text":' + dumps(text) + _END
        if calls and isinstance(calls, list):
            out += self._tool_deltas(calls)
        return out

    def _tool_deltas(self, calls: list[Any]) -> bytes:
        out = b""
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            key = call.get("index")
            if not isinstance(key, int):
                key = position
            function = call.get("function") or {}
            call_id = call.get("id")
            block = self._tool_blocks.get(key)
            if block is None:
                if not (isinstance(call_id, str) and call_id):
                    call_id = f"toolu_{self._message_id}_{key}"
                out += self._open(
                    _TOOL,
                    {
                        "type": "tool_use",
                        "id": call_id,
                        "name": str(function.get("name") or ""),
                        "input": {},
                    },
                    b"input_json_delta",
                )
                self._tool_blocks[key] = block = self._index
                self._tool_current = key
            arguments = function.get("arguments")
            if isinstance(arguments, dict):
                arguments = dumps(arguments).decode()
            if not arguments or not isinstance(arguments, str):
                continue
            if self._kind == _TOOL and self._tool_current == key:
                out += self._delta_head + b'"partial_json":' + dumps(arguments) + _END
            else:
                # A fragment of an earlier call after another block began (an upstream that
                # interleaves calls): sent to its own block index, which the SDKs accept.
                out += (
                    _DELTA_HEAD
                    + str(block).encode()
                    + b',"delta":{"type":"input_json_delta","partial_json":'
                    + dumps(arguments)
                    + _END
                )
        return out

    def finish(self, usage: Usage | None) -> bytes:
        out = self._close()
        if usage is None:
            usage = Usage.from_json(self._usage) or Usage()
        stop_reason, stop_sequence = _stop_reason(
            self._finish, self._matched, self._request, bool(self._tool_blocks)
        )
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": usage_json(usage),
        }
        return out + sse.encode(dumps(delta), event="message_delta") + _MESSAGE_STOP

    def fail(self, err: GatewayError) -> bytes:
        return error_event(err)


# --- provider side: chat request -> Messages ------------------------------------------------

_TOOL_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")


def _tool_id(value: object, param: str) -> str:
    """A chat tool call id as Anthropic accepts it (`^[a-zA-Z0-9_-]+$`)."""
    text = _text_of(value, param)
    return _TOOL_ID_BAD.sub("_", text) or "_"


def _data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a base64 `data:` URL, else None."""
    if not url.startswith("data:"):
        return None
    head, comma, data = url.partition(",")
    if not comma or not head.endswith(";base64"):
        return None
    return head[5 : -len(";base64")], data


def _cached(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Carry a content part's `cache_control` (a prompt-cache breakpoint, as OpenRouter's chat
    clients mark them) onto its Messages block."""
    cache = part.get("cache_control")
    if cache is not None:
        block["cache_control"] = cache
    return block


def _chat_parts(content: object, param: str, *, user: bool) -> list[dict[str, Any]]:
    """A chat message `content` as Messages blocks (empty text dropped: Anthropic refuses it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _fail(f"{param}: expected a string or a list of content parts", param)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        sub = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" or kind == "refusal":
            field = "text" if kind == "text" else "refusal"
            text = _text_of(part.get(field), f"{sub}.{field}")
            if text:
                blocks.append(_cached({"type": "text", "text": text}, part))
        elif kind == "image_url" and user:
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            url = _text_of(url, f"{sub}.image_url.url")
            inline = _data_url(url)
            if inline is not None:
                source = {"type": "base64", "media_type": inline[0], "data": inline[1]}
            elif url.startswith(("http://", "https://")):
                source = {"type": "url", "url": url}
            else:
                raise _fail(
                    f"{sub}.image_url.url: expected an http(s) URL or a base64 data URL",
                    f"{sub}.image_url.url",
                )
            blocks.append(_cached({"type": "image", "source": source}, part))
        elif kind == "file" and user:
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, dict) else None
            inline = _data_url(data) if isinstance(data, str) else None
            if inline is None:
                raise _fail(
                    f"{sub}.file: only inline file_data (a base64 data URL) can be sent to this "
                    "model",
                    f"{sub}.file",
                )
            source = {"type": "base64", "media_type": inline[0], "data": inline[1]}
            blocks.append(_cached({"type": "document", "source": source}, part))
        else:
            raise _fail(f"{sub}.type: '{kind}' content cannot be sent to this model", f"{sub}.type")
    return blocks


def _append_turn(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Add blocks as a turn; consecutive turns of one role become one (tool results of one
    assistant turn and the user's next words share a user turn, results first)."""
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _tool_to_messages(tool: object, param: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise _fail(
            f"{param}.type: '{kind}' tools cannot be sent to this model (only function tools)",
            f"{param}.type",
        )
    function = tool.get("function")
    if not isinstance(function, dict):
        raise _fail(f"{param}.function: expected an object", f"{param}.function")
    schema = function.get("parameters")
    out: dict[str, Any] = {
        "name": _text_of(function.get("name"), f"{param}.function.name"),
        "input_schema": schema
        if isinstance(schema, dict)
        else {"type": "object", "properties": {}},
    }
    description = function.get("description")
    if isinstance(description, str) and description:
        out["description"] = description
    if tool.get("cache_control") is not None:
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice_to_messages(choice: object) -> dict[str, Any] | None:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        return {"type": "tool", "name": _text_of(name, "tool_choice.function.name")}
    raise _fail("tool_choice: expected auto, required, none or a function", "tool_choice")


def _assistant_blocks(message: dict[str, Any], param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    # Thinking blocks a chat client kept from an earlier answer (`response_to_chat` puts them
    # in `thinking_blocks`, the convention of LiteLLM): Anthropic needs them back, signed, when
    # thinking and tools are used together.
    kept = message.get("thinking_blocks")
    if isinstance(kept, list):
        blocks.extend(
            b
            for b in kept
            if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking")
        )
    blocks.extend(_chat_parts(message.get("content"), f"{param}.content", user=False))
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise _fail(f"{param}.tool_calls: expected a list", f"{param}.tool_calls")
        for k, call in enumerate(calls):
            sub = f"{param}.tool_calls[{k}]"
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                raise _fail(f"{sub}.function: expected an object", f"{sub}.function")
            arguments = function.get("arguments")
            if arguments is None or arguments == "":
                value: object = {}
            elif isinstance(arguments, str):
                try:
                    value = loads(arguments)
                except ValueError:
                    value = None
            else:
                value = arguments
            if not isinstance(value, dict):
                raise _fail(
                    f"{sub}.function.arguments: expected a JSON object",
                    f"{sub}.function.arguments",
                )
            blocks.append(
                {
                    "type": "tool_use",
                    "id": _tool_id(call.get("id"), f"{sub}.id"),
                    "name": _text_of(function.get("name"), f"{sub}.function.name"),
                    "input": value,
                }
            )
    return blocks


def _tool_result_block(message: dict[str, Any], param: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": _tool_id(message.get("tool_call_id"), f"{param}.tool_call_id"),
    }
    content = message.get("content")
    if isinstance(content, str):
        block["content"] = content
    else:
        parts = _chat_parts(content, f"{param}.content", user=True)
        if parts:
            block["content"] = parts
    return block


def request_from_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A chat body as a Messages request for a Messages-only target (see the module docstring
    for what maps how). Raises `InvalidRequestError` naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    chat_messages = body.get("messages")
    if not isinstance(chat_messages, list) or not chat_messages:
        raise _fail("messages: at least one message is required", "messages")
    n = body.get("n")
    if n is not None and n != 1:
        raise _fail("n: this model answers one choice per request", "n")
    if body.get("logprobs") is True:
        raise _fail("logprobs: this model cannot return log probabilities", "logprobs")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise _fail("audio: this model cannot answer with audio", "audio")

    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(chat_messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _fail(f"{param}: expected an object", param)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_chat_parts(message.get("content"), f"{param}.content", user=False))
        elif role == "user":
            blocks = _chat_parts(message.get("content"), f"{param}.content", user=True)
            _append_turn(messages, "user", blocks)
        elif role == "assistant":
            _append_turn(messages, "assistant", _assistant_blocks(message, param))
        elif role == "tool":
            _append_turn(messages, "user", [_tool_result_block(message, param)])
        else:
            raise _fail(
                f"{param}.role: '{role}' messages cannot be sent to this model", f"{param}.role"
            )

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    out: dict[str, Any] = {"model": body.get("model"), "max_tokens": max_tokens}
    if system:
        if any("cache_control" in block for block in system):
            out["system"] = system
        else:
            out["system"] = "\n".join(block["text"] for block in system)
    out["messages"] = messages

    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(temperature, 1.0)  # Anthropic's range is 0..1
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    for name in ("top_k", "thinking"):  # Anthropic's own fields, sent by clients that know
        if body.get(name) is not None:
            out[name] = body[name]
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}

    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise _fail("tools: expected a list", "tools")
        out["tools"] = [_tool_to_messages(t, f"tools[{i}]") for i, t in enumerate(tools)]
        choice = body.get("tool_choice")
        tool_choice = _tool_choice_to_messages(choice) if choice is not None else None
        if body.get("parallel_tool_calls") is False:
            if tool_choice is None:
                tool_choice = {"type": "auto"}
            if tool_choice["type"] != "none":
                tool_choice["disable_parallel_tool_use"] = True
        if tool_choice is not None:
            out["tool_choice"] = tool_choice

    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise _fail(
                    "response_format.json_schema.schema: expected an object",
                    "response_format.json_schema.schema",
                )
            out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        elif kind == "json_object":
            raise _fail(
                "response_format.type: json_object has no equivalent for this model; "
                "use json_schema with a schema",
                "response_format.type",
            )
    if body.get("stream") is True:
        out["stream"] = True
    return out


# --- provider side: Messages answer -> chat -------------------------------------------------

_FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: object) -> str:
    """The chat `finish_reason` of an Anthropic `stop_reason`."""
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def response_to_chat(message: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    """A Messages `message` object as a `chat.completion` answer. Thinking becomes
    `reasoning_content` (and the blocks, signatures kept, `thinking_blocks`)."""
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    content = message.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": dumps(block.get("input") or {}).decode(),
                    },
                }
            )
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking") or ""))
            thinking_blocks.append(block)
        elif kind == "redacted_thinking":
            thinking_blocks.append(block)
    text = "".join(texts)
    chat_message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not calls else None,
        "refusal": None,
    }
    if reasoning:
        chat_message["reasoning_content"] = "".join(reasoning)
    if thinking_blocks:
        chat_message["thinking_blocks"] = thinking_blocks
    if calls:
        chat_message["tool_calls"] = calls
    answer: dict[str, Any] = {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": chat_message,
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason")),
            }
        ],
    }
    u = usage(message.get("usage"))
    if u is not None:
        answer["usage"] = chat_usage_json(u)
    return answer


def _merge_usage(into: dict[str, Any], data: object) -> None:
    """Fold a stream's usage into the running one: counts are cumulative, so a later value
    replaces an earlier one, and a count left out keeps its earlier value."""
    if isinstance(data, dict):
        for key, value in data.items():
            if value is not None:
                into[key] = value


def _frame_data(frame: bytes) -> bytes | None:
    """The data of a frame shaped as Anthropic writes every event (`event: NAME`, one `data:`
    line), sliced out without a parse; None for any other shape (`sse.parse` reads those)."""
    if not frame.startswith(b"event: "):
        return None
    start = frame.find(b"\ndata: ") + 7
    if start < 7:
        return None
    end = frame.find(b"\n", start)
    if end < 0:
        return frame[start:]
    if end >= len(frame) - 2 and not frame[end:].strip(b"\n"):
        return frame[start:end]
    return None


class StreamToChat:
    """Turns the events of a Messages stream into `chat.completion.chunk` dicts.

    `feed()` per parsed SSE event, or `feed_frame()` per raw frame, returns the chunks to send
    (often one, none for `ping` and block stops); `message_delta` gives the chunk with the
    `finish_reason`, `message_stop` the usage-only chunk (empty `choices`) that ends a chat
    stream asked for usage. An `error` event raises `UpstreamError` (its `code` is Anthropic's
    error type); the caller ends the stream with its in-band error. `usage` is what the stream
    has reported so far."""

    __slots__ = ("_created", "_id", "_model", "_tools", "_usage")

    def __init__(self, *, created: int | None = None) -> None:
        self._created = int(time.time()) if created is None else created
        self._id = ""
        self._model = ""
        self._tools: dict[object, int] = {}  # content block index -> chat tool call index
        self._usage: dict[str, Any] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def feed_frame(self, frame: bytes) -> list[dict[str, Any]]:
        """`feed()` for one raw frame as `sse.Framer` cuts it (LF line ends): the usual shape is
        sliced rather than parsed."""
        data = _frame_data(frame)
        if data is not None:
            return self._feed(data)
        event = sse.parse(frame)
        return self._feed(event.data) if event.has_data else []

    def feed(self, event: sse.Event) -> list[dict[str, Any]]:
        return self._feed(event.data)

    def _feed(self, raw: bytes) -> list[dict[str, Any]]:
        try:
            data = loads(raw)
        except ValueError:
            raise UpstreamError("The upstream sent a stream event that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError("The upstream sent a stream event that is not a JSON object")
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if dtype == "input_json_delta":
                index = self._tools.get(data.get("index"), 0)
                fragment = delta.get("partial_json", "")
                return [
                    self._chunk(
                        {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
                    )
                ]
            if dtype == "thinking_delta":
                return [self._chunk({"reasoning_content": delta.get("thinking", "")})]
            return []  # signature_delta, citations_delta: nothing chat can carry
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            btype = block.get("type")
            if btype == "tool_use":
                index = self._tools[data.get("index")] = len(self._tools)
                tool_input = block.get("input")
                arguments = dumps(tool_input).decode() if tool_input else ""
                call = {
                    "index": index,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
                return [self._chunk({"tool_calls": [call]})]
            if btype == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            if btype == "thinking" and block.get("thinking"):
                return [self._chunk({"reasoning_content": block["thinking"]})]
            return []
        if kind == "message_start":
            message = data.get("message") or {}
            self._id = str(message.get("id") or "")
            self._model = str(message.get("model") or "")
            _merge_usage(self._usage, message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "message_delta":
            _merge_usage(self._usage, data.get("usage"))
            delta = data.get("delta") or {}
            return [self._chunk({}, finish_reason(delta.get("stop_reason")))]
        if kind == "message_stop":
            u = self.usage
            if u is None:
                return []
            return [
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": chat_usage_json(u),
                }
            ]
        if kind == "error":
            err = data.get("error") or {}
            etype = str(err.get("type") or "api_error")
            message = str(err.get("message") or "stream failed")
            raise UpstreamError(f"The upstream stream failed: {etype}: {message}", code=etype)
        return []  # ping, content_block_stop, and events added after this was written

    @property
    def usage(self) -> Usage | None:
        return usage(self._usage) if self._usage else None


class StreamUsage:
    """Reads the usage of a Messages stream passed through natively, from its `message_start`
    and `message_delta` events (the others are not parsed)."""

    __slots__ = ("_usage",)

    def __init__(self) -> None:
        self._usage: dict[str, Any] = {}

    def feed_frame(self, frame: bytes) -> None:
        """`feed()` for one raw frame as `sse.Framer` cuts it; frames of other events are only
        looked at, not parsed."""
        if frame.startswith((b"event: message_delta", b"event: message_start")):
            self.feed(sse.parse(frame))

    def feed(self, event: sse.Event) -> None:
        name = event.event
        if name != "message_delta" and name != "message_start":
            return
        try:
            data = loads(event.data)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if name == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                _merge_usage(self._usage, message.get("usage"))
        else:
            _merge_usage(self._usage, data.get("usage"))

    @property
    def usage(self) -> Usage | None:
        return usage(self._usage) if self._usage else None
