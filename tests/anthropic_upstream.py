"""A real Anthropic Messages upstream for tests: an aiohttp server on 127.0.0.1 that checks the
headers Anthropic requires, records what it received (raw bytes included), and answers a canned
`message` whole or as the event stream Anthropic would send for it (`events_of`)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

KEY = "sk-ant-upstream-key"
#: Response headers the real API sends, which the gateway must pass to its clients.
ANSWER_HEADERS = {
    "request-id": "req_011CUpstream",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:00Z",
    "anthropic-organization-id": "org-secret-not-passed",
}


def text_message(text: str = "Hello from Claude.", **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": "msg_01Upstream",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    message.update(fields)
    return message


def _pieces(text: str, size: int) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


def events_of(message: dict[str, Any], piece: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """The events Anthropic streams for `message`: its text, thinking and tool input cut in
    pieces of `piece` characters, the signature in a `signature_delta` before the block stops."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**usage, "output_tokens": 1}
    out: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            empty: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"], piece)]
        elif kind == "thinking":
            empty = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"], piece)
            ]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "tool_use":
            empty = {**block, "input": {}}
            raw = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in _pieces(raw, piece)]
        else:  # redacted_thinking: whole in its start
            empty = block
        out.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": empty},
            )
        )
        out.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        )
        out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    final_usage = {"output_tokens": usage["output_tokens"]}
    for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
        if key in usage:
            final_usage[key] = usage[key]
    out.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": message["stop_reason"],
                    "stop_sequence": message["stop_sequence"],
                },
                "usage": final_usage,
            },
        )
    )
    out.append(("message_stop", {"type": "message_stop"}))
    return out


def sse_bytes(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    """Events as Anthropic writes them (`event:` then `data:` with spaces after the colons)."""
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


@dataclass
class Reply:
    status: int = 200
    #: the whole answer (non-stream), as bytes so a test can check they pass untouched
    body: bytes = field(default_factory=lambda: json.dumps(text_message()).encode())
    #: the stream (SSE bytes); default: `events_of` the body
    stream: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(ANSWER_HEADERS))


class AnthropicUpstream:
    """Start with `await AnthropicUpstream().start()`; `url` is the base URL (no /v1)."""

    def __init__(self, key: str = KEY) -> None:
        self.key = key
        self.reply = Reply()
        self.raw: list[bytes] = []  # request bodies as received
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []  # lower-case names
        self.paths: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> AnthropicUpstream:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_get("/v1/models", self.models)
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

    def _refusal(self, request: web.Request) -> web.Response | None:
        """Anthropic's own checks: its key in x-api-key, a version, no bearer token."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.headers.append(headers)
        self.paths.append(request.path_qs)
        if headers.get("x-api-key") != self.key or "authorization" in headers:
            return _error(401, "authentication_error", "invalid x-api-key")
        if "anthropic-version" not in headers:
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        return None

    async def messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.raw.append(raw)
        refused = self._refusal(request)
        if refused is not None:
            return refused
        body = json.loads(raw)
        self.requests.append(body)
        reply = self.reply
        if reply.status != 200 or not body.get("stream"):
            return web.Response(
                status=reply.status,
                body=reply.body,
                headers={**reply.headers, "Content-Type": "application/json"},
            )
        stream = reply.stream
        if stream is None:
            stream = sse_bytes(events_of(json.loads(reply.body)))
        resp = web.StreamResponse(
            headers={**reply.headers, "Content-Type": "text/event-stream; charset=utf-8"}
        )
        await resp.prepare(request)
        for frame in stream.split(b"\n\n"):  # one write per event, as a live stream comes
            if frame:
                await resp.write(frame + b"\n\n")
        await resp.write_eof()
        return resp

    async def count_tokens(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.raw.append(raw)
        refused = self._refusal(request)
        if refused is not None:
            return refused
        body = json.loads(raw)
        self.requests.append(body)
        return web.json_response({"input_tokens": 42}, headers=ANSWER_HEADERS)

    async def models(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        if self.reply.status >= 500:
            return _error(self.reply.status, "api_error", "down")
        return web.json_response(
            {"data": [{"type": "model", "id": "claude-sonnet-4-5"}], "has_more": False}
        )


def _error(status: int, etype: str, message: str) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_x"},
        status=status,
    )
