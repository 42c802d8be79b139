"""The upstream transport (`aigw.providers.http`) against real servers on 127.0.0.1: a scripted
raw HTTP/1.1 server (so framing, closes, resets and oversized bodies are exact), an HTTPS aiohttp
server with a CA made here, and a tiny HTTP proxy (absolute-form and CONNECT)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import gzip
import hashlib
import ipaddress
import json
import socket
import ssl
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from aigw.config import ProviderConfig, Secret
from aigw.errors import UpstreamBusyError, UpstreamError, UpstreamTimeoutError
from aigw.providers.http import HIGH_WATER, HTTPClient, HTTPResponse
from aigw.providers.openai import OpenAIProvider
from tests.upstream import Upstream

SECRET = "sk-transport-secret-123"


# --- a scripted raw HTTP/1.1 server ----------------------------------------------------------


@dataclass
class Req:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    conn: int  # index of the connection it came on
    seq: int  # index of the request on its connection
    reader: asyncio.StreamReader = field(repr=False)


#: Writes the answer; returns False to close the connection afterwards.
Handler = Callable[[Req, asyncio.StreamWriter], Awaitable[bool]]


def answer(body: bytes = b'{"ok":true}', *, status: int = 200, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


async def ok(req: Req, w: asyncio.StreamWriter) -> bool:
    w.write(answer())
    return True


class RawServer:
    def __init__(self, handler: Handler = ok) -> None:
        self.handler = handler
        self.requests: list[Req] = []
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.gone: list[asyncio.Event] = []  # per connection: set when it closed
        self.hold = asyncio.Event()  # handlers may wait on it; set at stop
        self._tasks: list[asyncio.Task[None]] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self.hold.set()
        self._server.close()
        for w in self._writers:
            w.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        index = self.connections
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        gone = asyncio.Event()
        self.gone.append(gone)
        self._writers.append(writer)
        seq = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Req(method, target, headers, body, index, seq, reader)
                self.requests.append(req)
                seq += 1
                keep = await self.handler(req, writer)
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return  # a cancelled handler task would be logged as an error by asyncio
        finally:
            self.open -= 1
            writer.close()
            gone.set()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: Handler = ok) -> RawServer:
        server = await RawServer(handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., HTTPClient]]:
    made: list[HTTPClient] = []

    def make(**kwargs: Any) -> HTTPClient:
        kwargs.setdefault("label", "up")
        kwargs.setdefault("keep_headers", ("content-type", "x-request-id"))
        client = HTTPClient(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def post(
    client: HTTPClient, url: str, body: bytes = b"{}", *, timeout: float = 5.0
) -> HTTPResponse:
    prepared = client.prepare("POST", url + "/chat/completions", {"Authorization": SECRET})
    return await client.send(prepared, body, timeout=timeout)


async def until(predicate: Callable[[], bool]) -> None:
    """Wait for a condition the event loop will bring about (bounded, never a fixed sleep)."""
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - the state lives in the transport
            await asyncio.sleep(0.001)


# --- framing and keep-alive ------------------------------------------------------------------


async def test_content_length_answers_reuse_one_connection(serve: Any, clients: Any) -> None:
    server = await serve()
    client = clients()
    for i in range(3):
        resp = await post(client, server.url, b'{"n":%d}' % i)
        assert resp.status == 200
        assert resp.headers == {"content-type": "application/json"}
        assert await resp.read() == b'{"ok":true}'
    assert server.connections == 1
    assert [(r.conn, r.seq) for r in server.requests] == [(0, 0), (0, 1), (0, 2)]
    first = server.requests[0]
    assert first.method == "POST" and first.target == "/v1/chat/completions"
    assert first.headers["host"] == f"127.0.0.1:{server.port}"
    assert first.headers["accept-encoding"] == "identity"
    assert first.body == b'{"n":0}'
    pool = next(iter(client.pools.values()))
    assert pool.opened == 1 and len(pool.idle) == 1


async def test_chunked_stream_arrives_chunk_by_chunk(serve: Any, clients: Any) -> None:
    got_first = asyncio.Event()

    async def chunked(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        w.write(b"Transfer-Encoding: chunked\r\n\r\n")
        w.write(chunk(b"data: first\n\n"))
        await w.drain()
        await got_first.wait()  # the second chunk only after the client saw the first
        w.write(chunk(b"data: second\n\n") + b"0\r\n\r\n")
        return True

    server = await serve(chunked)
    client = clients()
    resp = await post(client, server.url)
    seen = []
    async for piece in resp.iter_chunks():
        seen.append(piece)
        got_first.set()
    assert seen == [b"data: first\n\n", b"data: second\n\n"]
    resp.close()  # after the end: keeps the connection
    assert (await (await post(client, server.url)).read()) == b"data: first\n\ndata: second\n\n"
    assert server.connections == 1


async def test_close_delimited_and_http10_answers_are_not_reused(serve: Any, clients: Any) -> None:
    async def old_style(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.conn == 0:
            w.write(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"a":1}')
        elif req.conn == 1:
            w.write(b'HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\n{"b":2}')
            await w.drain()
            await server.hold.wait()  # keeps the socket open: the client must not reuse
        else:
            w.write(answer(extra="Connection: close\r\n"))
        return False

    server = await serve(old_style)
    client = clients()
    assert await (await post(client, server.url)).read() == b'{"a":1}'
    assert await (await post(client, server.url)).read() == b'{"b":2}'
    assert await (await post(client, server.url)).read() == b'{"ok":true}'
    await post(client, server.url)
    assert server.connections == 4
    assert next(iter(client.pools.values())).count == 0


async def test_gzip_bodies_are_decoded_whole_and_streamed(serve: Any, clients: Any) -> None:
    payload = b'{"text":"' + b"abc" * 1000 + b'"}'
    packed = gzip.compress(payload)

    async def gz(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(answer(packed, extra="Content-Encoding: gzip\r\n"))
        return True

    server = await serve(gz)
    client = clients()
    assert await (await post(client, server.url)).read() == payload
    streamed = b"".join([c async for c in (await post(client, server.url)).iter_chunks()])
    assert streamed == payload


async def test_invalid_http_is_an_upstream_error(serve: Any, clients: Any) -> None:
    async def garbage(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"SPDY/9 nonsense\r\n\r\n")
        return True

    server = await serve(garbage)
    with pytest.raises(UpstreamError, match="invalid HTTP"):
        await post(clients(), server.url)


async def test_interim_1xx_answers_are_skipped(serve: Any, clients: Any) -> None:
    async def early_hints(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await w.drain()
        # An interim head's headers must not end up on the final answer.
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\nX-Request-Id: early\r\n\r\n")
        await w.drain()
        w.write(answer(b'{"final":%d}' % req.seq))
        return True

    server = await serve(early_hints)
    client = clients()
    for n in range(2):
        resp = await post(client, server.url)
        assert resp.status == 200
        assert resp.headers == {"content-type": "application/json"}
        assert await resp.read() == b'{"final":%d}' % n
    assert server.connections == 1  # the connection stays usable after interim answers


async def test_a_protocol_upgrade_is_invalid_http(serve: Any, clients: Any) -> None:
    async def upgrade(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n")
        return True

    server = await serve(upgrade)
    client = clients()
    with pytest.raises(UpstreamError, match="invalid HTTP"):
        await (await post(client, server.url)).read()
    assert next(iter(client.pools.values())).count == 0


# --- slow and broken upstreams ---------------------------------------------------------------


async def test_slow_upstream_hits_the_read_timeout_and_the_deadline(
    serve: Any, clients: Any
) -> None:
    release = asyncio.Event()

    async def slow(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.seq == 0 and req.conn == 0:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
            await w.drain()
        await release.wait()
        return False

    server = await serve(slow)
    client = clients(read_timeout=0.05)
    resp = await post(client, server.url)  # headers came, the body stalls half way
    with pytest.raises(UpstreamTimeoutError, match="stalled"):
        await resp.read()
    with pytest.raises(UpstreamTimeoutError, match="read timeout"):
        await post(client, server.url)  # no answer at all
    patient = clients(read_timeout=60)
    with pytest.raises(UpstreamTimeoutError, match="deadline"):
        await post(patient, server.url, timeout=0.05)
    release.set()
    await until(lambda: all(g.is_set() for g in server.gone))  # the client hung up every time


async def test_reset_before_and_during_the_answer(serve: Any, clients: Any) -> None:
    async def reset(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.conn == 1:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await w.drain()
        w.transport.abort()
        return False

    server = await serve(reset)
    client = clients()
    with pytest.raises(UpstreamError, match="closed the connection before answering") as first:
        await post(client, server.url)
    assert len(server.requests) == 1  # a fresh connection is never retried
    resp = await post(client, server.url)
    with pytest.raises(UpstreamError, match="broke mid-response") as second:
        await resp.read()
    for err in (first.value, second.value):
        assert SECRET not in err.message and "Authorization" not in err.message
    assert next(iter(client.pools.values())).count == 0


async def test_connect_refused_is_a_short_upstream_error(clients: Any) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(UpstreamError, match=f"cannot connect to 127.0.0.1:{port}"):
        await post(clients(), f"http://127.0.0.1:{port}/v1")


async def test_stale_reused_connection_is_retried_once_on_a_fresh_one(
    serve: Any, clients: Any
) -> None:
    async def closes_when_reused(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.seq == 1:  # what a server that timed the idle connection out looks like
            w.transport.abort()
            return False
        w.write(answer())
        return True

    server = await serve(closes_when_reused)
    client = clients(clock=lambda: 100.0)  # the close comes "at once" after the write
    assert await (await post(client, server.url, b'{"n":1}')).read() == b'{"ok":true}'
    assert await (await post(client, server.url, b'{"n":2}')).read() == b'{"ok":true}'
    assert [(r.conn, r.seq, r.body) for r in server.requests] == [
        (0, 0, b'{"n":1}'),
        (0, 1, b'{"n":2}'),  # lost with the connection: nothing was answered
        (1, 0, b'{"n":2}'),  # the retry
    ]


async def test_a_connection_closed_while_idle_as_it_is_reused_is_retried(
    serve: Any, clients: Any
) -> None:
    server = await serve()
    client = clients(clock=lambda: 100.0)
    await (await post(client, server.url, b'{"n":1}')).read()
    server._writers[0].transport.abort()  # the server times the idle connection out…
    resp = await post(client, server.url, b'{"n":2}')  # …just as the client reuses it
    assert await resp.read() == b'{"ok":true}'
    assert [(r.conn, r.body) for r in server.requests] == [(0, b'{"n":1}'), (1, b'{"n":2}')]


async def test_a_request_the_upstream_worked_on_is_never_sent_again(
    serve: Any, clients: Any
) -> None:
    now = [100.0]
    worked = asyncio.Event()

    async def dies_while_working(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.seq == 1:
            await worked.wait()  # reads the request, "generates" for 0.5 s, then goes away
            return False
        w.write(answer())
        return True

    server = await serve(dies_while_working)
    client = clients(clock=lambda: now[0])
    await (await post(client, server.url, b'{"n":1}')).read()
    second = asyncio.create_task(post(client, server.url, b'{"n":2}'))
    await until(lambda: len(server.requests) == 2)
    now[0] += 0.5
    worked.set()
    with pytest.raises(UpstreamError, match="closed the connection before answering"):
        await second
    assert [r.body for r in server.requests] == [b'{"n":1}', b'{"n":2}']  # never re-sent
    assert next(iter(client.pools.values())).count == 0


async def test_a_connection_lost_while_the_request_was_written_is_retried(
    clients: Any,
) -> None:
    """However late: a server that has not received the whole request cannot have run it."""
    now = [100.0]
    bodies: list[tuple[int, int]] = []  # (connection, body length) of every whole request
    cut = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(writers)
        writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if index == 0 and bodies:  # the second request: stop reading its body
                    await cut.wait()
                    writer.transport.abort()
                    return
                body = await reader.readexactly(length)
                bodies.append((index, len(body)))
                writer.write(answer())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by accepted sockets
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(handle, sock=sock)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    try:
        client = clients(clock=lambda: now[0])
        await (await post(client, url)).read()
        conn = next(iter(client.pools.values())).idle[-1]
        big = b'{"pad":"' + b"x" * (8 << 20) + b'"}'
        sending = asyncio.create_task(post(client, url, big))
        await until(lambda: conn.writing)  # the kernel buffers are full: still writing
        now[0] += 0.5
        cut.set()
        resp = await sending
        assert await resp.read() == b'{"ok":true}'
        assert bodies == [(0, 2), (1, len(big))]  # the retry, on a fresh connection
    finally:
        server.close()
        for w in writers:
            w.close()
        await server.wait_closed()


async def test_no_retry_once_answer_bytes_arrived(serve: Any, clients: Any) -> None:
    async def breaks_when_reused(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.seq == 1:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Le")
            await w.drain()
            w.transport.abort()
            return False
        w.write(answer())
        return True

    server = await serve(breaks_when_reused)
    client = clients()
    await (await post(client, server.url)).read()
    with pytest.raises(UpstreamError, match=r"broke mid-response|before answering"):
        await post(client, server.url)
    assert len(server.requests) == 2


async def test_a_whole_read_is_woken_once_and_trickling_bytes_are_no_stall(
    serve: Any, clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    piece = b"x" * 1000
    go = [asyncio.Event() for _ in range(4)]

    async def trickle(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(go) * len(piece)))
        for event in go:
            await event.wait()
            w.write(piece)
            await w.drain()
        return True

    waits = 0
    real_wait = HTTPResponse._wait

    async def counting(self: HTTPResponse, limit: float, what: str) -> None:
        nonlocal waits
        waits += 1
        await real_wait(self, limit, what)

    monkeypatch.setattr(HTTPResponse, "_wait", counting)
    server = await serve(trickle)
    resp = await post(clients(read_timeout=60), server.url)
    waits = 0
    reading = asyncio.create_task(resp.read())

    def watchdog_fires() -> None:  # as if the read timeout had passed since the wait began
        assert resp.timer is not None
        resp.timer.cancel()
        resp.wait_until = resp.loop.time()
        resp._on_timer()

    for n, event in enumerate(go[:-1], 1):
        event.set()
        await until(lambda n=n: resp.buffered == n * len(piece))  # type: ignore[misc]
        watchdog_fires()  # bytes came since the wait began: not stalled
        await asyncio.sleep(0)
        assert not reading.done()
    go[-1].set()
    assert await reading == piece * len(go)
    assert waits == 1  # not woken per packet
    assert resp.timer is None  # disarmed at the end

    go = [asyncio.Event() for _ in range(4)]
    stalled = await post(clients(read_timeout=60), server.url)
    resp = stalled
    reading = asyncio.create_task(resp.read())
    go[0].set()
    await until(lambda: resp.buffered == len(piece))
    watchdog_fires()
    watchdog_fires()  # nothing new since the last check: stalled
    with pytest.raises(UpstreamTimeoutError, match="stalled"):
        await reading


async def test_a_stream_keeps_one_watchdog_timer(serve: Any, clients: Any) -> None:
    go = [asyncio.Event() for _ in range(5)]

    async def chunks(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for n, event in enumerate(go):
            await event.wait()
            w.write(chunk(b"data: %d\n\n" % n))
            await w.drain()
        w.write(b"0\r\n\r\n")
        return True

    server = await serve(chunks)
    resp = await post(clients(), server.url)
    timers = set()
    go[0].set()
    n = 0
    async for _ in resp.iter_chunks():
        if n < len(go) - 1:  # (the last chunk may come with the end, which disarms it)
            timers.add(resp.timer)
        n += 1
        if n < len(go):
            go[n].set()
    assert n == len(go)
    assert len(timers) == 1 and None not in timers  # one timer, not one per chunk
    assert resp.timer is None


# --- the pool ----------------------------------------------------------------------------------


async def test_pool_limit_queues_requests(serve: Any, clients: Any) -> None:
    release = asyncio.Event()

    async def held(req: Req, w: asyncio.StreamWriter) -> bool:
        await release.wait()
        w.write(answer())
        return True

    server = await serve(held)
    client = clients(max_connections=2)

    async def one() -> bytes:
        return await (await post(client, server.url)).read()

    tasks = [asyncio.create_task(one()) for _ in range(5)]
    await until(lambda: len(server.requests) == 2)
    pool = next(iter(client.pools.values()))
    assert len(pool.waiters) == 3
    release.set()
    assert await asyncio.gather(*tasks) == [b'{"ok":true}'] * 5
    assert server.connections == 2 and server.max_open == 2


async def test_waiting_for_a_connection_is_bounded_and_busy_is_distinct(
    serve: Any, clients: Any
) -> None:
    release = asyncio.Event()

    async def held(req: Req, w: asyncio.StreamWriter) -> bool:
        await release.wait()
        w.write(answer())
        return True

    server = await serve(held)
    client = clients(max_connections=1, connect_timeout=0.02)
    busy = asyncio.create_task(post(client, server.url))
    await until(lambda: len(server.requests) == 1)
    async with asyncio.timeout(30):  # a guard only: without the bound it would wait 600 s
        with pytest.raises(UpstreamBusyError, match="all 1 connections in use") as err:
            await post(client, server.url, timeout=600)
    assert err.value.status == 503 and err.value.headers["retry-after"] == "1"
    assert not isinstance(err.value, UpstreamTimeoutError)  # not the target's fault
    patient = clients(max_connections=1, connect_timeout=60)
    held_too = asyncio.create_task(post(patient, server.url))
    await until(lambda: len(server.requests) == 2)
    with pytest.raises(UpstreamBusyError):
        await post(patient, server.url, timeout=0.02)  # the request deadline bounds it too
    release.set()
    assert await (await busy).read() == b'{"ok":true}'
    assert await (await held_too).read() == b'{"ok":true}'
    assert await (await post(client, server.url)).read() == b'{"ok":true}'  # the slot is back
    assert server.connections == 2


async def test_closing_the_client_fails_its_waiters(serve: Any, clients: Any) -> None:
    release = asyncio.Event()

    async def held(req: Req, w: asyncio.StreamWriter) -> bool:
        await release.wait()
        return False

    server = await serve(held)
    client = clients(max_connections=1)
    busy = asyncio.create_task(post(client, server.url))
    await until(lambda: len(server.requests) == 1)
    waiting = asyncio.create_task(post(client, server.url))
    pool = next(iter(client.pools.values()))
    await until(lambda: len(pool.waiters) == 1)
    await client.close()
    with pytest.raises(UpstreamError, match="client is closed"):
        await waiting
    release.set()
    busy.cancel()
    with pytest.raises((asyncio.CancelledError, UpstreamError)):
        await busy


async def test_idle_connections_expire(serve: Any, clients: Any) -> None:
    now = [100.0]
    server = await serve()
    client = clients(idle_timeout=30.0, clock=lambda: now[0])
    await (await post(client, server.url)).read()
    now[0] += 29.0
    await (await post(client, server.url)).read()
    assert server.connections == 1  # still fresh enough: reused
    now[0] += 31.0
    await (await post(client, server.url)).read()
    assert server.connections == 2  # expired: closed and replaced
    await asyncio.wait_for(server.gone[0].wait(), 5)
    now[0] += 31.0
    client.sweep_idle()  # what the timer does
    await asyncio.wait_for(server.gone[1].wait(), 5)
    assert next(iter(client.pools.values())).count == 0


async def test_server_closing_an_idle_connection_frees_its_slot(serve: Any, clients: Any) -> None:
    async def then_close(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(answer())
        return req.conn != 0  # closes the first connection right after answering

    server = await serve(then_close)
    client = clients(max_connections=1)
    await (await post(client, server.url)).read()
    pool = next(iter(client.pools.values()))
    await until(lambda: pool.count == 0)
    await (await post(client, server.url)).read()
    assert server.connections == 2


async def test_closing_an_unread_response_aborts_and_a_read_one_is_kept(
    serve: Any, clients: Any
) -> None:
    async def endless(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.conn == 0:
            w.write(answer())
            return True
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            w.write(chunk(b"data: "))
            await w.drain()
            await asyncio.sleep(0.001)

    server = await serve(endless)
    client = clients()
    done = await post(client, server.url)
    await done.read()
    done.close()
    pool = next(iter(client.pools.values()))
    assert len(pool.idle) == 1
    streams = clients()
    resp = await post(streams, server.url)
    assert await anext(resp.iter_chunks())
    resp.close()
    await asyncio.wait_for(server.gone[1].wait(), 5)
    assert not server.gone[0].is_set()
    assert next(iter(streams.pools.values())).count == 0


async def test_a_cancelled_read_or_abandoned_stream_frees_the_connection(
    serve: Any, clients: Any
) -> None:
    async def half(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"data: 1\n\n"))
        await w.drain()
        assert await req.reader.read() == b""  # until the client hangs up
        return False

    server = await serve(half)
    client = clients(max_connections=1)
    resp = await post(client, server.url)
    reading = asyncio.create_task(resp.read())
    await until(lambda: resp.waiter is not None)  # read() is waiting for the rest
    pool = next(iter(client.pools.values()))
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await asyncio.wait_for(server.gone[0].wait(), 5)
    stream = (await post(client, server.url)).iter_chunks()
    assert await anext(stream) == b"data: 1\n\n"
    await stream.aclose()  # abandoned without close(): still aborted
    await asyncio.wait_for(server.gone[1].wait(), 5)
    assert pool.count == 0


async def test_a_slow_stream_reader_pauses_the_socket(serve: Any, clients: Any) -> None:
    blob = b"x" * 65536
    total = 64 * len(blob)

    async def flood(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        for _ in range(64):
            w.write(blob)
            await w.drain()
        return True

    server = await serve(flood)
    client = clients()
    resp = await post(client, server.url)
    conn = resp.conn
    assert conn is not None
    await until(lambda: conn.paused)
    assert HIGH_WATER < resp.buffered < total  # stopped reading: the rest waits in the socket
    received = 0
    async for chunk in resp.iter_chunks():
        received += len(chunk)
    assert received == total
    assert server.connections == 1


# --- bounded bodies (server.max_upstream_body) ---------------------------------------------------

MiB = 1024 * 1024


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes gzipped (about 1000:1), built without holding them in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MiB)
    parts = [packer.compress(block) for _ in range(size // MiB)]
    return b"".join([*parts, packer.compress(bytes(size % MiB)), packer.flush()])


async def test_a_declared_length_over_the_limit_is_refused_at_the_head(
    serve: Any, clients: Any
) -> None:
    async def huge(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n{" % (100 * 1024 * MiB))
        await w.drain()
        assert await req.reader.read() == b""  # the rest is never asked for: the client hangs up
        return False

    server = await serve(huge)
    client = clients()  # the default limit, 64MiB
    resp = await post(client, server.url, timeout=2)
    with pytest.raises(
        UpstreamError, match=r"'up' answer exceeds server.max_upstream_body \(64MiB\)"
    ):
        await resp.read()
    await asyncio.wait_for(server.gone[0].wait(), 5)  # aborted, never reused
    assert next(iter(client.pools.values())).count == 0


@pytest.mark.parametrize("framing", ["chunked", "close-delimited"])
async def test_a_body_without_length_is_cut_as_it_crosses_the_limit(
    serve: Any, clients: Any, framing: str
) -> None:
    piece = b"x" * 65536

    async def endless(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.seq or req.conn:  # later requests: a small answer
            w.write(answer())
            return True
        if framing == "chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(32):  # 2MiB, then it never ends
            w.write(chunk(piece) if framing == "chunked" else piece)
            await w.drain()
        assert await req.reader.read() == b""  # until the client hangs up
        return False

    server = await serve(endless)
    client = clients(max_body=MiB)
    resp = await post(client, server.url, timeout=2)
    with pytest.raises(UpstreamError, match=r"exceeds server.max_upstream_body \(1MiB\)"):
        await resp.read()
    assert resp.chunks == [] and resp.buffered == 0  # what came of it is let go
    await asyncio.wait_for(server.gone[0].wait(), 5)
    assert await (await post(client, server.url)).read() == b'{"ok":true}'
    assert server.connections == 2  # the cut connection was never reused


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
async def test_the_limit_counts_decoded_bytes_and_is_inclusive(
    serve: Any, clients: Any, encoding: str
) -> None:
    limit = 100_000
    bodies = [b"a" * limit, b"a" * (limit + 1)]

    async def sized(req: Req, w: asyncio.StreamWriter) -> bool:
        body = bodies[req.seq]
        if encoding == "gzip":
            w.write(answer(gzip.compress(body), extra="Content-Encoding: gzip\r\n"))
        else:
            w.write(answer(body))
        return True

    server = await serve(sized)
    client = clients(max_body=limit)
    assert await (await post(client, server.url)).read() == bodies[0]
    with pytest.raises(UpstreamError, match=r"exceeds server.max_upstream_body \(100kB\)"):
        await (await post(client, server.url)).read()


async def test_a_gzip_bomb_never_expands_past_the_limit(serve: Any, clients: Any) -> None:
    bomb = gzip_bomb(64 * MiB)  # ~64kB on the wire

    async def explode(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(answer(bomb, extra="Content-Encoding: gzip\r\n"))
        return True

    server = await serve(explode)
    client = clients(max_body=MiB)
    resp = await post(client, server.url)
    tracemalloc.start()
    try:
        with pytest.raises(UpstreamError, match=r"exceeds server.max_upstream_body \(1MiB\)"):
            await resp.read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB  # the limit and the compressed body, never the 64MiB


async def test_an_encoded_stream_is_inflated_in_small_pieces(serve: Any, clients: Any) -> None:
    bomb = gzip_bomb(64 * MiB)

    async def explode(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(answer(bomb, extra="Content-Encoding: gzip\r\n"))
        return True

    server = await serve(explode)
    resp = await post(clients(max_body=MiB), server.url)  # a stream has no total limit
    await until(lambda: resp.buffered == len(bomb))  # all in: it could be inflated at once
    tracemalloc.start()
    try:
        sizes = []
        async for data in resp.iter_chunks():
            sizes.append(len(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(sizes) == 64 * MiB
    assert max(sizes) <= HIGH_WATER
    assert peak < 4 * MiB


# --- TLS -----------------------------------------------------------------------------------------


@dataclass
class Certs:
    ca_file: Path
    server_ctx: ssl.SSLContext
    other_ca_file: Path = field(default=Path())


def make_certs(tmp_path: Path) -> Certs:
    """A CA and a certificate for 127.0.0.1 signed by it (and an unrelated CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def ca(name: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("aigw test CA")
    _, other_cert = ca("someone else's CA")
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(pem))
    other = tmp_path / "other-ca.pem"
    other.write_bytes(other_cert.public_bytes(pem))
    cert_file = tmp_path / "server.pem"
    cert_file.write_bytes(leaf.public_bytes(pem))
    key_file = tmp_path / "server.key"
    key_file.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return Certs(ca_file, ctx, other)


@pytest.fixture
async def https_upstream(tmp_path: Path) -> AsyncIterator[tuple[str, Certs]]:
    certs = make_certs(tmp_path)

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"echo": body, "sni_host": request.host})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock, ssl_context=certs.server_ctx).start()
    yield f"https://127.0.0.1:{port}/v1", certs
    await runner.cleanup()


async def test_tls_with_the_configured_ca(https_upstream: Any, clients: Any) -> None:
    url, certs = https_upstream
    client = clients(ca_file=str(certs.ca_file))
    for n in range(2):
        resp = await post(client, url, b'{"n":%d}' % n)
        assert json.loads(await resp.read())["echo"] == {"n": n}
    assert next(iter(client.pools.values())).opened == 1


async def test_tls_untrusted_certificate_fails_clearly(https_upstream: Any, clients: Any) -> None:
    url, certs = https_upstream
    for client in (clients(), clients(ca_file=str(certs.other_ca_file))):
        with pytest.raises(UpstreamError, match=r"TLS certificate of 127\.0\.0\.1 not trusted"):
            await post(client, url)
        assert next(iter(client.pools.values())).count == 0


async def test_start_builds_the_tls_context_off_the_event_loop(
    https_upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, certs = https_upstream
    built_in: list[str] = []
    real = ssl.create_default_context

    def recording(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built_in.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr("aigw.providers.http.ssl.create_default_context", recording)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    provider = OpenAIProvider(ProviderConfig(name="tls", base_url=url, ca_file=str(certs.ca_file)))
    try:
        await provider.start()
        assert len(built_in) == 1 and built_in[0] != threading.current_thread().name
        resp = await provider.send("chat/completions", b'{"n":1}', stream=False, timeout=5)
        assert json.loads(await resp.read())["echo"] == {"n": 1}
    finally:
        await provider.close()
    assert len(built_in) == 1  # the request used the context built at start


async def test_a_bad_ca_file_fails_requests_not_start(tmp_path: Path, clients: Any) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    client = clients(ca_file=str(bad))
    client.prepare("POST", "https://127.0.0.1:9/v1/chat/completions", {})
    await client.start()
    with pytest.raises(UpstreamError, match="cannot load its ca_file"):
        await post(client, "https://127.0.0.1:9/v1")


# --- HTTP proxies ------------------------------------------------------------------------------


class Proxy:
    """Forwards absolute-form requests and CONNECT tunnels, recording what it was asked."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.lines: list[str] = []
        self.auth: list[str | None] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://user:p%40ss@127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        self.lines.append(lines[0])
        auth = [ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("proxy-auth")]
        self.auth.append(auth[0] if auth else None)
        method, target, _ = lines[0].split(" ")
        if method == "CONNECT":
            if self.refuse:
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                writer.close()
                return
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            parts = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port)
            up_writer.write(head)  # aiohttp's server accepts the absolute form as is
        self._writers.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxy() -> AsyncIterator[Callable[..., Awaitable[Proxy]]]:
    made: list[Proxy] = []

    async def start(**kwargs: Any) -> Proxy:
        p = await Proxy(**kwargs).start()
        made.append(p)
        return p

    yield start
    for p in made:
        await p.stop()


BASIC = "Basic " + base64.b64encode(b"user:p@ss").decode()


async def test_plain_http_upstream_through_the_env_proxy(
    proxy: Any, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    p = await proxy()
    monkeypatch.setenv("HTTP_PROXY", p.url)
    provider = OpenAIProvider(
        ProviderConfig(name="up", base_url=upstream.url, api_key=Secret(SECRET))
    )
    try:
        for _ in range(2):
            body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
            resp = await provider.send("chat/completions", body, stream=False, timeout=5)
            assert json.loads(await resp.read())["object"] == "chat.completion"
    finally:
        await provider.close()
    assert p.lines == [f"POST {upstream.url}/chat/completions HTTP/1.1"]  # one kept connection
    assert p.auth == [BASIC]
    assert upstream.headers[0]["Authorization"] == f"Bearer {SECRET}"


async def test_https_upstream_through_a_connect_tunnel(
    proxy: Any, https_upstream: Any, clients: Any
) -> None:
    url, certs = https_upstream
    p = await proxy()
    client = clients(ca_file=str(certs.ca_file), proxy=p.url)
    for n in range(2):
        resp = await post(client, url, b'{"n":%d}' % n)
        assert json.loads(await resp.read())["echo"] == {"n": n}
    port = urlsplit(url).port
    assert p.lines == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]
    assert p.auth == [BASIC]


async def test_a_refused_tunnel_is_an_upstream_error(
    proxy: Any, https_upstream: Any, clients: Any
) -> None:
    url, certs = https_upstream
    p = await proxy(refuse=True)
    client = clients(ca_file=str(certs.ca_file), proxy=p.url)
    with pytest.raises(UpstreamError, match=r"proxy refused the tunnel \(HTTP 403\)") as err:
        await post(client, url)
    assert "p@ss" not in err.value.message and "user" not in err.value.message
    assert next(iter(client.pools.values())).count == 0


async def test_an_unsupported_proxy_fails_requests_not_start_up(clients: Any) -> None:
    client = clients(proxy="socks5://127.0.0.1:1080")
    with pytest.raises(UpstreamError, match="proxy unusable"):
        await post(client, "http://127.0.0.1:9/v1")


# --- the openai provider over the transport -----------------------------------------------------


@pytest.fixture
def no_env_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)


async def provider_post(provider: OpenAIProvider) -> HTTPResponse:
    resp = await provider.send("chat/completions", b"{}", stream=False, timeout=5)
    assert isinstance(resp, HTTPResponse)
    await resp.read()
    return resp


@pytest.mark.usefixtures("no_env_proxy")
async def test_a_base_url_query_stays_after_the_endpoint(serve: Any) -> None:
    server = await serve()
    base = f"http://127.0.0.1:{server.port}/openai/deployments/gpt/?api-version=2024-02-01#frag"
    provider = OpenAIProvider(ProviderConfig(name="azure", base_url=base))
    try:
        await provider_post(provider)
        await provider.probe()
    finally:
        await provider.close()
    assert [r.target for r in server.requests] == [
        "/openai/deployments/gpt/chat/completions?api-version=2024-02-01",
        "/openai/deployments/gpt/models?api-version=2024-02-01",
    ]


@pytest.mark.usefixtures("no_env_proxy")
async def test_base_url_credentials_become_basic_auth(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve()
    base = f"http://us%40er:p%3Ass@127.0.0.1:{server.port}/v1"
    provider = OpenAIProvider(ProviderConfig(name="basic", base_url=base))
    keyed = OpenAIProvider(ProviderConfig(name="keyed", base_url=base, api_key=Secret(SECRET)))
    try:
        await provider_post(provider)
        await provider_post(keyed)
    finally:
        await provider.close()
        await keyed.close()
    plain, with_key = server.requests
    assert plain.headers["authorization"] == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert plain.headers["host"] == f"127.0.0.1:{server.port}"  # never the credentials
    assert plain.target == "/v1/chat/completions"
    assert with_key.headers["authorization"] == f"Bearer {SECRET}"  # the explicit key wins
    assert "keyed" in caplog.text and "ignored" in caplog.text
    assert "p%3Ass" not in caplog.text and "p:ss" not in caplog.text


@pytest.mark.usefixtures("no_env_proxy")
async def test_retry_after_headers_are_kept_from_upstream_answers(serve: Any) -> None:
    async def overloaded(req: Req, w: asyncio.StreamWriter) -> bool:
        extra = "Retry-After: 20\r\nretry-after-ms: 19500\r\nX-Other: dropped\r\n"
        w.write(answer(b'{"error":{"message":"slow down"}}', status=429, extra=extra))
        return True

    server = await serve(overloaded)
    provider = OpenAIProvider(ProviderConfig(name="up", base_url=server.url))
    try:
        resp = await provider_post(provider)
    finally:
        await provider.close()
    assert resp.status == 429
    assert resp.headers == {
        "content-type": "application/json",
        "retry-after": "20",
        "retry-after-ms": "19500",
    }


# --- streamed request bodies and binary answers (the pass-through endpoints) ---------------------

CHUNK = 64 * 1024


class BodySink:
    """An upstream that reads each request body by its framing (Content-Length or chunked), only
    while `gate` is set, hashing it, and answers `{"size", "sha256"}`; or, with `early`, answers
    that at once after the head and then reads and drops whatever still comes. It records the
    heads, the bodies it got whole, and the connections that ended mid-body (`aborted`)."""

    def __init__(self, *, early: bytes | None = None, rcvbuf: int | None = None) -> None:
        self.early = early
        self.rcvbuf = rcvbuf
        self.gate = asyncio.Event()
        self.gate.set()
        self.heads: list[dict[str, str]] = []
        self.bodies: list[tuple[int, str]] = []  # (size, sha256) of every whole body
        self.received = 0  # body bytes read, all requests together
        self.connections = 0
        self.aborted = asyncio.Event()
        self.closed = asyncio.Event()  # some connection ended (cleanly or not)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def start(self) -> BodySink:
        sock = socket.socket()
        if self.rcvbuf is not None:  # inherited by the accepted sockets
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.bind(("127.0.0.1", 0))
        self._server = await asyncio.start_server(self._serve, sock=sock)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self.gate.set()
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, n: int, digest: Any) -> None:
        while n:
            await self.gate.wait()
            data = await reader.readexactly(min(n, CHUNK))
            n -= len(data)
            self.received += len(data)
            digest.update(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # closed between requests
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                self.heads.append(headers)
                if self.early is not None:
                    writer.write(self.early)
                    await writer.drain()
                    while await reader.read(CHUNK):
                        pass
                    return
                digest = hashlib.sha256()
                before = self.received
                if "content-length" in headers:
                    await self._read(reader, int(headers["content-length"]), digest)
                else:
                    assert headers["transfer-encoding"] == "chunked"
                    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                        await self._read(reader, size, digest)
                        assert await reader.readexactly(2) == b"\r\n"
                    assert await reader.readexactly(2) == b"\r\n"
                size = self.received - before
                self.bodies.append((size, digest.hexdigest()))
                writer.write(
                    answer(json.dumps({"size": size, "sha256": digest.hexdigest()}).encode())
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.aborted.set()
        finally:
            self.closed.set()
            writer.close()


@pytest.fixture
async def sinks() -> AsyncIterator[Callable[..., Awaitable[BodySink]]]:
    made: list[BodySink] = []

    async def start(**kwargs: Any) -> BodySink:
        sink = await BodySink(**kwargs).start()
        made.append(sink)
        return sink

    yield start
    for sink in made:
        await sink.stop()


class ClientBody:
    """The client's side of an upload: chunks made as they are asked for (never held together),
    hashed and counted as they are taken; `fail_after` raises what a vanished client raises."""

    def __init__(
        self,
        total: int,
        *,
        sizes: tuple[int, ...] = (CHUNK,),
        fail_after: int | None = None,
        hold_after: int | None = None,
    ) -> None:
        self.total = total
        self.sizes = sizes
        self.fail_after = fail_after
        self.hold_after = hold_after
        self.taken = 0
        self.pulls = 0
        self.digest = hashlib.sha256()
        self.release = asyncio.Event()
        self._blob = bytes(range(256)) * (max(sizes) // 256 + 1)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.taken < self.total:
            if self.fail_after is not None and self.pulls == self.fail_after:
                raise ConnectionResetError("the client went away")
            if self.hold_after is not None and self.pulls == self.hold_after:
                await self.release.wait()
            size = min(self.sizes[self.pulls % len(self.sizes)], self.total - self.taken)
            data = self._blob[self.pulls % 256 : self.pulls % 256 + size]
            self.pulls += 1
            self.taken += size
            self.digest.update(data)
            yield data

    def body(self, *, length: bool = True, max_bytes: int = 1 << 40, head: bytes = b"") -> Any:
        from aigw.providers.base import StreamedBody

        if head:
            self.digest = hashlib.sha256(head)
        size = len(head) + self.total if length else None
        return StreamedBody(aiter(self), length=size, max_bytes=max_bytes, head=head)


def upload(client: HTTPClient, url: str, body: Any, *, timeout: float = 10.0) -> Any:
    prepared = client.prepare("POST", url + "/audio/transcriptions", {"Authorization": SECRET})
    ct = b"Content-Type: multipart/form-data; boundary=xyz\r\n"
    return client.send_streamed(prepared, body, timeout=timeout, extra_headers=ct)


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_a_streamed_body_goes_whole_with_its_length_or_chunked_on_a_new_connection(
    sinks: Any, clients: Any, length: bool
) -> None:
    sink = await sinks()
    client = clients()
    await (await post(client, sink.url, b"{}")).read()  # an idle connection waits in the pool
    # Odd sizes and an empty chunk (which must not end a chunked body).
    source = ClientBody(3 * MiB + 5, sizes=(CHUNK, 1, 0, 70_000, 3))
    resp = await upload(client, sink.url, source.body(length=length))
    assert resp.status == 200
    assert json.loads(await resp.read()) == {
        "size": source.total,
        "sha256": source.digest.hexdigest(),
    }
    head = sink.heads[1]
    assert head["content-type"] == "multipart/form-data; boundary=xyz"
    if length:
        assert head["content-length"] == str(source.total) and "transfer-encoding" not in head
    else:
        assert head["transfer-encoding"] == "chunked" and "content-length" not in head
    assert sink.connections == 2  # never on the idle connection, which might be stale
    pool = next(iter(client.pools.values()))
    assert len(pool.idle) == 2  # kept alive after a whole upload…
    await (await post(client, sink.url, b"{}")).read()
    assert sink.connections == 2  # …and reused


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_a_body_over_max_bytes_is_cut_one_chunk_past_the_limit(
    sinks: Any, clients: Any, length: bool
) -> None:
    from aigw.errors import RequestTooLargeError

    sink = await sinks()
    client = clients()
    limit = MiB
    source = ClientBody(64 * MiB)
    body = source.body(length=False, max_bytes=limit)
    with pytest.raises(RequestTooLargeError, match=f"limit of {limit} bytes") as exc:
        await upload(client, sink.url, body)
    assert exc.value.status == 413
    assert limit < source.taken <= limit + CHUNK  # read no further than the crossing chunk
    await asyncio.wait_for(sink.aborted.wait(), 5)  # the upstream saw the call aborted
    assert sink.bodies == [] and sink.received <= source.taken
    assert next(iter(client.pools.values())).count == 0
    # A declared length over the limit is refused before a byte is read or sent.
    declared = ClientBody(64 * MiB)
    with pytest.raises(RequestTooLargeError, match="is 67108864 bytes; the limit is 1048576"):
        declared.body(max_bytes=limit)
    assert declared.pulls == 0


async def test_a_body_that_breaks_its_declared_length_is_refused(sinks: Any, clients: Any) -> None:
    from aigw.errors import MalformedRequestError
    from aigw.providers.base import StreamedBody

    sink = await sinks()
    client = clients()
    longer = ClientBody(3 * CHUNK)
    body = StreamedBody(aiter(longer), length=CHUNK + 10, max_bytes=MiB)
    with pytest.raises(MalformedRequestError, match="longer than its Content-Length"):
        await upload(client, sink.url, body)
    await asyncio.wait_for(sink.aborted.wait(), 5)
    sink.aborted.clear()
    shorter = ClientBody(CHUNK)
    body = StreamedBody(aiter(shorter), length=3 * CHUNK, max_bytes=MiB)
    with pytest.raises(MalformedRequestError, match="ended before its Content-Length"):
        await upload(client, sink.url, body)
    await asyncio.wait_for(sink.aborted.wait(), 5)
    assert sink.bodies == []
    assert next(iter(client.pools.values())).count == 0


async def settled(value: Callable[[], int]) -> int:
    """`value()` once it stopped changing for 50 turns of the loop (bounded in time)."""
    async with asyncio.timeout(5):
        last, calm = value(), 0
        while calm < 50:
            await asyncio.sleep(0.001)
            now = value()
            calm = calm + 1 if now == last else 0
            last = now
    return last


async def test_the_client_is_read_no_faster_than_the_upstream_takes_the_body(
    sinks: Any, clients: Any
) -> None:
    sink = await sinks(rcvbuf=4096)
    sink.gate.clear()  # the upstream reads the head, then nothing
    client = clients()
    source = ClientBody(32 * MiB)
    sending = asyncio.create_task(upload(client, sink.url, source.body()))
    taken = await settled(lambda: source.taken)
    # The sender blocks: the client's next chunk is not read while our buffer holds the last
    # one; what was taken sits in the kernel's socket buffers and the upstream's reader.
    assert not sending.done()
    assert 0 < taken < 8 * MiB
    sink.gate.set()
    resp = await sending
    assert json.loads(await resp.read()) == {
        "size": source.total,
        "sha256": source.digest.hexdigest(),
    }


async def test_an_upstream_that_stops_reading_the_body_times_out(sinks: Any, clients: Any) -> None:
    sink = await sinks(rcvbuf=4096)
    sink.gate.clear()
    client = clients(read_timeout=0.3)
    source = ClientBody(32 * MiB)
    with pytest.raises(UpstreamTimeoutError, match="stopped reading the request body"):
        await upload(client, sink.url, source.body())
    assert source.taken < 8 * MiB
    sink.gate.set()
    await asyncio.wait_for(sink.aborted.wait(), 5)
    assert next(iter(client.pools.values())).count == 0


async def test_a_client_that_stops_sending_is_bounded_by_the_deadline(
    sinks: Any, clients: Any
) -> None:
    sink = await sinks()
    client = clients()
    source = ClientBody(4 * CHUNK, hold_after=2)  # sends two chunks, then nothing
    with pytest.raises(UpstreamTimeoutError, match="deadline passed while the request body"):
        await upload(client, sink.url, source.body(), timeout=0.3)
    await asyncio.wait_for(sink.aborted.wait(), 5)
    assert source.pulls == 2
    assert next(iter(client.pools.values())).count == 0


async def test_the_client_stream_failing_aborts_the_upstream_call(sinks: Any, clients: Any) -> None:
    sink = await sinks()
    client = clients()
    source = ClientBody(4 * MiB, fail_after=3)
    body = source.body()
    with pytest.raises(ConnectionResetError, match="the client went away"):
        await upload(client, sink.url, body)
    assert not body.replayable
    await asyncio.wait_for(sink.aborted.wait(), 5)
    assert sink.bodies == []
    assert next(iter(client.pools.values())).count == 0


async def test_a_body_is_replayable_until_the_clients_stream_is_touched(
    sinks: Any, clients: Any
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = ClientBody(MiB + 1)
    body = source.body(head=b"--xyz\r\nthe part the gateway read to route it\r\n")
    with pytest.raises(UpstreamError, match="cannot connect"):
        await upload(clients(), f"http://127.0.0.1:{port}/v1", body)
    assert body.replayable and source.pulls == 0  # another target may have it
    sink = await sinks()
    resp = await upload(clients(), sink.url, body)
    expected = {"size": len(body.head) + source.total, "sha256": source.digest.hexdigest()}
    assert json.loads(await resp.read()) == expected
    assert not body.replayable


async def test_an_upstream_that_answers_before_the_whole_body_is_listened_to(
    sinks: Any, clients: Any
) -> None:
    refusal = b'{"error":{"message":"too big","type":"invalid_request_error"}}'
    sink = await sinks(early=answer(refusal, status=413))
    client = clients()
    source = ClientBody(64 * MiB)
    resp = await upload(client, sink.url, source.body())
    assert resp.status == 413
    assert await resp.read() == refusal
    assert source.taken < 64 * MiB  # the rest was never read from the client
    # The connection carried an unfinished request: closed, never reused.
    await asyncio.wait_for(sink.closed.wait(), 5)
    assert next(iter(client.pools.values())).count == 0


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_binary_answer_streams_chunk_by_chunk_past_max_body(
    serve: Any, clients: Any, framing: str
) -> None:
    audio = bytes(range(256)) * (4 * MiB // 256)
    more = asyncio.Event()

    async def speech(req: Req, w: asyncio.StreamWriter) -> bool:
        pieces = [audio[i : i + CHUNK] for i in range(0, len(audio), CHUNK)]
        head = "HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\n"
        if framing == "chunked":
            head += "Transfer-Encoding: chunked\r\n\r\n"
            pieces = [chunk(p) for p in pieces] + [b"0\r\n\r\n"]
        else:
            head += f"Content-Length: {len(audio)}\r\n\r\n"
        w.write(head.encode())
        w.write(pieces[0])
        await w.drain()
        await more.wait()  # the rest only once the client had the first piece
        for p in pieces[1:]:
            w.write(p)
            await w.drain()
        return True

    server = await serve(speech)
    client = clients(max_body=MiB)  # bounds bodies read whole, not a stream read as it comes
    prepared = client.prepare("POST", server.url + "/audio/speech", {})
    resp = await client.send(prepared, b'{"input":"hi"}', timeout=10)
    assert resp.status == 200
    assert resp.headers["content-type"] == "audio/wav"
    assert resp.body_length() == (len(audio) if framing == "content-length" else None)
    stream = resp.iter_chunks()
    got = [await anext(stream)]
    assert audio.startswith(got[0])
    more.set()
    got += [piece async for piece in stream]
    assert len(got) > 2 and b"".join(got) == audio
    assert server.connections == 1 and next(iter(client.pools.values())).idle  # kept alive
