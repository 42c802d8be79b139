"""Streaming benchmark: SSE chunks/s through each leg and time to first token (issue 7).

    python bench/stream.py [--duration 5] [--rounds 3] [--chunks 2000] [--quick]

In one run this starts, all on 127.0.0.1 and all cleaned up on exit (Ctrl+C included):

- a streaming upstream (this file, `upstream` role: a raw asyncio + httptools server) answering
  `POST …/chat/completions` with `stream: true` in OpenAI's wire format, chunked
  `text/event-stream`: a role chunk, `max_tokens` content chunks, a finish chunk, a usage chunk
  when `stream_options.include_usage` (and then `"usage":null` on every other chunk, as OpenAI
  does), `data: [DONE]`. Under `/sse/` it writes every event as its own write as fast as the
  socket takes them (the throughput legs); elsewhere it paces them: the role chunk at once, the
  first content chunk after `--first-delay-ms`, the next ones `--chunk-delay-ms` apart, each a
  separate write (the time-to-first-token legs);
- bench/passthrough.py (the bare aiohttp floor) and `python -m aigw serve` with features off and
  on, configured by bench/run.py's `aigw_config()` against this upstream: `bench-stream` routes to
  `/sse/v1` (fast), `bench-model` to `/v1` (paced);
- for every leg, a client (this file, `client` role: asyncio + httptools, one keep-alive
  connection per stream slot) that checks every stream it gets: byte-equal to what the upstream
  sent directly, or else reassembled event by event to the expected text and usage. One wrong
  stream fails the run; no figure is reported for a broken leg.

The upstream and the client share CPU 1, the proxy under test has CPU 0 (as in bench/run.py).
Figures: chunks/s (every `chat.completion.chunk` event; [DONE] not counted) for long streams at
each concurrency, ratios to direct and to the pass-through of the same round, proxy CPU µs per
chunk; time to first content chunk at c=1 (median, p99), and its overhead over direct.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import run as harness  # noqa: E402
from run import (  # noqa: E402
    LOAD_CPU,
    MODEL,
    PROXY_CPU,
    RESULTS_DIR,
    CheckError,
    Children,
    StartError,
    _fmt,
    cpu_busy_seconds,
    cpu_seconds,
    free_port,
    rss_mib,
)

FAST_MODEL = harness.STREAM_MODEL  # aigw_config routes it to /sse/v1: the fast stream
PACED_MODEL = MODEL  # routed to /v1: the paced stream
FAST_PATH = "/sse/v1/chat/completions"
PACED_PATH = "/v1/chat/completions"
AIGW_PATH = "/v1/chat/completions"
UPSTREAM_MODEL = harness.UPSTREAM_MODEL
PROMPT_TOKENS = 17
TARGET_NAMES = ("direct", "relay", "passthrough", "aigw-off", "aigw-on")
DEFAULT_TARGETS = "direct,passthrough,aigw-off,aigw-on"
LABELS = {
    "direct": "direct",
    "relay": "raw asyncio TCP relay (floor)",
    "passthrough": "bare aiohttp pass-through",
    "aigw-off": "aigw features off",
    "aigw-on": "aigw features on",
}


# --- the wire format (shared by the upstream, the client's check and the test) ----------------

_WORDS = [" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ","]


def token(i: int) -> str:
    """The i-th content token: words with a counter now and then, so no two streams of
    different lengths share a text by accident."""
    return _WORDS[i % len(_WORDS)] if i % 50 else f" {i}"


def expected_text(n: int) -> str:
    return "".join(token(i) for i in range(n))


def usage_of(n: int) -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": n,
        "total_tokens": PROMPT_TOKENS + n,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def sse_events(n: int, include_usage: bool) -> list[bytes]:
    """OpenAI's chat.completion.chunk stream, one `data: …\\n\\n` event per item, [DONE] last."""
    head = (
        '{"id":"chatcmpl-benchstream0001","object":"chat.completion.chunk","created":1732700000,'
        f'"model":"{UPSTREAM_MODEL}","service_tier":"default","system_fingerprint":"fp_bench",'
        '"choices":'
    )
    tail = ',"usage":null}' if include_usage else "}"

    def event(choices: str, end: str = tail) -> bytes:
        return f"data: {head}{choices}{end}\n\n".encode()

    def choice(delta: dict[str, Any], finish: str | None) -> str:
        item = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return "[" + json.dumps(item, separators=(",", ":")) + "]"

    events = [event(choice({"role": "assistant", "content": "", "refusal": None}, None))]
    events += [event(choice({"content": token(i)}, None)) for i in range(n)]
    events.append(event(choice({}, "stop")))
    if include_usage:
        usage = json.dumps(usage_of(n), separators=(",", ":"))
        events.append(event("[]", f',"usage":{usage}}}'))
    events.append(b"data: [DONE]\n\n")
    return events


def chunk_count(n: int, include_usage: bool) -> int:
    """chat.completion.chunk events in a stream of n content chunks ([DONE] not counted)."""
    return n + 2 + int(include_usage)


def check_stream(body: bytes, n: int, include_usage: bool) -> str | None:
    """None when `body` reassembles to the expected text (and usage); else what is wrong."""
    import orjson

    text: list[str] = []
    usage: dict[str, Any] | None = None
    finish = None
    done = False
    role = None
    for raw in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not raw.strip():
            continue
        if done:
            return "events after data: [DONE]"
        lines = [x for x in raw.split(b"\n") if x.startswith(b"data:")]
        if len(lines) != 1:
            return f"an event without exactly one data line: {raw[:120]!r}"
        payload = lines[0][5:].strip()
        if payload == b"[DONE]":
            done = True
            continue
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return f"an event that is not JSON: {payload[:120]!r}"
        if chunk.get("object") != "chat.completion.chunk":
            return f"not a chat.completion.chunk: {payload[:120]!r}"
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk.get("choices") or []:
            delta = c.get("delta") or {}
            role = role or delta.get("role")
            text.append(delta.get("content") or "")
            finish = c.get("finish_reason") or finish
    if not done:
        return "no data: [DONE]"
    if role != "assistant" or finish != "stop":
        return f"role {role!r}, finish_reason {finish!r}"
    got = "".join(text)
    if got != expected_text(n):
        return f"text differs: {len(got)} chars, expected {len(expected_text(n))}"
    if include_usage and usage != usage_of(n):
        return f"usage {usage!r}, expected {usage_of(n)!r}"
    if not include_usage and usage is not None:
        return f"usage {usage!r} that the client did not ask for"
    return None


# --- the upstream role ---------------------------------------------------------------------


class UpstreamServer(asyncio.Protocol):
    """One connection of the streaming upstream. No pipelining (no client here pipelines)."""

    first_delay = 0.02
    chunk_delay = 0.002
    frames: dict[tuple[int, bool], list[bytes]] = {}

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.drained: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method, url, body = self.parser.get_method(), self.url, b"".join(self.body)
        self.url, self.body = b"", []
        self.task = asyncio.ensure_future(self.answer(method, url, body))

    async def answer(self, method: bytes, url: bytes, body: bytes) -> None:
        t = self.transport
        assert t is not None
        path = url.split(b"?", 1)[0]
        if method == b"GET" and path.endswith(b"/models"):
            return self.whole(200, json.dumps(harness.MODELS_LIST).encode())
        if method != b"POST" or not path.endswith(b"/chat/completions"):
            return self.whole(404, b'{"error":{"message":"not found"}}')
        try:
            req = json.loads(body)
            n = int(req.get("max_tokens") or 16)
            include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        except (ValueError, TypeError, AttributeError):
            return self.whole(400, b'{"error":{"message":"bad request"}}')
        if not req.get("stream"):
            answer = dict(harness.COMPLETION)
            answer["usage"] = usage_of(n)
            answer["choices"] = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": expected_text(n)},
                    "finish_reason": "stop",
                }
            ]
            return self.whole(200, json.dumps(answer).encode())
        key = (n, include_usage)
        frames = self.frames.get(key)
        if frames is None:
            frames = [b"%x\r\n%s\r\n" % (len(e), e) for e in sse_events(n, include_usage)]
            frames.append(b"0\r\n\r\n")
            if len(self.frames) > 64:
                self.frames.clear()
            self.frames[key] = frames
        t.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        if b"/sse/" in path:
            for frame in frames:  # one write per event; coalesced only when the socket is full
                t.write(frame)
                if self.drained is not None:
                    await self.drained
            return None
        t.write(frames[0])  # paced: role now, first content after the "model" thinks
        await asyncio.sleep(self.first_delay)
        for frame in frames[1 : n + 1]:
            t.write(frame)
            await asyncio.sleep(self.chunk_delay)
        t.write(b"".join(frames[n + 1 :]))
        return None

    def whole(self, status: int, body: bytes) -> None:
        assert self.transport is not None
        reason = b"OK" if status == 200 else b"ERR"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, reason, len(body), body)
        )


def upstream_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="stream.py upstream")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--first-delay-ms", type=float, default=20.0)
    p.add_argument("--chunk-delay-ms", type=float, default=2.0)
    args = p.parse_args(argv)
    UpstreamServer.first_delay = args.first_delay_ms / 1000
    UpstreamServer.chunk_delay = args.chunk_delay_ms / 1000

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            UpstreamServer, "127.0.0.1", args.port, backlog=1024, reuse_address=True
        )
        async with server:
            await server.serve_forever()

    _run(serve())


def _run(coro: Any) -> Any:
    """The harness's own loop: uvloop when installed (it is not what is being measured)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# --- the relay role: the floor of any proxy on another core -------------------------------


class _Pipe(asyncio.Protocol):
    """One side of a byte relay: what arrives here is written to `peer` unchanged."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []  # bytes that arrived before the other side connected
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
        else:
            peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # flow control: our side's buffer is full, so stop reading the peer
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


def relay_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="stream.py relay")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    args = p.parse_args(argv)

    async def serve() -> None:
        loop = asyncio.get_running_loop()

        def accept() -> _Pipe:
            down = _Pipe()

            async def connect() -> None:
                try:
                    _, up = await loop.create_connection(_Pipe, "127.0.0.1", args.upstream_port)
                except OSError:
                    if down.transport is not None:
                        down.transport.close()
                    return
                up.peer, down.peer = down, up
                for data in down.pending:
                    assert up.transport is not None
                    up.transport.write(data)
                down.pending = []

            down.task = loop.create_task(connect())  # held: a bare task may be collected
            return down

        server = await loop.create_server(accept, "127.0.0.1", args.port, backlog=1024)
        async with server:
            await server.serve_forever()

    _run(serve())


# --- the client role -----------------------------------------------------------------------


class StreamConn(asyncio.Protocol):
    """One keep-alive client connection; `fetch()` sends one request and reads its stream."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.parts: list[bytes] = []
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.keep_alive = True
        # time to first content: the 2nd event (the 1st is the role chunk) ends a "\n\n"
        self.want_first = False
        self.seps = 0
        self.last_nl = False
        self.first_at = 0.0
        self.reads = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)
        if self.want_first:
            seps = body.count(b"\n\n") + (self.last_nl and body[:1] == b"\n")
            self.last_nl = body[-1:] == b"\n"
            self.seps += seps
            if self.seps >= 2:
                self.first_at = time.perf_counter()
                self.want_first = False

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def fetch(self, request: bytes, *, first: bool) -> tuple[int, bytes, float]:
        """(status, body, perf_counter when the first content chunk arrived or 0)."""
        if self.transport is None:
            raise ConnectionError("connection closed")
        self.parts = []
        self.want_first, self.seps, self.last_nl, self.first_at = first, 0, False, 0.0
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self.waiter
        self.waiter = None
        return self.status, b"".join(self.parts), self.first_at


@dataclass(slots=True)
class ClientResult:
    streams: int = 0
    chunks: int = 0
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    byte_exact: int = 0  # streams equal to the direct stream byte for byte (others reassembled)
    reads: int = 0  # socket reads by the client: chunks per read shows how much got coalesced
    ttft_ms: list[float] = field(default_factory=list)
    error: str = ""


def client_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="stream.py client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--key", default="")
    p.add_argument("--chunks", type=int, required=True, help="content chunks per stream")
    p.add_argument("--usage", action="store_true", help="ask for stream_options.include_usage")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--mode", choices=("throughput", "ttft"), required=True)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds (throughput) or requests")
    p.add_argument("--duration", type=float, default=5.0, help="seconds (throughput)")
    p.add_argument("--requests", type=int, default=200, help="requests (ttft)")
    args = p.parse_args(argv)
    result = _run(_client(args))
    print("STREAM_RESULT " + json.dumps(dataclasses.asdict(result)), flush=True)


async def _client(args: argparse.Namespace) -> ClientResult:
    body: dict[str, Any] = {
        "model": args.model,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": args.chunks,
        "stream": True,
    }
    if args.usage:
        body["stream_options"] = {"include_usage": True}
    payload = json.dumps(body, separators=(",", ":")).encode()
    auth = f"Authorization: Bearer {args.key}\r\n" if args.key else ""
    request = (
        f"POST {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{auth}"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    expected = b"".join(sse_events(args.chunks, args.usage))
    per_stream = chunk_count(args.chunks, args.usage)
    loop = asyncio.get_running_loop()
    conns: list[StreamConn] = []
    for _ in range(args.connections):
        _, conn = await loop.create_connection(StreamConn, "127.0.0.1", args.port)
        conns.append(conn)
    res = ClientResult()

    async def one(conn: StreamConn, *, first: bool = False) -> float:
        """One checked stream; returns the time to first content (0 unless `first`)."""
        sent = time.perf_counter()
        status, data, first_at = await conn.fetch(request, first=first)
        if status != 200:
            raise CheckError(f"HTTP {status}: {data[:300]!r}")
        if data == expected:
            res.byte_exact += 1
        else:
            problem = check_stream(data, args.chunks, args.usage)
            if problem:
                raise CheckError(f"{problem}; stream starts {data[:200]!r}")
        if not conn.keep_alive:
            raise CheckError("the server closed the keep-alive connection")
        if first and not first_at:
            raise CheckError("no first content chunk seen")
        return (first_at - sent) if first else 0.0

    async def loop_until(deadline: float, conn: StreamConn, counts: list[int]) -> None:
        while time.perf_counter() < deadline:
            await one(conn)
            counts[0] += 1

    try:
        if args.mode == "throughput":
            counts = [0]
            deadline = time.perf_counter() + args.warmup
            await asyncio.gather(*(loop_until(deadline, c, counts) for c in conns))
            await _go()
            res.byte_exact = 0
            reads0 = sum(c.reads for c in conns)
            counts = [0]
            cpu0, t0 = time.process_time(), time.perf_counter()
            deadline = t0 + args.duration
            await asyncio.gather(*(loop_until(deadline, c, counts) for c in conns))
            res.wall_s = time.perf_counter() - t0
            res.client_cpu_s = time.process_time() - cpu0
            res.streams = counts[0]
            res.chunks = counts[0] * per_stream
            res.reads = sum(c.reads for c in conns) - reads0
        else:
            conn = conns[0]
            for _ in range(int(args.warmup)):
                await one(conn, first=True)
            await _go()
            res.byte_exact = 0
            reads0 = conn.reads
            cpu0, t0 = time.process_time(), time.perf_counter()
            for _ in range(args.requests):
                res.ttft_ms.append(await one(conn, first=True) * 1000)
            res.wall_s = time.perf_counter() - t0
            res.client_cpu_s = time.process_time() - cpu0
            res.streams = args.requests
            res.chunks = args.requests * per_stream
            res.reads = conn.reads - reads0
    except (CheckError, ConnectionError) as exc:
        res.error = str(exc)
    finally:
        for c in conns:
            if c.transport is not None:
                c.transport.close()
    return res


async def _go() -> None:
    """Tell the parent the warm-up is over; wait for its go (it reads the proxy's CPU first)."""
    print("WARM", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "GO":
        raise CheckError("the parent went away")


# --- the parent: targets, legs ------------------------------------------------------------


@dataclass(slots=True)
class Target:
    name: str
    label: str
    port: int
    pid: int | None  # the proxy measured; None for direct
    key: str = ""
    fast_path: str = FAST_PATH
    paced_path: str = PACED_PATH
    rss_start_mib: float = 0.0


@dataclass(slots=True)
class Leg:
    target: str
    label: str
    kind: str  # "throughput" | "ttft"
    connections: int
    usage: bool  # the client asked for stream_options.include_usage
    round: int = 0
    content_chunks: int = 0  # per stream
    streams: int = 0
    chunks: int = 0
    wall_s: float = 0.0
    chunks_per_s: float = 0.0
    streams_per_s: float = 0.0
    byte_exact: int = 0
    chunks_per_client_read: float = 0.0
    client_cpu_s: float = 0.0
    client_core_busy: float = 0.0
    upstream_cpu_s: float = 0.0
    load_core_busy: float = 0.0  # upstream + client, fraction of their shared core
    proxy_cpu_s: float | None = None
    proxy_cpu_us_per_chunk: float | None = None
    proxy_cpu_us_per_stream: float | None = None
    proxy_core_busy: float | None = None
    other_on_proxy_core: float | None = None
    other_on_load_core: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    ttft_mean_ms: float | None = None
    ttft_ms: list[float] = field(default_factory=list)
    # paired with the same round's direct and pass-through legs
    vs_direct: float | None = None
    vs_passthrough: float | None = None
    ttft_p50_overhead_ms: float | None = None
    ttft_p99_overhead_ms: float | None = None
    rss_mib: float | None = None


def run_client(
    children: Children,
    target: Target,
    upstream_pid: int,
    *,
    kind: str,
    connections: int,
    usage: bool,
    chunks: int,
    duration: float,
    warmup: float,
    requests: int,
    pin: bool,
    taskset: str,
) -> Leg:
    path = target.fast_path if kind == "throughput" else target.paced_path
    model = FAST_MODEL if kind == "throughput" else PACED_MODEL
    argv = [sys.executable, str(Path(__file__).resolve()), "client", "--port", str(target.port)]
    argv += ["--path", path, "--model", model, "--chunks", str(chunks), "--mode", kind]
    argv += ["--connections", str(connections), "--duration", str(duration)]
    argv += ["--warmup", str(warmup), "--requests", str(requests)]
    if usage:
        argv.append("--usage")
    if target.key:
        argv += ["--key", target.key]  # a throwaway key made for this run
    if pin:
        argv = [taskset, "-c", LOAD_CPU, *argv]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=harness.REPO_DIR,
        start_new_session=True,
    )
    children.procs.append(proc)
    leg = Leg(target.name, target.label, kind, connections, usage, content_chunks=chunks)
    limit = time.monotonic() + warmup * (1 if kind == "throughput" else 0.5) + 60
    try:
        assert proc.stdout is not None and proc.stdin is not None
        out: list[str] = []
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line == "WARM":
                break
            out.append(line)
            if time.monotonic() > limit:
                raise CheckError(f"{target.label}: the client's warm-up did not end")
        else:
            raise CheckError(f"{target.label}: the client failed: {' / '.join(out)[-600:]}")
        proxy0 = cpu_seconds(target.pid) if target.pid else 0.0
        up0 = cpu_seconds(upstream_pid)
        busy0 = cpu_busy_seconds()
        t0 = time.monotonic()
        proc.stdin.write(b"GO\n")
        proc.stdin.flush()
        result = None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("STREAM_RESULT "):
                result = json.loads(line.removeprefix("STREAM_RESULT "))
                break
            out.append(line)
        wall = time.monotonic() - t0
        up_cpu = cpu_seconds(upstream_pid) - up0
        busy1 = cpu_busy_seconds()
        proxy_cpu = (cpu_seconds(target.pid) - proxy0) if target.pid else None
        proc.wait(10)
    finally:
        children.stop(proc)
    if result is None:
        raise CheckError(f"{target.label}: no result from the client: {' / '.join(out)[-600:]}")
    if result["error"]:
        raise CheckError(f"{target.label} {kind} c={connections}: BROKEN: {result['error']}")
    leg.streams, leg.chunks = result["streams"], result["chunks"]
    leg.wall_s = result["wall_s"]
    leg.byte_exact = result["byte_exact"]
    leg.chunks_per_client_read = leg.chunks / max(result["reads"], 1)
    leg.chunks_per_s = leg.chunks / leg.wall_s
    leg.streams_per_s = leg.streams / leg.wall_s
    leg.client_cpu_s = result["client_cpu_s"]
    leg.client_core_busy = leg.client_cpu_s / leg.wall_s
    leg.upstream_cpu_s = up_cpu
    leg.load_core_busy = (leg.client_cpu_s + up_cpu) / wall
    if proxy_cpu is not None and target.pid:
        leg.proxy_cpu_s = proxy_cpu
        leg.proxy_cpu_us_per_chunk = proxy_cpu / max(leg.chunks, 1) * 1e6
        leg.proxy_cpu_us_per_stream = proxy_cpu / max(leg.streams, 1) * 1e6
        leg.proxy_core_busy = proxy_cpu / wall
        leg.rss_mib = rss_mib(target.pid)
    if pin:
        proxy_core = busy1[PROXY_CPU] - busy0[PROXY_CPU] - (proxy_cpu or 0.0)
        load_core = busy1[LOAD_CPU] - busy0[LOAD_CPU] - up_cpu - leg.client_cpu_s
        leg.other_on_proxy_core = max(0.0, proxy_core) / wall
        leg.other_on_load_core = max(0.0, load_core) / wall
    if result["ttft_ms"]:
        ttft = sorted(result["ttft_ms"])
        leg.ttft_ms = ttft
        leg.ttft_p50_ms = statistics.median(ttft)
        leg.ttft_p99_ms = ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))]
        leg.ttft_mean_ms = statistics.fmean(ttft)
    return leg


def pair_up(legs: list[Leg]) -> None:
    by_key = {(x.kind, x.connections, x.usage, x.round, x.target): x for x in legs}
    for leg in legs:
        k = (leg.kind, leg.connections, leg.usage, leg.round)
        direct = by_key.get((*k, "direct"))
        pt = by_key.get((*k, "passthrough"))
        if direct and leg.target != "direct":
            leg.vs_direct = leg.chunks_per_s / direct.chunks_per_s
            if leg.ttft_p50_ms is not None and direct.ttft_p50_ms is not None:
                leg.ttft_p50_overhead_ms = leg.ttft_p50_ms - direct.ttft_p50_ms
                leg.ttft_p99_overhead_ms = (leg.ttft_p99_ms or 0) - (direct.ttft_p99_ms or 0)
        if pt and leg.target not in ("direct", "relay", "passthrough"):
            leg.vs_passthrough = leg.chunks_per_s / pt.chunks_per_s


# --- starting the targets -------------------------------------------------------------------


def start_upstream(
    children: Children, tmp: Path, pin: bool, taskset: str, args: argparse.Namespace
) -> tuple[int, int]:
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "upstream", "--port", str(port)]
    argv += ["--first-delay-ms", str(args.first_delay_ms)]
    argv += ["--chunk-delay-ms", str(args.chunk_delay_ms)]
    if pin:
        argv = [taskset, "-c", LOAD_CPU, *argv]
    log = tmp / "upstream.log"
    proc = children.start(argv, log=log)
    harness.wait_ready(proc, f"http://127.0.0.1:{port}/v1/models", log, "streaming upstream")
    return port, proc.pid


def check_target(target: Target) -> None:
    """One short stream of each kind before the load, read with urllib."""
    for path, model in ((target.fast_path, FAST_MODEL), (target.paced_path, PACED_MODEL)):
        for usage in (True, False):
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 60,
                "stream": True,
            }
            if usage:
                body["stream_options"] = {"include_usage": True}
            req = urllib.request.Request(
                f"http://127.0.0.1:{target.port}{path}",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            if target.key:
                req.add_header("Authorization", f"Bearer {target.key}")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    data = r.read()
            except urllib.error.HTTPError as exc:
                raise CheckError(
                    f"{target.label}: POST {path} -> {exc.code}: {exc.read()[:300]!r}"
                ) from exc
            problem = check_stream(data, 60, usage)
            if problem:
                raise CheckError(f"{target.label}: POST {path} (usage {usage}): {problem}")


def _wait_checked(proc: subprocess.Popen[bytes], target: Target, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise StartError(f"{target.label} exited", log)
        try:
            check_target(target)
            return
        except (OSError, CheckError) as exc:
            if time.monotonic() > deadline:
                raise StartError(f"{target.label} is not ready: {exc}", log) from exc
            time.sleep(0.1)


def start_targets(
    children: Children, tmp: Path, pin: bool, taskset: str, up_port: int, names: list[str]
) -> list[Target]:
    targets = []
    if "direct" in names:
        targets.append(Target("direct", LABELS["direct"], up_port, None))
    if "relay" in names:
        port = free_port()
        argv = [sys.executable, str(Path(__file__).resolve()), "relay", "--port", str(port)]
        argv += ["--upstream-port", str(up_port)]
        if pin:
            argv = [taskset, "-c", PROXY_CPU, *argv]
        log = tmp / "relay.log"
        proc = children.start(argv, log=log)
        target = Target("relay", LABELS["relay"], port, proc.pid)
        _wait_checked(proc, target, log)
        targets.append(target)
    if "passthrough" in names:
        port = free_port()
        argv = [sys.executable, str(BENCH_DIR / "passthrough.py"), "--port", str(port)]
        argv += ["--upstream", f"http://127.0.0.1:{up_port}"]
        if pin:
            argv = [taskset, "-c", PROXY_CPU, *argv]
        log = tmp / "passthrough.log"
        proc = children.start(argv, log=log)
        target = Target("passthrough", LABELS["passthrough"], port, proc.pid)
        _wait_checked(proc, target, log)
        targets.append(target)
    for variant in ("off", "on"):
        if f"aigw-{variant}" not in names:
            continue
        port = free_port()
        config = tmp / f"aigw-{variant}.yaml"
        config.write_text(harness.aigw_config(variant, port=port, nginx_port=up_port, tmp=tmp))
        env = dict(os.environ)
        key = ""
        if variant == "on":
            key = "sk-bench-" + secrets.token_urlsafe(24)
            env["AIGW_BENCH_KEY"] = key
            env["AIGW_BENCH_KEY_2"] = "sk-bench-" + secrets.token_urlsafe(24)
        env.pop("AIGW_CONFIG", None)
        argv = [sys.executable, "-m", "aigw", "serve", "--config", str(config)]
        argv += ["--port", str(port), "--admin-socket", str(tmp / f"admin-{variant}.sock")]
        if pin:
            argv = [taskset, "-c", PROXY_CPU, *argv]
        log = tmp / f"aigw-{variant}.log"
        proc = children.start(argv, log=log, env=env)
        label = LABELS[f"aigw-{variant}"]
        harness.wait_ready(proc, f"http://127.0.0.1:{port}/healthz", log, label)
        target = Target(f"aigw-{variant}", label, port, proc.pid, key, AIGW_PATH, AIGW_PATH)
        check_target(target)
        if variant == "on":
            with contextlib.suppress(CheckError):
                check_target(dataclasses.replace(target, key=""))
                raise CheckError(f"{label}: served a request without a key; auth is not on")
        target.rss_start_mib = rss_mib(proc.pid)
        targets.append(target)
    return targets


# --- profile ---------------------------------------------------------------------------------


def profile(
    children: Children,
    target: Target,
    upstream_pid: int,
    args: argparse.Namespace,
    pin: bool,
    taskset: str,
) -> harness.Profile:
    """py-spy on the target while a throughput client loads it (sampling costs: not a leg)."""
    assert target.pid is not None
    c = args.profile_connections
    seconds = max(3, int(args.duration))
    with harness.py_spy(children, target.pid, seconds, f"stream-{target.name}-c{c}") as folded:
        run_client(
            children,
            target,
            upstream_pid,
            kind="throughput",
            connections=c,
            usage=False,
            chunks=args.chunks,
            duration=seconds + 1,
            warmup=0.2,
            requests=0,
            pin=pin,
            taskset=taskset,
        )
    return harness.summarize_folded(target.name, c, folded)


# --- report ----------------------------------------------------------------------------------


def median_round(group: list[Leg], key: Any) -> Leg:
    ranked = sorted(group, key=key)
    return ranked[(len(ranked) - 1) // 2]


def _range(values: list[float], spec: str) -> str:
    if len(values) < 2:
        return ""
    return f" ({min(values):{spec}}-{max(values):{spec}})"


def throughput_table(legs: list[Leg]) -> str:
    groups: dict[tuple[bool, int, str], list[Leg]] = {}
    for leg in legs:
        if leg.kind == "throughput":
            groups.setdefault((leg.usage, leg.connections, leg.target), []).append(leg)
    if not groups:
        return ""
    head = (
        "| leg | usage asked | streams | chunks/s | x direct | x pass-through | proxy CPU µs/chunk "
        "| proxy core | client core | load core | other P / L | chunks per client read "
        "| checked (byte-equal) |"
    )
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    order = {name: i for i, name in enumerate(TARGET_NAMES)}
    for (usage, c, _name), group in sorted(
        groups.items(), key=lambda kv: (not kv[0][0], kv[0][1], order[kv[0][2]])
    ):
        leg = median_round(group, lambda x: x.vs_direct or x.chunks_per_s)
        vd = [x.vs_direct for x in group if x.vs_direct is not None]
        vp = [x.vs_passthrough for x in group if x.vs_passthrough is not None]
        checked = sum(x.streams for x in group)
        exact = sum(x.byte_exact for x in group)
        out.append(
            f"| {leg.label} | {'yes' if usage else 'no'} | {c} | {leg.chunks_per_s:,.0f} | "
            f"{_fmt(leg.vs_direct, '.2f', 'x')}{_range(vd, '.2f')} | "
            f"{_fmt(leg.vs_passthrough, '.2f', 'x')}{_range(vp, '.2f')} | "
            f"{_fmt(leg.proxy_cpu_us_per_chunk, '.2f')} | {_fmt(leg.proxy_core_busy, '.0%')} | "
            f"{leg.client_core_busy:.0%} | {leg.load_core_busy:.0%} | "
            f"{_fmt(leg.other_on_proxy_core, '.0%')} / {_fmt(leg.other_on_load_core, '.0%')} | "
            f"{leg.chunks_per_client_read:.1f} | {checked:,} ({exact:,}) |"
        )
    return "\n".join(out)


def ttft_table(legs: list[Leg]) -> str:
    groups: dict[tuple[bool, str], list[Leg]] = {}
    for leg in legs:
        if leg.kind == "ttft":
            groups.setdefault((leg.usage, leg.target), []).append(leg)
    if not groups:
        return ""
    head = (
        "| leg | usage asked | TTFT p50 ms | TTFT p99 ms | p50 overhead ms | p99 overhead ms "
        "| proxy CPU µs/stream | checked (byte-equal) |"
    )
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    order = {name: i for i, name in enumerate(TARGET_NAMES)}
    for (usage, _name), group in sorted(
        groups.items(), key=lambda kv: (not kv[0][0], order[kv[0][1]])
    ):
        leg = median_round(group, lambda x: x.ttft_p50_overhead_ms or x.ttft_p50_ms or 0)
        over = [x.ttft_p50_overhead_ms for x in group if x.ttft_p50_overhead_ms is not None]
        out.append(
            f"| {leg.label} | {'yes' if usage else 'no'} | {_fmt(leg.ttft_p50_ms, '.3f')} | "
            f"{_fmt(leg.ttft_p99_ms, '.3f')} | "
            f"{_fmt(leg.ttft_p50_overhead_ms, '.3f')}{_range(over, '.3f')} | "
            f"{_fmt(leg.ttft_p99_overhead_ms, '.3f')} | "
            f"{_fmt(leg.proxy_cpu_us_per_stream, ',.0f')} | "
            f"{sum(x.streams for x in group):,} ({sum(x.byte_exact for x in group):,}) |"
        )
    return "\n".join(out)


def verdicts(legs: list[Leg]) -> list[str]:
    """Issue 7, acceptance 2, per aigw leg (median round)."""
    out = []
    for name in ("aigw-off", "aigw-on"):
        for c in sorted({x.connections for x in legs if x.kind == "throughput"}):
            for usage in (True, False):
                group = [
                    x
                    for x in legs
                    if x.kind == "throughput"
                    and x.target == name
                    and x.connections == c
                    and x.usage == usage
                    and x.vs_direct is not None
                ]
                if group:
                    leg = median_round(group, lambda x: x.vs_direct)
                    ok = "met" if (leg.vs_direct or 0) >= 0.8 else "NOT met"
                    out.append(
                        f"{LABELS[name]} c={c} usage {'asked' if usage else 'not asked'}: "
                        f"{leg.vs_direct:.0%} of direct chunks/s (>= 80%: {ok})"
                    )
        for usage in (True, False):
            group = [
                x
                for x in legs
                if x.kind == "ttft" and x.target == name and x.usage == usage
                if x.ttft_p50_overhead_ms is not None
            ]
            if group:
                leg = median_round(group, lambda x: x.ttft_p50_overhead_ms)
                ok = "met" if (leg.ttft_p50_overhead_ms or 0) < 1.0 else "NOT met"
                out.append(
                    f"{LABELS[name]} TTFT c=1 usage {'asked' if usage else 'not asked'}: "
                    f"p50 overhead {leg.ttft_p50_overhead_ms:.3f} ms (< 1 ms: {ok})"
                )
    return out


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per throughput leg")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per leg")
    p.add_argument("--rounds", type=int, default=3, help="repeat every leg; median round shown")
    p.add_argument("--chunks", type=int, default=2000, help="content chunks per long stream")
    p.add_argument("--connections", default="1,16", help="streams in parallel (throughput)")
    p.add_argument("--usage", default="yes,no", help="client asks for usage: yes,no or one")
    p.add_argument("--ttft-requests", type=int, default=200, help="requests per TTFT leg")
    p.add_argument("--ttft-chunks", type=int, default=5, help="content chunks per TTFT stream")
    p.add_argument("--first-delay-ms", type=float, default=20.0, help="paced: first token")
    p.add_argument("--chunk-delay-ms", type=float, default=2.0, help="paced: between tokens")
    p.add_argument(
        "--targets",
        default=DEFAULT_TARGETS,
        help="legs; 'relay' adds a byte-for-byte TCP relay (uvloop) on the proxy core: the floor "
        "of any proxy there",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 s legs, 40 TTFT")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--wait-quiet", type=int, default=0, metavar="S", help="wait for quiet cores")
    p.add_argument("--profile", default="", metavar="TARGETS", help="py-spy these (e.g. aigw-on)")
    p.add_argument("--profile-connections", type=int, default=16, help="streams while profiling")
    p.add_argument("--output", type=Path, default=None, help="results JSON path")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 0.5
        args.ttft_requests = min(args.ttft_requests, 40)
    args.conns = [int(c) for c in args.connections.split(",") if c.strip()]
    args.usages = [u.strip() in ("yes", "on", "true") for u in args.usage.split(",") if u.strip()]
    args.target_names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_names) - set(TARGET_NAMES)
    if unknown:
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    args.profile_names = [t.strip() for t in args.profile.split(",") if t.strip()]
    if args.profile_names and not shutil.which("py-spy"):
        p.error("--profile needs py-spy")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    taskset = shutil.which("taskset") or ""
    pin = not args.no_pin and bool(taskset) and (os.cpu_count() or 1) >= 2
    if not pin and not args.no_pin:
        print("bench: no taskset or fewer than 2 CPUs; running unpinned")
    signal.signal(signal.SIGTERM, harness._raise_interrupt)
    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="aigw-stream-"))
    started = dt.datetime.now(dt.UTC)
    load_before = load_average()
    legs: list[Leg] = []
    profiles: dict[str, harness.Profile] = {}
    targets: list[Target] = []
    deadline = time.monotonic() + 3600  # bounded, whatever the arguments say
    try:
        up_port, up_pid = start_upstream(children, tmp, pin, taskset, args)
        targets = start_targets(children, tmp, pin, taskset, up_port, args.target_names)
        plan: list[tuple[str, int, bool]] = [
            ("throughput", c, u) for c in args.conns for u in args.usages
        ]
        plan += [("ttft", 1, u) for u in args.usages]
        per_ttft = args.ttft_requests * (
            (args.first_delay_ms + args.ttft_chunks * (args.chunk_delay_ms + 0.3)) / 1000 + 0.001
        )
        est = (
            args.rounds
            * len(targets)
            * sum(
                (args.duration if k == "throughput" else per_ttft) + args.warmup + 0.5
                for k, _, _ in plan
            )
        )
        print(
            f"bench: {args.rounds * len(targets) * len(plan)} legs, about {est:.0f} s", flush=True
        )
        if args.wait_quiet:
            harness.wait_quiet(args.wait_quiet)
        for rnd, (kind, c, usage) in itertools.product(range(args.rounds), plan):
            for target in targets:
                if time.monotonic() > deadline:
                    raise CheckError("the run took over an hour; stopped")
                leg = run_client(
                    children,
                    target,
                    up_pid,
                    kind=kind,
                    connections=c,
                    usage=usage,
                    chunks=args.chunks if kind == "throughput" else args.ttft_chunks,
                    duration=args.duration,
                    warmup=args.warmup if kind == "throughput" else 10,
                    requests=args.ttft_requests,
                    pin=pin,
                    taskset=taskset,
                )
                leg.round = rnd
                legs.append(leg)
                cpu = (
                    _fmt(leg.proxy_cpu_us_per_chunk, ".2f", " µs CPU/chunk")
                    if kind == "throughput"
                    else _fmt(leg.proxy_cpu_us_per_stream, ".0f", " µs CPU/stream")
                )
                what = (
                    f"{leg.chunks_per_s:>10,.0f} chunks/s"
                    if kind == "throughput"
                    else f"TTFT p50 {leg.ttft_p50_ms:.3f} ms p99 {leg.ttft_p99_ms:.3f} ms"
                )
                print(
                    f"  r{rnd} {kind:10} c={c:<3} usage={'y' if usage else 'n'} "
                    f"{target.label:26} {what}  {cpu}  client {leg.client_core_busy:.0%}",
                    flush=True,
                )
        for target in targets:
            if target.name in args.profile_names:
                profiles[target.name] = profile(children, target, up_pid, args, pin, taskset)
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything", file=sys.stderr)
        return 130
    except (StartError, CheckError) as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    pair_up(legs)
    report(args, started, load_before, targets, legs, profiles, pin)
    return 0


def report(
    args: argparse.Namespace,
    started: dt.datetime,
    load_before: str,
    targets: list[Target],
    legs: list[Leg],
    profiles: dict[str, harness.Profile],
    pin: bool,
) -> None:
    command = shlex.join(["python", "bench/stream.py", *sys.argv[1:]])
    print()
    print(
        f"{command}  --  {started:%Y-%m-%d %H:%M} UTC, {harness.cpu_model()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, aigw {harness.git_describe()}"
    )
    print(
        f"load average before {load_before}, after {load_average()}; "
        + (f"proxy on CPU {PROXY_CPU}, upstream + client on CPU {LOAD_CPU}" if pin else "unpinned")
        + f"; {args.rounds} round(s), median round shown, range over rounds in brackets"
    )
    table = throughput_table(legs)
    if table:
        print(
            f"\nlong streams: {args.chunks:,} content chunks each, written as fast as the socket "
            f"takes them; {args.duration:g} s per leg after {args.warmup:g} s warm-up\n"
        )
        print(table)
    table = ttft_table(legs)
    if table:
        print(
            f"\ntime to first content chunk at c=1: {args.ttft_requests} requests per leg, "
            f"role chunk at once, first content after {args.first_delay_ms:g} ms, then "
            f"{args.ttft_chunks - 1} more {args.chunk_delay_ms:g} ms apart\n"
        )
        print(table)
    print()
    for line in verdicts(legs):
        print(line)
    for name, prof in profiles.items():
        print(
            f"\nprofile of {name} (py-spy, {prof.samples} samples, c={prof.connections} long "
            "streams, usage not asked):"
        )
        print(harness.render_profile(prof))
    RESULTS_DIR.mkdir(exist_ok=True)
    path = args.output or RESULTS_DIR / f"stream-{started:%Y%m%d-%H%M%S}.json"
    payload = {
        "command": command,
        "started_utc": started.isoformat(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "machine": {
            "cpu": harness.cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "aigw_commit": harness.git_describe(),
        "pinned": pin,
        "args": {k: v for k, v in vars(args).items() if k != "output"},
        "rss_start_mib": {t.name: t.rss_start_mib for t in targets if t.pid},
        "legs": [dataclasses.asdict(leg) for leg in legs],
        "verdicts": verdicts(legs),
        "profiles": {name: dataclasses.asdict(p) for name, p in profiles.items()},
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nraw results: {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "upstream":
        upstream_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "relay":
        relay_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(sys.argv[2:])
    else:
        sys.exit(main())
