"""Chat answers and streams turned back into Responses objects and events (`from_chat`,
`StreamFromChat`), and Responses usage read (`usage`); see `aigw.dialects.responses`.

Size: one concept, the Responses answer: the whole object and the event stream are built from
the same item builders and must stay identical field for field.
"""

from __future__ import annotations

from typing import Any, Final

from aigw import sse
from aigw.errors import GatewayError
from aigw.exchange import Usage
from aigw.jsonutil import dumps

_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


# --- the answer ----------------------------------------------------------------------------


def from_chat(
    answer: dict[str, Any], request: dict[str, Any], *, response_id: str, created_at: int
) -> dict[str, Any]:
    """The `response` object for a whole chat completion answering `request` (the client's
    Responses body)."""
    ids = _Ids(response_id)
    output: list[dict[str, Any]] = []
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    if not isinstance(choice, dict):
        choice = {}
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    finish = choice.get("finish_reason")
    finish = finish if isinstance(finish, str) else None
    status = "incomplete" if finish in _INCOMPLETE else "completed"
    reasoning = _reasoning_text(message)
    if reasoning:
        output.append(_reasoning_item(ids.item("rs", len(output)), reasoning))
    content = message.get("content")
    text = content if isinstance(content, str) else _joined_text(content)
    refusal = message.get("refusal")
    refusal = refusal if isinstance(refusal, str) and refusal else None
    calls = message.get("tool_calls")
    calls = calls if isinstance(calls, list) else []
    if text or refusal or not (calls or output):
        parts: list[dict[str, Any]] = []
        if text or not refusal:
            parts.append(_output_text(text or "", _logprobs(choice.get("logprobs"))))
        if refusal:
            parts.append({"type": "refusal", "refusal": refusal})
        output.append(_message_item(ids.item("msg", len(output)), parts, status))
    for call in calls:
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        index = len(output)
        output.append(
            _call_item(
                ids.item("fc", index),
                _str(call.get("id")) or ids.item("call", index),
                _str(function.get("name")),
                _str(function.get("arguments")),
                "completed",
            )
        )
    response = _skeleton(request, response_id, created_at)
    response["status"] = status
    response["output"] = output
    if finish in _INCOMPLETE:
        response["incomplete_details"] = {"reason": _INCOMPLETE[finish]}
    response["usage"] = _usage_json(Usage.from_json(answer.get("usage")))
    return response


class StreamFromChat:
    """A chat completion stream, chunk by chunk, as the Responses event stream.

    `start()` writes `response.created` and `response.in_progress`; `feed()` one parsed chat
    chunk's events (items open as their first delta arrives: reasoning, then the message, then
    one `function_call` per chat tool call, each closed when the chat finish reason comes);
    `finish()` the closing `response.completed` (or `response.incomplete`) with the usage;
    `fail()` a `response.failed` and an `error` event for a failure after the first byte.
    Function calls stay open until the finish reason, so an upstream that interleaves the
    deltas of parallel calls still yields whole arguments. Only choice 0 is read (`to_chat`
    never asks for more)."""

    __slots__ = (
        "_call_by_index",
        "_calls",
        "_created_at",
        "_ended",
        "_finish",
        "_ids",
        "_message",
        "_output",
        "_reasoning",
        "_request",
        "_response_id",
        "_seq",
        "_started",
        "_usage_raw",
    )

    def __init__(self, request: dict[str, Any], *, response_id: str, created_at: int) -> None:
        self._request = request
        self._response_id = response_id
        self._created_at = created_at
        self._ids = _Ids(response_id)
        self._seq = 0
        self._started = False
        self._ended = False
        #: the output items in order: a dict once closed, the open item's state before
        self._output: list[dict[str, Any] | _Message | _Reasoning | _Call] = []
        self._message: _Message | None = None
        self._reasoning: _Reasoning | None = None
        self._calls: list[_Call] = []  # open function calls
        self._call_by_index: dict[int, _Call] = {}
        self._finish: str | None = None
        self._usage_raw: Any = None

    # -- lifecycle --

    def start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        response = _skeleton(self._request, self._response_id, self._created_at)
        return self._event({"type": "response.created", "response": response}) + self._event(
            {"type": "response.in_progress", "response": response}
        )

    def feed(self, chunk: dict[str, Any]) -> bytes:
        if self._ended or self._finish is not None:
            if not self._ended and chunk.get("usage"):
                self._usage_raw = chunk["usage"]
            return b""
        out = b"" if self._started else self.start()
        usage = chunk.get("usage")
        if usage:
            self._usage_raw = usage  # read once, at the end
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return out
        choice = choices[0]
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            return out
        delta = choice.get("delta")
        if delta and isinstance(delta, dict):
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                out += self._reasoning_delta(reasoning)
            content = delta.get("content")
            if content and isinstance(content, str):
                message = self._message
                logprobs = choice.get("logprobs")
                if message is not None and message.kind == "output_text" and not logprobs:
                    # the hot path: the event's pre-built prefix, the delta, the number
                    message.pieces.append(content)
                    seq = self._seq
                    self._seq = seq + 1
                    out += (
                        message.head
                        + dumps(content)
                        + b',"sequence_number":'
                        + str(seq).encode()
                        + b"}\n\n"
                    )
                else:
                    out += self._content_delta("output_text", content, logprobs)
            refusal = delta.get("refusal")
            if refusal and isinstance(refusal, str):
                out += self._content_delta("refusal", refusal, None)
            calls = delta.get("tool_calls")
            if calls and isinstance(calls, list):
                for position, call in enumerate(calls):
                    if isinstance(call, dict):
                        out += self._call_delta(call, position)
        finish = choice.get("finish_reason")
        if finish:
            self._finish = finish = str(finish)
            out += self._close_all("incomplete" if finish in _INCOMPLETE else "completed")
        return out

    def finish(self, usage: Usage | None) -> bytes:
        """The closing events; `usage` is the answer's usage when the caller read it (else the
        one the chunks carried, else null)."""
        if self._ended:
            return b""
        out = b"" if self._started else self.start()
        out += self._close_all("completed")
        if not self._output:  # an answer with nothing in it still has its (empty) message
            out += self._content_delta("output_text", "", None) + self._close_all("completed")
        self._ended = True
        if usage is None:
            usage = Usage.from_json(self._usage_raw)
        response = _skeleton(self._request, self._response_id, self._created_at)
        response["output"] = self._items("completed")
        response["usage"] = _usage_json(usage)
        finish = self._finish
        if finish in _INCOMPLETE:
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": _INCOMPLETE[finish]}
            return out + self._event({"type": "response.incomplete", "response": response})
        response["status"] = "completed"
        return out + self._event({"type": "response.completed", "response": response})

    def fail(self, err: GatewayError) -> bytes:
        """A failure after the first byte: `response.failed` (the output so far, open items
        `incomplete`, and the error) then an `error` event. The `error` event also carries the
        error object under `error`, on which the openai SDKs raise."""
        if self._ended:
            return b""
        out = b"" if self._started else self.start()
        self._ended = True
        response = _skeleton(self._request, self._response_id, self._created_at)
        response["status"] = "failed"
        response["output"] = self._items("incomplete")
        response["error"] = {
            "code": _failure_code(err),
            "message": err.message,
            "param": err.param,
            "type": err.type,
        }
        response["usage"] = _usage_json(Usage.from_json(self._usage_raw))
        out += self._event({"type": "response.failed", "response": response})
        error = {"type": err.type, "code": err.code, "message": err.message, "param": err.param}
        return out + self._event(
            {
                "type": "error",
                "code": err.code,
                "message": err.message,
                "param": err.param,
                "error": error,
            }
        )

    # -- items --

    def _reasoning_delta(self, text: str) -> bytes:
        out = b""
        item = self._reasoning
        if item is None:
            out += self._close_message("completed")
            index = len(self._output)
            item = _Reasoning(self._ids.item("rs", index), index)
            self._reasoning = item
            self._output.append(item)
            out += self._event(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {"id": item.id, "type": "reasoning", "summary": [], "content": []},
                }
            )
            out += self._event(
                {
                    "type": "response.content_part.added",
                    "item_id": item.id,
                    "output_index": index,
                    "content_index": 0,
                    "part": {"type": "reasoning_text", "text": ""},
                }
            )
        item.pieces.append(text)
        return out + self._event(
            {
                "type": "response.reasoning_text.delta",
                "item_id": item.id,
                "output_index": item.index,
                "content_index": 0,
                "delta": text,
            }
        )

    def _content_delta(self, kind: str, text: str, logprobs: Any) -> bytes:
        """A delta of the message's text or refusal, opening the message or a new part."""
        out = b""
        message = self._message
        if message is None:
            out += self._close_reasoning()
            index = len(self._output)
            message = _Message(self._ids.item("msg", index), index)
            self._message = message
            self._output.append(message)
            out += self._event(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {
                        "id": message.id,
                        "type": "message",
                        "status": "in_progress",
                        "role": "assistant",
                        "content": [],
                    },
                }
            )
        if message.kind != kind:
            out += self._close_part(message)
            message.kind = kind
            part: dict[str, Any] = (
                _output_text("", [])
                if kind == "output_text"
                else {"type": "refusal", "refusal": ""}
            )
            out += self._event(
                {
                    "type": "response.content_part.added",
                    "item_id": message.id,
                    "output_index": message.index,
                    "content_index": len(message.parts),
                    "part": part,
                }
            )
            message.head = (
                b"event: response.output_text.delta\ndata: "
                b'{"type":"response.output_text.delta","item_id":'
                + dumps(message.id)
                + b',"output_index":'
                + str(message.index).encode()
                + b',"content_index":'
                + str(len(message.parts)).encode()
                + b',"logprobs":[],"delta":'
            )
        if not text:
            return out
        message.pieces.append(text)
        if kind == "refusal":
            return out + self._event(
                {
                    "type": "response.refusal.delta",
                    "item_id": message.id,
                    "output_index": message.index,
                    "content_index": len(message.parts),
                    "delta": text,
                }
            )
        probs = _logprobs(logprobs)
        message.logprobs.extend(probs)
        return out + self._event(
            {
                "type": "response.output_text.delta",
                "item_id": message.id,
                "output_index": message.index,
                "content_index": len(message.parts),
                "logprobs": [_delta_logprob(p) for p in probs],
                "delta": text,
            }
        )

    def _call_delta(self, delta: dict[str, Any], position: int) -> bytes:
        index = delta.get("index")
        if not isinstance(index, int):
            index = position
        function = delta.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        arguments = function.get("arguments")
        out = b""
        call = self._call_by_index.get(index)
        if call is None:
            out += self._close_reasoning() + self._close_message("completed")
            output_index = len(self._output)
            call = _Call(
                self._ids.item("fc", output_index),
                output_index,
                _str(delta.get("id")) or self._ids.item("call", output_index),
            )
            self._call_by_index[index] = call
            self._calls.append(call)
            self._output.append(call)
        if name and isinstance(name, str) and not call.opened:
            call.name = name
        if not call.opened and call.name:
            call.opened = True
            out += self._event(
                {
                    "type": "response.output_item.added",
                    "output_index": call.index,
                    "item": _call_item(call.id, call.call_id, call.name, "", "in_progress"),
                }
            )
            if call.pieces:  # arguments that came before the name
                out += self._arguments_delta(call, "".join(call.pieces))
        if arguments and isinstance(arguments, str):
            call.pieces.append(arguments)
            if call.opened:
                out += self._arguments_delta(call, arguments)
        return out

    def _arguments_delta(self, call: _Call, text: str) -> bytes:
        return self._event(
            {
                "type": "response.function_call_arguments.delta",
                "item_id": call.id,
                "output_index": call.index,
                "delta": text,
            }
        )

    def _close_all(self, status: str) -> bytes:
        return self._close_reasoning() + self._close_message(status) + self._close_calls(status)

    def _close_reasoning(self) -> bytes:
        item = self._reasoning
        if item is None:
            return b""
        self._reasoning = None
        text = "".join(item.pieces)
        out = self._event(
            {
                "type": "response.reasoning_text.done",
                "item_id": item.id,
                "output_index": item.index,
                "content_index": 0,
                "text": text,
            }
        )
        out += self._event(
            {
                "type": "response.content_part.done",
                "item_id": item.id,
                "output_index": item.index,
                "content_index": 0,
                "part": {"type": "reasoning_text", "text": text},
            }
        )
        done = _reasoning_item(item.id, text)
        self._output[item.index] = done
        return out + self._event(
            {"type": "response.output_item.done", "output_index": item.index, "item": done}
        )

    def _close_part(self, message: _Message) -> bytes:
        kind = message.kind
        if kind is None:
            return b""
        text = "".join(message.pieces)
        message.pieces = []
        content_index = len(message.parts)
        if kind == "output_text":
            part = _output_text(text, message.logprobs)
            message.logprobs = []
            out = self._event(
                {
                    "type": "response.output_text.done",
                    "item_id": message.id,
                    "output_index": message.index,
                    "content_index": content_index,
                    "logprobs": [_delta_logprob(p) for p in part["logprobs"]],
                    "text": text,
                }
            )
        else:
            part = {"type": "refusal", "refusal": text}
            out = self._event(
                {
                    "type": "response.refusal.done",
                    "item_id": message.id,
                    "output_index": message.index,
                    "content_index": content_index,
                    "refusal": text,
                }
            )
        message.parts.append(part)
        message.kind = None
        return out + self._event(
            {
                "type": "response.content_part.done",
                "item_id": message.id,
                "output_index": message.index,
                "content_index": content_index,
                "part": part,
            }
        )

    def _close_message(self, status: str) -> bytes:
        message = self._message
        if message is None:
            return b""
        self._message = None
        out = self._close_part(message)
        done = _message_item(message.id, message.parts, status)
        self._output[message.index] = done
        return out + self._event(
            {"type": "response.output_item.done", "output_index": message.index, "item": done}
        )

    def _close_calls(self, status: str) -> bytes:
        out = b""
        for call in self._calls:
            if not call.opened:  # never named: announce it now, so its done event has an add
                call.opened = True
                out += self._event(
                    {
                        "type": "response.output_item.added",
                        "output_index": call.index,
                        "item": _call_item(call.id, call.call_id, call.name, "", "in_progress"),
                    }
                )
                if call.pieces:
                    out += self._arguments_delta(call, "".join(call.pieces))
            arguments = "".join(call.pieces)
            out += self._event(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": call.id,
                    "output_index": call.index,
                    "arguments": arguments,
                }
            )
            done = _call_item(call.id, call.call_id, call.name, arguments, status)
            self._output[call.index] = done
            out += self._event(
                {"type": "response.output_item.done", "output_index": call.index, "item": done}
            )
        self._calls = []
        return out

    def _items(self, open_status: str) -> list[dict[str, Any]]:
        """The output as it stands; items still open are rendered with `open_status`."""
        items: list[dict[str, Any]] = []
        for item in self._output:
            if isinstance(item, dict):
                items.append(item)
            elif isinstance(item, _Reasoning):
                items.append(_reasoning_item(item.id, "".join(item.pieces)))
            elif isinstance(item, _Message):
                parts = list(item.parts)
                if item.kind == "output_text":
                    parts.append(_output_text("".join(item.pieces), item.logprobs))
                elif item.kind == "refusal":
                    parts.append({"type": "refusal", "refusal": "".join(item.pieces)})
                items.append(_message_item(item.id, parts, open_status))
            else:
                items.append(
                    _call_item(item.id, item.call_id, item.name, "".join(item.pieces), open_status)
                )
        return items

    def _event(self, payload: dict[str, Any]) -> bytes:
        payload["sequence_number"] = self._seq
        self._seq += 1
        return sse.encode(dumps(payload), event=payload["type"])


class _Message:
    __slots__ = ("head", "id", "index", "kind", "logprobs", "parts", "pieces")

    def __init__(self, item_id: str, index: int) -> None:
        self.id = item_id
        self.index = index
        self.parts: list[dict[str, Any]] = []  # closed content parts
        self.kind: str | None = None  # the open part: "output_text" | "refusal" | None
        self.pieces: list[str] = []  # the open part's deltas
        self.logprobs: list[dict[str, Any]] = []  # the open text part's logprobs
        self.head = b""  # the output_text.delta event up to its delta value


class _Reasoning:
    __slots__ = ("id", "index", "pieces")

    def __init__(self, item_id: str, index: int) -> None:
        self.id = item_id
        self.index = index
        self.pieces: list[str] = []


class _Call:
    __slots__ = ("call_id", "id", "index", "name", "opened", "pieces")

    def __init__(self, item_id: str, index: int, call_id: str) -> None:
        self.id = item_id
        self.index = index
        self.call_id = call_id
        self.name = ""
        self.opened = False  # output_item.added sent (waits for the name)
        self.pieces: list[str] = []  # the arguments' deltas


class _Ids:
    """Output item ids derived from the response id: `msg_<suffix>_<n>`, `fc_...`, `rs_...`."""

    __slots__ = ("suffix",)

    def __init__(self, response_id: str) -> None:
        self.suffix = response_id.removeprefix("resp_")

    def item(self, prefix: str, index: int) -> str:
        return f"{prefix}_{self.suffix}_{index}"


def _skeleton(request: dict[str, Any], response_id: str, created_at: int) -> dict[str, Any]:
    """A `response` object echoing the request's parameters (OpenAI's defaults where absent),
    status `in_progress`, no output yet."""
    text = request.get("text")
    text = dict(text) if isinstance(text, dict) else {}
    if text.get("format") is None:
        text["format"] = {"type": "text"}
    reasoning = request.get("reasoning")
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    parallel = request.get("parallel_tool_calls")
    metadata = request.get("metadata")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "model": request.get("model"),
        "output": [],
        "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
        "previous_response_id": request.get("previous_response_id"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": request.get("safety_identifier"),
        "service_tier": request.get("service_tier"),
        "store": False,
        "temperature": _number(request.get("temperature"), 1.0),
        "text": text,
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_logprobs": request.get("top_logprobs") or 0,
        "top_p": _number(request.get("top_p"), 1.0),
        "truncation": request.get("truncation") or "disabled",
        "usage": None,
        "user": request.get("user"),
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


def _number(value: Any, default: float) -> Any:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _joined_text(content: Any) -> str:
    """Chat content given as parts (some upstreams answer so): the text parts joined."""
    if not isinstance(content, list):
        return ""
    return "".join(
        p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def _reasoning_text(message: dict[str, Any]) -> str:
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _output_text(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": parts,
    }


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def _logprobs(raw: Any) -> list[dict[str, Any]]:
    """Chat's `choice.logprobs` as Responses `output_text.logprobs` (same fields; `bytes` a
    list)."""
    if not isinstance(raw, dict):
        return []
    content = raw.get("content")
    if not isinstance(content, list):
        return []
    out = []
    for entry in content:
        if not isinstance(entry, dict):
            continue
        top = entry.get("top_logprobs")
        out.append(
            {
                "token": _str(entry.get("token")),
                "bytes": entry.get("bytes") or [],
                "logprob": entry.get("logprob") or 0.0,
                "top_logprobs": [
                    {
                        "token": _str(t.get("token")),
                        "bytes": t.get("bytes") or [],
                        "logprob": t.get("logprob") or 0.0,
                    }
                    for t in (top if isinstance(top, list) else [])
                    if isinstance(t, dict)
                ],
            }
        )
    return out


def _delta_logprob(entry: dict[str, Any]) -> dict[str, Any]:
    """A logprob as the delta/done events carry it (no `bytes`)."""
    return {
        "token": entry["token"],
        "logprob": entry["logprob"],
        "top_logprobs": [
            {"token": t["token"], "logprob": t["logprob"]} for t in entry["top_logprobs"]
        ],
    }


def _failure_code(err: GatewayError) -> str:
    """`response.error.code` takes OpenAI's own codes: a rate limit says so, the rest is a
    server error (the `error` event that follows carries the gateway's exact code)."""
    return (
        "rate_limit_exceeded"
        if err.status == 429 and err.type != "insufficient_quota"
        else "server_error"
    )


def _usage_json(value: Usage | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {
        "input_tokens": value.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": value.cached_tokens,
            "cache_write_tokens": value.cache_write_tokens,
        },
        "output_tokens": value.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": value.reasoning_tokens},
        "total_tokens": value.total_tokens,
    }


# --- usage ---------------------------------------------------------------------------------


def usage(data: object) -> Usage | None:
    """A Responses `usage` object in the canonical accounting (`input_tokens` already includes
    the cached tokens, `output_tokens` the reasoning tokens); None when absent or malformed."""
    if not isinstance(data, dict):
        return None
    try:
        prompt = int(data.get("input_tokens") or 0)
        completion = int(data.get("output_tokens") or 0)
        total = int(data.get("total_tokens") or (prompt + completion))
        cached = written = reasoning = 0
        details = data.get("input_tokens_details")
        if isinstance(details, dict):
            cached = int(details.get("cached_tokens") or 0)
            written = int(details.get("cache_write_tokens") or 0)
        details = data.get("output_tokens_details")
        if isinstance(details, dict):
            reasoning = int(details.get("reasoning_tokens") or 0)
    except (TypeError, ValueError, OverflowError):
        return None
    if min(prompt, completion, total, cached, written, reasoning) < 0:
        return None  # a negative count would credit the tenant's quota
    return Usage(prompt, completion, total, cached, written, reasoning)


#: The events whose `response` carries the final usage of a native Responses stream.
_FINAL_EVENTS: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})


def usage_of_event(event: object) -> Usage | None:
    """The usage in one parsed native stream event (`response.completed`, `.incomplete` or
    `.failed`); None for any other event."""
    if not isinstance(event, dict) or event.get("type") not in _FINAL_EVENTS:
        return None
    response = event.get("response")
    return usage(response.get("usage")) if isinstance(response, dict) else None
