"""Upstream answers are bounded (`server.max_upstream_body`, one SSE event at most `MAX_EVENT`),
end to end: a real aiohttp upstream on loopback sends oversized JSON, a gzip bomb or an SSE
event that never ends to a real in-process `Gateway`; the client gets a 502 (or, mid-stream, an
in-band error event) that names the limit and no secret, and the gateway keeps serving."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aigw.config import Config, Secret, ServerConfig, load_config
from tests.conftest import RunningGateway, make_config

MiB = 1024 * 1024
MAX_EVENT = 8 * MiB  # aigw.streaming.MAX_EVENT, as the README documents it
SECRET = "sk-limits-secret-4242"
SMALL = {
    "id": "up-1",
    "object": "chat.completion",
    "created": 1,
    "model": "up-model",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
ROLE_EVENT = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"up-model",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
)


def big_json(size: int) -> bytes:
    """A chat completion of about `size` bytes (the text makes up the bulk)."""
    return json.dumps(
        {**SMALL, "choices": [{**SMALL["choices"][0], "message": {"content": "a" * size}}]}
    ).encode()


def gzip_bomb(size: int) -> bytes:
    """A valid chat completion of about `size` MiB, gzipped (~1000:1), built piece by piece."""
    head, tail = big_json(0).split(b'"content": ""')
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"a" * MiB
    parts = [packer.compress(head + b'"content": "')]
    parts += [packer.compress(block) for _ in range(size // MiB)]
    return b"".join([*parts, packer.compress(b'"' + tail), packer.flush()])


def text_event(text: str) -> bytes:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-model",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BigUpstream:
    """An OpenAI-compatible upstream whose chat answer is `self.handler` (a small one by
    default); counts the connections the gateway opened to it."""

    def __init__(self) -> None:
        self.handler: Handler = self.small
        self.cancelled = asyncio.Event()  # a handler saw the gateway hang up
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> BigUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        try:
            return await self.handler(request)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def small(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(SMALL)

    @staticmethod
    async def stream(request: web.Request, parts: list[bytes], *, end: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for part in parts:
            await resp.write(part)
        if end:
            await resp.write_eof()
        else:
            await asyncio.sleep(3600)  # until the gateway hangs up (handler cancellation)
        return resp


@pytest.fixture
async def big() -> AsyncIterator[BigUpstream]:
    up = await BigUpstream().start()
    yield up
    await up.stop()


async def gateway(
    start_gateway: Any, big: BigUpstream, sock_dir: Path, **server: Any
) -> RunningGateway:
    config = make_config({"up": big.url}, sock=sock_dir, server=server)
    (provider,) = config.providers.values()
    keyed = dataclasses.replace(provider, api_key=Secret(SECRET))
    gw: RunningGateway = await start_gateway(dataclasses.replace(config, providers={"up": keyed}))
    return gw


async def chat(gw: RunningGateway, *, stream: bool = False) -> tuple[int, bytes]:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.post(gw.v1 + "/chat/completions", json=body) as r,
    ):
        return r.status, await r.read()


def refusal(gw: RunningGateway, status: int, body: bytes) -> str | None:
    """Check the client got a 502 without secrets that says why (the same reason the target's
    stats recorded, what `aigw lb stats` shows as its last error); return that reason."""
    assert status == 502
    error = json.loads(body)["error"]
    assert error["type"] == "server_error" and error["code"] == "upstream_error"
    assert SECRET not in body.decode()
    ((target,),) = [m.targets for m in gw.gateway.runtime.balancers.snapshot().models]
    assert error["message"] == target.last_error
    return target.last_error


async def still_serves(gw: RunningGateway, big: BigUpstream) -> None:
    big.handler = big.small
    status, body = await chat(gw)
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "hi"


# --- answers read whole ----------------------------------------------------------------------


async def test_a_huge_declared_answer_is_refused_at_the_head_by_default(
    start_gateway: Any, big: BigUpstream, sock_dir: Path
) -> None:
    async def hundred_gib(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 100 * 1024 * MiB
        await resp.prepare(request)
        await resp.write(b'{"id":')
        await asyncio.sleep(3600)  # the gateway must not wait for the rest
        return resp

    big.handler = hundred_gib
    gw = await gateway(start_gateway, big, sock_dir)  # no limit configured: 64MiB
    status, body = await chat(gw)
    assert refusal(gw, status, body) == (
        "Upstream 'up' answer exceeds server.max_upstream_body (64MiB)"
    )
    await asyncio.wait_for(big.cancelled.wait(), 10)  # the connection was aborted
    await still_serves(gw, big)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_an_answer_over_the_limit_is_a_502_that_names_it(
    start_gateway: Any, big: BigUpstream, sock_dir: Path, framing: str
) -> None:
    payload = big_json(2 * MiB)

    async def oversized(request: web.Request) -> web.StreamResponse:
        if framing == "content-length":
            return web.Response(body=payload, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(payload), 65536):
            await resp.write(payload[i : i + 65536])
        await resp.write_eof()
        return resp

    big.handler = oversized
    gw = await gateway(start_gateway, big, sock_dir, max_upstream_body=MiB)
    status, body = await chat(gw)
    assert refusal(gw, status, body) == (
        "Upstream 'up' answer exceeds server.max_upstream_body (1MiB)"
    )
    await still_serves(gw, big)


async def test_a_gzip_bomb_is_a_502(start_gateway: Any, big: BigUpstream, sock_dir: Path) -> None:
    bomb = gzip_bomb(32 * MiB)  # ~32kB on the wire
    assert json.loads(zlib.decompress(bomb, 31))["usage"] == SMALL["usage"]

    async def explode(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )

    big.handler = explode
    gw = await gateway(start_gateway, big, sock_dir, max_upstream_body=MiB)
    status, body = await chat(gw)
    assert refusal(gw, status, body) == (
        "Upstream 'up' answer exceeds server.max_upstream_body (1MiB)"
    )
    await still_serves(gw, big)


# --- streams ---------------------------------------------------------------------------------


async def test_an_sse_event_that_never_ends_is_a_502_before_the_first_byte(
    start_gateway: Any, big: BigUpstream, sock_dir: Path
) -> None:
    async def endless_event(request: web.Request) -> web.StreamResponse:
        piece = b"a" * 65536
        parts = [b"data: "] + [piece] * (MAX_EVENT // len(piece) + 16)
        return await BigUpstream.stream(request, parts, end=True)

    big.handler = endless_event
    gw = await gateway(start_gateway, big, sock_dir)
    status, body = await chat(gw, stream=True)
    assert refusal(gw, status, body) == (
        "The upstream sent an SSE event over 8MiB without ending it"
    )
    await still_serves(gw, big)


async def test_an_sse_event_that_never_ends_mid_stream_is_an_in_band_error(
    start_gateway: Any, big: BigUpstream, sock_dir: Path
) -> None:
    async def endless_event(request: web.Request) -> web.StreamResponse:
        piece = b"a" * 65536
        parts = [ROLE_EVENT, text_event("hello"), b"data: "] + [piece] * (MAX_EVENT // 65536 + 16)
        return await BigUpstream.stream(request, parts, end=False)

    big.handler = endless_event
    gw = await gateway(start_gateway, big, sock_dir)
    status, body = await chat(gw, stream=True)
    assert status == 200
    events = [e for e in body.split(b"\n\n") if e]
    assert events[:2] == [ROLE_EVENT[:-2], text_event("hello")[:-2]]
    assert len(events) == 3 and len(body) < 1000  # none of the runaway event went out
    error = json.loads(events[2][len(b"data: ") :])["error"]
    assert error["message"] == "The upstream sent an SSE event over 8MiB without ending it"
    assert SECRET not in body.decode()
    await asyncio.wait_for(big.cancelled.wait(), 10)  # and the upstream was hung up on
    await still_serves(gw, big)


async def test_a_long_stream_is_not_cut_at_max_upstream_body(
    start_gateway: Any, big: BigUpstream, sock_dir: Path
) -> None:
    # Streams pass through with flat memory: only a single event is capped, never the total.
    word = "x" * 1000

    async def long_stream(request: web.Request) -> web.StreamResponse:
        parts = [ROLE_EVENT] + [text_event(word)] * 3000 + [b"data: [DONE]\n\n"]
        return await BigUpstream.stream(request, parts, end=True)

    big.handler = long_stream
    gw = await gateway(start_gateway, big, sock_dir, max_upstream_body=MiB)
    status, body = await chat(gw, stream=True)
    assert status == 200
    assert len(body) > 3 * MiB
    assert body.count(word.encode()) == 3000 and body.endswith(b"data: [DONE]\n\n")


# --- the setting -----------------------------------------------------------------------------


def test_max_upstream_body_setting(tmp_path: Path) -> None:
    from aigw.providers.base import MAX_BODY
    from aigw.streaming import MAX_EVENT as EVENT_CAP
    from aigw.streaming import MAX_KEPT

    assert EVENT_CAP == MAX_EVENT
    assert ServerConfig().max_upstream_body == MAX_BODY == MAX_KEPT == 64 * MiB
    path = tmp_path / "aigw.yaml"
    path.write_text(
        "version: 1\nserver: {max_upstream_body: 16MiB}\n"
        "providers: {mock: {type: mock}}\nmodels: {mock: {targets: [{provider: mock}]}}\n"
    )
    config: Config = load_config(path)
    assert config.server.max_upstream_body == 16 * MiB
