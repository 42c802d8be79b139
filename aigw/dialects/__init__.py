"""Request dialects: how a request in one API's shape reaches a target that speaks another.

`chat` (OpenAI Chat Completions) is the canonical form; `responses` (OpenAI Responses) and
`messages` (Anthropic Messages) translate to and from it. Each dialect module is pure: dicts and
bytes in and out, no I/O. This package's face, `Dialect`, is what the pipeline uses of one:

- native: a target that speaks the client's dialect (`providers.NAME.apis`) gets the client's
  body as it came (the model renamed), and its answer goes back as it came;
- translated: the request becomes a chat body (`to_chat`) for a chat-speaking target, and the
  chat answer (whole, or chunk by chunk) becomes the client's shape (`answer`, `stream`).

Errors answer in the caller's dialect (`error_body`, and `stream_error` after the first byte).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aigw import jsonutil, sse
from aigw.dialects import messages, responses
from aigw.errors import GatewayError
from aigw.exchange import Usage


class Renderer(Protocol):
    """A client's stream, made from the canonical chat chunks of a translated answer."""

    def start(self) -> bytes: ...

    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    def finish(self, usage: Usage | None) -> bytes: ...

    def fail(self, err: GatewayError) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """One client dialect other than chat (chat is the canonical form and the fast path)."""

    name: str  # as in `ctx.dialect` and the metrics: "responses" | "messages"
    api: str  # the `providers.NAME.apis` name of a target that answers it natively
    endpoint: str  # the path of a native call, under the provider's base URL
    #: the client's body -> the canonical chat body (raises InvalidRequestError naming a field)
    to_chat: Callable[[dict[str, Any]], dict[str, Any]]
    #: a whole chat answer -> the client's answer, given the client's body
    answer: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
    #: the client's body -> the renderer of its stream
    stream: Callable[[dict[str, Any]], Renderer]
    #: the error JSON of a failed request
    error_body: Callable[[GatewayError], bytes]
    #: the in-band error event of a native stream that fails after its first byte
    stream_error: Callable[[GatewayError], bytes]
    #: the usage in a whole native answer (parsed)
    usage: Callable[[dict[str, Any]], Usage | None]
    #: a reader of one native stream's usage: fed each parsed event that carries a usage
    #: object, it answers the stream's usage so far
    stream_usage: Callable[[], Callable[[dict[str, Any]], Usage | None]]
    #: markers of a native stream's last event: the answer is complete once one is delivered
    done_markers: tuple[bytes, ...]


def _response_id() -> str:
    return "resp_" + os.urandom(24).hex()


def _responses_answer(chat: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    return responses.from_chat(chat, body, response_id=_response_id(), created_at=int(time.time()))


def _responses_stream(body: dict[str, Any]) -> Renderer:
    return responses.StreamFromChat(body, response_id=_response_id(), created_at=int(time.time()))


def _responses_stream_error(err: GatewayError) -> bytes:
    error = {"type": err.type, "code": err.code, "message": err.message, "param": err.param}
    event = {**error, "type": "error", "sequence_number": 0, "error": error}
    return sse.encode(jsonutil.dumps(event), event="error")


RESPONSES = Dialect(
    name="responses",
    api="responses",
    endpoint="responses",
    to_chat=responses.to_chat,
    answer=_responses_answer,
    stream=_responses_stream,
    error_body=lambda err: err.body(),  # Responses errors are OpenAI's
    stream_error=_responses_stream_error,
    usage=lambda data: responses.usage(data.get("usage")),
    stream_usage=lambda: responses.usage_of_event,
    done_markers=(
        b"event: response.completed",
        b"event: response.incomplete",
        b"event: response.failed",
    ),
)


def _message_id() -> str:
    return "msg_" + os.urandom(12).hex()


class _MessagesStreamUsage:
    """The usage of a native Messages stream: `message_start` has the input side (cache reads
    and writes included), each `message_delta` the output so far."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> Usage | None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            found = message.get("usage") if isinstance(message, dict) else None
        elif kind == "message_delta":
            found = event.get("usage")
        else:
            found = None
        if isinstance(found, dict):
            self._seen.update({k: v for k, v in found.items() if v is not None})
        return messages.usage(self._seen) if self._seen else None


MESSAGES = Dialect(
    name="messages",
    api="messages",
    endpoint="messages",
    to_chat=messages.to_chat,
    answer=lambda chat, body: messages.from_chat(chat, body, message_id=_message_id()),
    stream=lambda body: messages.StreamFromChat(body, message_id=_message_id()),
    error_body=messages.error_body,
    stream_error=messages.error_event,
    usage=lambda data: messages.usage(data.get("usage")),
    stream_usage=_MessagesStreamUsage,
    done_markers=(b"event: message_stop",),
)

#: The client dialects by name (chat's endpoints are the proxy's own).
DIALECTS: dict[str, Dialect] = {"responses": RESPONSES, "messages": MESSAGES}
