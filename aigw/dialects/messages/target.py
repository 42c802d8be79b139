"""The target side of the Messages translation: a chat request whose target speaks only Messages
(Anthropic's API), and the answers back.

`request_from_chat` builds the Messages request; `response_to_chat` and `StreamToChat` turn the
answer, whole or streamed, back into chat; `StreamUsage` reads the usage of a Messages stream
passed through natively. What maps how is told in the package docstring.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final

from aigw import sse
from aigw.dialects.messages.wire import chat_usage_json, refuse, text_of, usage
from aigw.errors import InvalidRequestError, UpstreamError
from aigw.exchange import Usage
from aigw.jsonutil import dumps, loads

#: `max_tokens` of a Messages request built from a chat request that set none (Anthropic
#: requires it); every current Claude model can produce this many.
DEFAULT_MAX_TOKENS: Final = 4096

# --- provider side: chat request -> Messages ------------------------------------------------

_TOOL_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")


def _tool_id(value: object, param: str) -> str:
    """A chat tool call id as Anthropic accepts it (`^[a-zA-Z0-9_-]+$`)."""
    text = text_of(value, param)
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
        raise refuse(f"{param}: expected a string or a list of content parts", param)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        sub = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" or kind == "refusal":
            field = "text" if kind == "text" else "refusal"
            text = text_of(part.get(field), f"{sub}.{field}")
            if text:
                blocks.append(_cached({"type": "text", "text": text}, part))
        elif kind == "image_url" and user:
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            url = text_of(url, f"{sub}.image_url.url")
            inline = _data_url(url)
            if inline is not None:
                source = {"type": "base64", "media_type": inline[0], "data": inline[1]}
            elif url.startswith(("http://", "https://")):
                source = {"type": "url", "url": url}
            else:
                raise refuse(
                    f"{sub}.image_url.url: expected an http(s) URL or a base64 data URL",
                    f"{sub}.image_url.url",
                )
            blocks.append(_cached({"type": "image", "source": source}, part))
        elif kind == "file" and user:
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, dict) else None
            inline = _data_url(data) if isinstance(data, str) else None
            if inline is None:
                raise refuse(
                    f"{sub}.file: only inline file_data (a base64 data URL) can be sent to this "
                    "model",
                    f"{sub}.file",
                )
            source = {"type": "base64", "media_type": inline[0], "data": inline[1]}
            blocks.append(_cached({"type": "document", "source": source}, part))
        else:
            raise refuse(
                f"{sub}.type: '{kind}' content cannot be sent to this model", f"{sub}.type"
            )
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
        raise refuse(
            f"{param}.type: '{kind}' tools cannot be sent to this model (only function tools)",
            f"{param}.type",
        )
    function = tool.get("function")
    if not isinstance(function, dict):
        raise refuse(f"{param}.function: expected an object", f"{param}.function")
    schema = function.get("parameters")
    out: dict[str, Any] = {
        "name": text_of(function.get("name"), f"{param}.function.name"),
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
        return {"type": "tool", "name": text_of(name, "tool_choice.function.name")}
    raise refuse("tool_choice: expected auto, required, none or a function", "tool_choice")


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
            raise refuse(f"{param}.tool_calls: expected a list", f"{param}.tool_calls")
        for k, call in enumerate(calls):
            sub = f"{param}.tool_calls[{k}]"
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                raise refuse(f"{sub}.function: expected an object", f"{sub}.function")
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
                raise refuse(
                    f"{sub}.function.arguments: expected a JSON object",
                    f"{sub}.function.arguments",
                )
            blocks.append(
                {
                    "type": "tool_use",
                    "id": _tool_id(call.get("id"), f"{sub}.id"),
                    "name": text_of(function.get("name"), f"{sub}.function.name"),
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
        raise refuse("messages: at least one message is required", "messages")
    n = body.get("n")
    if n is not None and n != 1:
        raise refuse("n: this model answers one choice per request", "n")
    if body.get("logprobs") is True:
        raise refuse("logprobs: this model cannot return log probabilities", "logprobs")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise refuse("audio: this model cannot answer with audio", "audio")

    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(chat_messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise refuse(f"{param}: expected an object", param)
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
            raise refuse(
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
            raise refuse("tools: expected a list", "tools")
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
                raise refuse(
                    "response_format.json_schema.schema: expected an object",
                    "response_format.json_schema.schema",
                )
            out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        elif kind == "json_object":
            raise refuse(
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
