"""The client side of the Messages translation: a Messages client whose target speaks chat.

`to_chat` (and `count_tokens_to_chat`) turn the request into a chat body; `from_chat` turns a
whole chat answer into a `message` object, `StreamFromChat` a chat stream, chunk by chunk, into
Anthropic's event stream. What maps how is told in the package docstring (`aigw.dialects.messages`).
"""

from __future__ import annotations

from typing import Any, Final

from aigw import sse
from aigw.dialects.messages.wire import error_event, refuse, text_of, usage_json
from aigw.errors import GatewayError, InvalidRequestError
from aigw.exchange import Usage
from aigw.jsonutil import dumps, loads

# --- client side: Messages request -> chat --------------------------------------------------


def _system_text(system: object) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise refuse("system: expected a string or a list of text blocks", "system")
    texts = []
    for i, block in enumerate(system):
        param = f"system[{i}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise refuse(f"{param}: system blocks must be text blocks", f"{param}.type")
        texts.append(text_of(block.get("text"), f"{param}.text"))
    return "\n".join(texts)


def _image_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise refuse(f"{param}.source: expected an object", f"{param}.source")
    kind = source.get("type")
    if kind == "base64":
        media = text_of(source.get("media_type"), f"{param}.source.media_type")
        data = text_of(source.get("data"), f"{param}.source.data")
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        url = text_of(source.get("url"), f"{param}.source.url")
    else:
        raise refuse(
            f"{param}.source.type: image source '{kind}' cannot be sent to this model "
            "(only base64 and url images can)",
            f"{param}.source.type",
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise refuse(f"{param}.source: expected an object", f"{param}.source")
    kind = source.get("type")
    if kind == "text":
        return {"type": "text", "text": text_of(source.get("data"), f"{param}.source.data")}
    if kind == "base64":
        media = text_of(source.get("media_type"), f"{param}.source.media_type")
        data = text_of(source.get("data"), f"{param}.source.data")
        file: dict[str, Any] = {"file_data": f"data:{media};base64,{data}"}
        title = block.get("title")
        file["filename"] = title if isinstance(title, str) and title else "document.pdf"
        return {"type": "file", "file": file}
    raise refuse(
        f"{param}.source.type: document source '{kind}' cannot be sent to this model "
        "(only base64 and text documents can)",
        f"{param}.source.type",
    )


def _tool_result(
    block: dict[str, Any], param: str, attachments: list[dict[str, Any]]
) -> dict[str, Any]:
    tool_use_id = text_of(block.get("tool_use_id"), f"{param}.tool_use_id")
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
                texts.append(text_of(part.get("text"), f"{sub}.text"))
            elif kind == "image":
                attachments.append(_image_part(part, sub))
            elif kind == "document":
                doc = _document_part(part, sub)
                if doc["type"] == "text":
                    texts.append(doc["text"])
                else:
                    attachments.append(doc)
            else:
                raise refuse(
                    f"{sub}.type: '{kind}' blocks in a tool result cannot be sent to this model",
                    f"{sub}.type",
                )
        text = "\n".join(texts)
    else:
        raise refuse(f"{param}.content: expected a string or a list of blocks", f"{param}.content")
    if block.get("is_error") is True:
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _user_to_chat(content: object, param: str, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    if not isinstance(content, list):
        raise refuse(f"{param}: expected a string or a list of blocks", param)
    tools: list[dict[str, Any]] = []
    # images and files of tool results: chat tool messages carry text only
    attachments: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        sub = f"{param}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": text_of(block.get("text"), f"{sub}.text")})
        elif kind == "tool_result":
            tools.append(_tool_result(block, sub, attachments))
        elif kind == "image":
            parts.append(_image_part(block, sub))
        elif kind == "document":
            parts.append(_document_part(block, sub))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise refuse(f"{sub}.type: '{kind}' blocks cannot be sent to this model", f"{sub}.type")
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
        raise refuse(f"{param}: expected a string or a list of blocks", param)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        sub = f"{param}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(text_of(block.get("text"), f"{sub}.text"))
        elif kind == "tool_use":
            arguments = block.get("input")
            if arguments is None:
                arguments = {}
            if not isinstance(arguments, dict):
                raise refuse(f"{sub}.input: expected an object", f"{sub}.input")
            calls.append(
                {
                    "id": text_of(block.get("id"), f"{sub}.id"),
                    "type": "function",
                    "function": {
                        "name": text_of(block.get("name"), f"{sub}.name"),
                        "arguments": dumps(arguments).decode(),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # see the module docstring
        else:
            raise refuse(f"{sub}.type: '{kind}' blocks cannot be sent to this model", f"{sub}.type")
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        return  # only thinking: nothing a chat upstream can read
    out.append(message)


def _tools_to_chat(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise refuse("tools: expected a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise refuse(f"{param}: expected an object", param)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise refuse(
                f"{param}.type: '{kind}' is a server tool that runs on Anthropic's side; "
                "this model can only be given client tools",
                f"{param}.type",
            )
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise refuse(f"{param}.input_schema: expected an object", f"{param}.input_schema")
        function: dict[str, Any] = {
            "name": text_of(tool.get("name"), f"{param}.name"),
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
        raise refuse("tool_choice: expected an object", "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool":
        name = text_of(choice.get("name"), "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise refuse(
            f"tool_choice.type: '{kind}' is not one of auto, any, tool, none", "tool_choice.type"
        )
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        chat["parallel_tool_calls"] = False


def _format_to_chat(fmt: object, param: str) -> dict[str, Any]:
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise refuse(
            f"{param}.type: only json_schema output formats are supported", f"{param}.type"
        )
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise refuse(f"{param}.schema: expected an object", f"{param}.schema")
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
        raise refuse("model: a model name is required", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise refuse("messages: at least one message is required", "messages")
    chat_messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _system_text(system)
        if text:
            chat_messages.append({"role": "system", "content": text})
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise refuse(f"{param}: expected an object", param)
        role = message.get("role")
        if role == "user":
            _user_to_chat(message.get("content"), f"{param}.content", chat_messages)
        elif role == "assistant":
            _assistant_to_chat(message.get("content"), f"{param}.content", chat_messages)
        else:
            raise refuse(f"{param}.role: '{role}' is not user or assistant", f"{param}.role")
    chat: dict[str, Any] = {"model": model, "messages": chat_messages}

    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        if not counting:
            raise refuse("max_tokens: a maximum number of tokens is required", "max_tokens")
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise refuse("max_tokens: expected a positive integer", "max_tokens")
    else:
        chat["max_completion_tokens"] = max_tokens
    for refused in ("mcp_servers", "container"):
        if body.get(refused):
            raise refuse(
                f"{refused}: runs on Anthropic's side; this model cannot provide it", refused
            )
    stops = body.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise refuse("stop_sequences: expected a list of strings", "stop_sequences")
        chat["stop"] = stops
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise refuse(f"{name}: expected a number", name)
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
