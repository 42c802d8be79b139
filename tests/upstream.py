"""A real OpenAI-compatible upstream for tests: an aiohttp server on 127.0.0.1 with switchable
behaviours (normal, error status, slow, reset mid-stream, …) that records what it received."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WORDS = "the quick brown fox jumps over the lazy dog again and again".split()  # noqa: SIM905


@dataclass
class Behaviour:
    status: int = 200  # non-200: answer this status with `error_body`
    error_body: bytes | None = None
    delay: float = 0.0  # before the headers
    chunk_delay: float = 0.0  # between stream chunks
    words: list[str] = field(default_factory=lambda: list(WORDS))
    reset_after_chunks: int | None = None  # close the socket mid-stream after N chunks
    prompt_tokens: int = 7
    hang: bool = False  # never answer (timeouts)
    # vLLM's `continuous_usage_stats`: with include_usage, every chunk carries the running usage
    # (completion tokens so far), not only the final usage-only chunk.
    continuous_usage: bool = False
    omit_usage: bool = False  # streams carry no usage (servers that ignore stream_options)
    omit_done: bool = False  # end the stream cleanly but without `data: [DONE]`
    reset_before_first_chunk: bool = False  # stream: send the 200 headers, then reset
    error_body_hang: bool = False  # error status: send its headers, never its body
    retry_after: str | None = None  # error status: send this `retry-after` header
    headers: dict[str, str] = field(default_factory=dict)  # sent with every answer
    ignore_max_tokens: bool = False  # answer with every word whatever max_tokens says
    hold_after_done: float = 0.0  # stream: wait this long after [DONE] before ending the body
    endless: bool = False  # stream: never stop sending words (with chunk_delay between them)
    compact_sse: bool = False  # stream: `data:{...}` without the space, CRLF line ends


class Upstream:
    """Start with `await Upstream().start()`; `url` is the base URL ending in /v1."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        #: every request's headers as sent (repeated names kept), lower-case names
        self.header_lists: list[list[tuple[str, str]]] = []
        self.disconnects = 0  # streams whose client (the gateway) went away
        self.disconnected = asyncio.Event()
        self.chunks_sent = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "up-model", "object": "model"}]}
        )

    async def _common(self, request: web.Request) -> dict[str, Any] | web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.header_lists.append([(k.lower(), v) for k, v in request.headers.items()])
        b = self.behaviour
        if b.hang:
            await asyncio.sleep(3600)
        if b.delay:
            await asyncio.sleep(b.delay)
        if b.status != 200:
            payload = b.error_body
            if payload is None:
                payload = json.dumps(
                    {
                        "error": {
                            "message": f"upstream says {b.status}",
                            "type": "upstream_test",
                            "param": None,
                            "code": f"http_{b.status}",
                        }
                    }
                ).encode()
            if b.error_body_hang:
                resp = web.StreamResponse(
                    status=b.status,
                    headers={
                        "Content-Type": "application/json",
                        "Content-Length": str(len(payload)),
                    },
                )
                await resp.prepare(request)
                await asyncio.sleep(3600)
                return resp
            extra = dict(b.headers)
            if b.retry_after is not None:
                extra["retry-after"] = b.retry_after
            return web.Response(
                status=b.status, body=payload, content_type="application/json", headers=extra
            )
        return body

    async def chat(self, request: web.Request) -> web.StreamResponse:
        got = await self._common(request)
        if isinstance(got, web.StreamResponse):
            return got
        b = self.behaviour
        chat = request.path.endswith("chat/completions")
        words = b.words
        if isinstance(got.get("max_tokens"), int) and not b.ignore_max_tokens:
            words = words[: got["max_tokens"]]
        usage = {
            "prompt_tokens": b.prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": b.prompt_tokens + len(words),
        }
        model = got.get("model")
        if not got.get("stream"):
            text = " ".join(words)
            choice: dict[str, Any] = (
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
                if chat
                else {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            )
            return web.json_response(
                {
                    "id": "up-1",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": 1,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                },
                headers=b.headers,
            )
        include_usage = bool((got.get("stream_options") or {}).get("include_usage"))
        if b.omit_usage:
            include_usage = False
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **b.headers})
        await resp.prepare(request)
        if b.reset_before_first_chunk:
            assert request.transport is not None
            request.transport.abort()  # the headers went out, no event ever will
            return resp
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[Any], usage_value: Any = None, with_usage: bool = True) -> bytes:
            data: dict[str, Any] = {
                "id": "up-1",
                "object": obj,
                "created": 1,
                "model": model,
                "choices": choices,
            }
            if include_usage and with_usage:
                data["usage"] = usage_value
            if b.compact_sse:
                return b"data:" + json.dumps(data, separators=(",", ":")).encode() + b"\r\n\r\n"
            return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

        def running_usage(completion: int) -> dict[str, int]:
            return {
                "prompt_tokens": b.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": b.prompt_tokens + completion,
            }

        try:
            if chat:
                await resp.write(
                    event(
                        [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None,
                            }
                        ],
                        running_usage(0) if b.continuous_usage else None,
                    )
                )
            sent: Iterable[str] = _forever(words) if b.endless else words
            for i, word in enumerate(sent):
                if b.reset_after_chunks is not None and i >= b.reset_after_chunks:
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
                piece = word if i == 0 else " " + word
                choice = (
                    {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                    if chat
                    else {"index": 0, "text": piece, "finish_reason": None}
                )
                await resp.write(
                    event([choice], running_usage(i + 1) if b.continuous_usage else None)
                )
                self.chunks_sent += 1
            done = (
                {"index": 0, "delta": {}, "finish_reason": "stop"}
                if chat
                else {"index": 0, "text": "", "finish_reason": "stop"}
            )
            await resp.write(event([done], usage if b.continuous_usage else None))
            if include_usage:
                await resp.write(event([], usage))
            if not b.omit_done:
                await resp.write(b"data:[DONE]\r\n\r\n" if b.compact_sse else b"data: [DONE]\n\n")
            if b.hold_after_done:
                await asyncio.sleep(b.hold_after_done)
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            self.disconnected.set()
            raise
        return resp

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        got = await self._common(request)
        if isinstance(got, web.StreamResponse):
            return got
        inputs = got["input"] if isinstance(got["input"], list) else [got["input"]]
        if got.get("encoding_format") == "base64":
            import base64
            import struct

            emb: Any = base64.b64encode(struct.pack("<3f", 0.25, 0.5, 0.75)).decode()
        else:
            emb = [0.25, 0.5, 0.75]
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": emb}
                    for i in range(len(inputs))
                ],
                "model": got.get("model"),
                "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)},
            }
        )


def _forever(words: list[str]) -> Iterator[str]:
    while True:
        yield from words
