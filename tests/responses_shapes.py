"""Helpers for the Responses dialect tests: strict checks of what we produce against the openai
SDK's own pydantic types, canned chat answers cut into the chunks a chat upstream would stream,
and a tiny aiohttp server on 127.0.0.1 that serves `POST /v1/responses` through the translation
(`to_chat`, a canned chat answer, `from_chat` / `StreamFromChat`) for the SDK's real client."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
from aiohttp import web
from openai import BaseModel as OpenAIModel
from openai.types.responses import Response, ResponseStreamEvent

from aigw import sse
from aigw.dialects import responses
from aigw.errors import InvalidRequestError, UpstreamError

#: Fields we write that the SDK's types do not declare (the API reference shows them).
KNOWN_EXTRAS = {
    "Response": {"store"},
    "ResponseErrorEvent": {"error"},  # the SDKs raise on a top-level `error` object
}

_EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)


def no_extras(model: Any, where: str = "") -> None:
    """Fail on any field the SDK's types do not know: a misspelt key would otherwise pass
    unnoticed (the SDK's models allow extras)."""
    if isinstance(model, OpenAIModel):
        extra = set(model.model_extra or {}) - KNOWN_EXTRAS.get(type(model).__name__, set())
        assert not extra, f"{where or type(model).__name__}: fields unknown to the SDK: {extra}"
        for name in type(model).model_fields:
            no_extras(getattr(model, name), f"{where}.{name}")
    elif isinstance(model, list):
        for i, value in enumerate(model):
            no_extras(value, f"{where}[{i}]")
    elif isinstance(model, dict):
        for key, value in model.items():
            no_extras(value, f"{where}.{key}")


def strict_response(data: dict[str, Any]) -> Response:
    response = Response.model_validate(data)
    no_extras(response, "response")
    return response


def strict_events(raw: bytes) -> list[Any]:
    """Parse an SSE body: every event named as its `type`, valid for the SDK's event union,
    with no unknown fields, and sequence numbers 0, 1, 2, ..."""
    events = []
    for i, event in enumerate(sse.events(raw)):
        data = json.loads(event.data)
        assert event.event == data["type"], (event.event, data["type"])
        parsed = _EVENTS.validate_python(data)
        no_extras(parsed, data["type"])
        assert parsed.sequence_number == i, (i, data)
        events.append(parsed)
    return events


# --- canned chat answers -------------------------------------------------------------------


def chat_answer(
    *,
    content: str | None = None,
    tool_calls: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    refusal: str | None = None,
    reasoning: str | None = None,
    finish: str = "stop",
    usage: dict[str, Any] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A `chat.completion`; tool calls as (call id, name, arguments)."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, name, args in tool_calls
        ]
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
    choice["logprobs"] = {"content": logprobs} if logprobs is not None else None
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-model",
        "choices": [choice],
    }
    if usage is not None:
        answer["usage"] = usage
    return answer


def _pieces(text: str) -> list[str]:
    return re.findall(r"\s*\S+\s*", text) or [text]


def chat_chunks(answer: dict[str, Any], *, usage: str = "separate") -> list[dict[str, Any]]:
    """The chunks a chat upstream streams for `answer`: text word by word, tool call arguments
    in pieces, the finish reason, and the usage on its own chunk (`usage="separate"`, what
    `include_usage` gives), on the finish chunk (`"finish"`) or not at all (`"none"`)."""
    choice = answer["choices"][0]
    message = choice["message"]
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up"}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        c = {"index": 0, "delta": delta, "finish_reason": finish, **extra}
        return {**base, "choices": [c]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    for piece in _pieces(message.get("reasoning_content") or ""):
        if piece:
            chunks.append(chunk({"reasoning_content": piece}))
    probs = (choice.get("logprobs") or {}).get("content") or []
    for i, piece in enumerate(_pieces(message.get("content") or "")):
        if piece:
            extra = {"logprobs": {"content": [probs[i]]}} if i < len(probs) else {}
            chunks.append(chunk({"content": piece}, **extra))
    for piece in _pieces(message.get("refusal") or ""):
        if piece:
            chunks.append(chunk({"refusal": piece}))
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        first = {"index": i, "id": call["id"], "type": "function"}
        first["function"] = {"name": fn["name"], "arguments": ""}
        chunks.append(chunk({"tool_calls": [first]}))
        args = fn["arguments"]
        third = max(1, len(args) // 3)
        for start in range(0, len(args), third):
            piece = {"index": i, "function": {"arguments": args[start : start + third]}}
            chunks.append(chunk({"tool_calls": [piece]}))
    last = chunk({}, choice["finish_reason"])
    if usage == "finish" and answer.get("usage"):
        last["usage"] = answer["usage"]
    chunks.append(last)
    if usage == "separate" and answer.get("usage"):
        chunks.append({**base, "choices": [], "usage": answer["usage"]})
    return chunks


def run_stream(
    request: dict[str, Any],
    chunks: list[dict[str, Any]],
    *,
    finish_usage: Any = None,
    response_id: str = "resp_test",
) -> bytes:
    stream = responses.StreamFromChat(request, response_id=response_id, created_at=1700000000)
    out = stream.start()
    for c in chunks:
        out += stream.feed(c)
    return out + stream.finish(finish_usage)


# --- a Responses server over a canned chat upstream ----------------------------------------

#: chat body -> the canned chat answer
Script = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class ResponsesServer:
    """`POST /v1/responses` served through the translation, as the gateway will serve it for a
    chat-only target. `script` answers each translated chat body; `usage_mode` picks where a
    stream's usage rides; `fail_after` cuts a stream after that many chat chunks with a
    gateway error."""

    script: Script
    usage_mode: str = "separate"
    fail_after: int | None = None
    chat_bodies: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> ResponsesServer:
        app = web.Application()
        app.router.add_post("/v1/responses", self.handle)
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

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            chat = responses.to_chat(body)
        except InvalidRequestError as exc:
            return web.Response(status=400, body=exc.body(), content_type="application/json")
        self.chat_bodies.append(chat)
        answer = self.script(chat)
        rid = f"resp_{len(self.chat_bodies):04d}"
        if not body.get("stream"):
            return web.json_response(
                responses.from_chat(answer, body, response_id=rid, created_at=1700000000)
            )
        out = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await out.prepare(request)
        stream = responses.StreamFromChat(body, response_id=rid, created_at=1700000000)
        await out.write(stream.start())
        for i, chunk in enumerate(chat_chunks(answer, usage=self.usage_mode)):
            if self.fail_after is not None and i == self.fail_after:
                await out.write(stream.fail(UpstreamError("upstream went away mid-answer")))
                break
            events = stream.feed(chunk)
            if events:
                await out.write(events)
        else:
            await out.write(stream.finish(None))
        await out.write_eof()
        return out
