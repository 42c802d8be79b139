"""A scripted loopback upstream for the gateway's dialect tests: one aiohttp server on 127.0.0.1
that answers `POST /v1/chat/completions` (a chat-only target) and, natively, `POST /v1/responses`
(a Responses-speaking target) from the same script, so one request can be compared across both
routes. It records the exact bytes it received and the exact bytes it sent, and can fail before
the first byte (an error status) or break a stream after some events (the connection reset).

Chat answers and their chunks come from `tests.responses_shapes` (`chat_answer`, `chat_chunks`);
the native Responses answers are made from those with the translation's own functions, as a
Responses-speaking upstream (OpenAI) would send them: ids `resp_up0001`, ..., a fixed
`created_at`, the model the request named.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from aigw.dialects import responses
from aigw.errors import InvalidRequestError
from tests.responses_shapes import chat_chunks

#: chat body -> the canned `chat.completion` answering it
Script = Callable[[dict[str, Any]], dict[str, Any]]

CREATED_AT = 1700000000


@dataclass
class Received:
    path: str  # "chat/completions" | "responses"
    raw: bytes  # the request body exactly as it arrived
    headers: dict[str, str]

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.raw)
        return parsed


@dataclass
class DialectUpstream:
    """See the module docstring. `fail_status`: the next `fail_times` requests get this status
    (an OpenAI error body) before any byte of an answer; `break_after`: a stream's connection is
    reset after that many of its SSE events (a break after the first byte; 0: after the headers);
    `reset`: every connection is reset as soon as its request is read; `usage_mode`: where
    a chat stream's usage rides (see `chat_chunks`)."""

    script: Script
    usage_mode: str = "separate"
    fail_status: int | None = None
    fail_times: int = 1 << 30
    break_after: int | None = None
    reset: bool = False  # every request's connection is reset once it is read: no answer
    ignore_stream: bool = False  # chat: a stream request gets a whole answer (some servers do)
    received: list[Received] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)  # each answer's body, as written
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [r.body for r in self.received if r.path == path]

    async def start(self) -> DialectUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/responses", self.responses)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- handlers ------------------------------------------------------------------------------

    async def _take(self, request: web.Request, path: str) -> dict[str, Any] | web.Response:
        raw = await request.read()
        self.received.append(Received(path, raw, dict(request.headers)))
        if self.reset:
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # the handler ends with its connection
        if self.fail_status is not None and self.fail_times > 0:
            self.fail_times -= 1
            error = {
                "error": {
                    "message": f"upstream says {self.fail_status}",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
            return web.json_response(error, status=self.fail_status)
        body: dict[str, Any] = json.loads(raw)
        return body

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._take(request, "chat/completions")
        if isinstance(body, web.Response):
            return body
        answer = self.script(body)
        if not body.get("stream") or self.ignore_stream:
            raw = json.dumps(answer).encode()
            self.sent.append(raw)
            return web.Response(body=raw, content_type="application/json")
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = chat_chunks(answer, usage=self.usage_mode if wants_usage else "none")
        events = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
        return await self._stream(request, [*events, b"data: [DONE]\n\n"])

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._take(request, "responses")
        if isinstance(body, web.Response):
            return body
        # A native upstream keeps state: the stateful parameters are its business.
        stateless = {k: v for k, v in body.items() if k not in responses.STATEFUL}
        try:
            chat = responses.to_chat(stateless)
        except InvalidRequestError as exc:
            return web.Response(status=400, body=exc.body(), content_type="application/json")
        answer = self.script(chat)
        rid = f"resp_up{len(self.received):04d}"
        if not body.get("stream"):
            response = responses.from_chat(answer, body, response_id=rid, created_at=CREATED_AT)
            raw = json.dumps(response).encode()
            self.sent.append(raw)
            return web.Response(body=raw, content_type="application/json")
        stream = responses.StreamFromChat(body, response_id=rid, created_at=CREATED_AT)
        pieces = [stream.start()]
        for chunk in chat_chunks(answer, usage=self.usage_mode):
            pieces.append(stream.feed(chunk))
        pieces.append(stream.finish(None))
        events = [e + b"\n\n" for e in b"".join(pieces).split(b"\n\n") if e]
        return await self._stream(request, events)

    async def _stream(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        written = bytearray()
        try:
            for i, event in enumerate(events):
                if self.break_after is not None and i == self.break_after:
                    assert request.transport is not None
                    request.transport.abort()  # the connection reset mid-answer
                    return out
                await out.write(event)
                written += event
                await asyncio.sleep(0)  # one event per read, as a real upstream streams
            await out.write_eof()
        finally:
            self.sent.append(bytes(written))
        return out
