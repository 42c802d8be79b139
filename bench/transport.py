"""Upstream client micro-benchmark: aiohttp's `ClientSession` vs aigw's `HTTPClient`, alone.

    python bench/transport.py                       # 5 rounds of 3 s legs, c=1 and c=16
    python bench/transport.py --rounds 7 --duration 5 --connections 16 --stream

A raw asyncio upstream (a subprocess pinned to CPU 1) answers every POST with a fixed 361-byte
`chat.completion` (or, with --stream, a 14-event SSE stream, chunked). This process, pinned to
CPU 0, drives N concurrent request loops through one client for a leg, and measures its own CPU
time per request (`time.process_time()`, the figure a busy machine disturbs least). Legs alternate
aiohttp / httptools within each round, so each round's ratio is a paired comparison; the median
round and the range of ratios are printed. Nothing but the client runs in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHAT = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help '
    b'you today?"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,'
    b'"completion_tokens":9,"total_tokens":21},"system_fingerprint":"fp_bench"}'
)
BODY = (
    b'{"model":"bench","messages":[{"role":"system","content":"You are terse."},'
    b'{"role":"user","content":"Say hello."}],"max_tokens":16,"temperature":0}'
)

SERVER = r"""
import asyncio, sys
chat, stream = sys.argv[1].encode(), sys.argv[2] == "1"
if stream:
    events = [b"data: {\"i\":%d,\"choices\":[{\"delta\":{\"content\":\"w\"}}]}\n\n" % i
              for i in range(13)] + [b"data: [DONE]\n\n"]
    body = b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n" + body)
else:
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % len(chat)) + chat

class Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf = transport, b""
    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            self.transport.write(answer)

async def main():
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


async def aiohttp_leg(url: str, conns: int, duration: float, stream: bool) -> tuple[int, float]:
    import aiohttp

    # What providers/openai.py did before the custom transport (trust_env off, sock timeouts).
    connector = aiohttp.TCPConnector(limit=conns, limit_per_host=conns, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    async with aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=timeout,
        trust_env=False,
        skip_auto_headers=("User-Agent",),
    ) as session:

        async def one() -> None:
            async with asyncio.timeout(310):
                resp = await session.post(url, data=BODY)
            if stream:
                async for _ in resp.content.iter_any():
                    pass
            else:
                await resp.read()
            resp.release()

        return await drive(one, conns, duration)


async def httptools_leg(url: str, conns: int, duration: float, stream: bool) -> tuple[int, float]:
    from aigw.providers.http import HTTPClient

    client = HTTPClient(
        label="bench", max_connections=conns, keep_headers=("content-type", "x-request-id")
    )
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    prepared = client.prepare("POST", url, headers)
    try:

        async def one() -> None:
            resp = await client.send(prepared, BODY, timeout=600)
            if stream:
                async for _ in resp.iter_chunks():
                    pass
            else:
                await resp.read()
            resp.close()

        return await drive(one, conns, duration)
    finally:
        await client.close()


async def drive(
    one: Callable[[], Awaitable[None]], conns: int, duration: float
) -> tuple[int, float]:
    for _ in range(conns * 20):  # warm-up: connections open, code paths hot
        await one()
    count = 0
    stop = time.monotonic() + duration

    async def loop() -> None:
        nonlocal count
        while time.monotonic() < stop:
            await one()
            count += 1

    cpu = time.process_time()
    await asyncio.gather(*(loop() for _ in range(conns)))
    return count, time.process_time() - cpu


LEGS = {"aiohttp": aiohttp_leg, "httptools": httptools_leg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--stream", action="store_true", help="SSE answers instead of JSON")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    pin = not args.no_pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    argv = [sys.executable, "-c", SERVER, CHAT.decode(), "1" if args.stream else "0"]
    if pin:
        argv = ["taskset", "-c", "1", *argv]
        os.sched_setaffinity(0, {0})
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}/v1/chat/completions"
        kind = "SSE, 14 events" if args.stream else "JSON, 361 bytes"
        print(f"upstream client alone ({kind}); {args.rounds} rounds of {args.duration} s legs")
        print("| client | conns | req/s | CPU µs/req | CPU x aiohttp (range) |")
        print("|---|---|---|---|---|")
        for conns in (int(c) for c in args.connections.split(",")):
            rates: dict[str, list[float]] = {name: [] for name in LEGS}
            cpus: dict[str, list[float]] = {name: [] for name in LEGS}
            ratios: list[float] = []
            for _ in range(args.rounds):
                for name, leg in LEGS.items():
                    count, cpu = asyncio.run(leg(url, conns, args.duration, args.stream))
                    rates[name].append(count / args.duration)
                    cpus[name].append(cpu / count * 1e6)
                ratios.append(cpus["httptools"][-1] / cpus["aiohttp"][-1])
            for name in LEGS:
                rate = statistics.median(rates[name])
                cpu = statistics.median(cpus[name])
                ratio = (
                    "1.00x"
                    if name == "aiohttp"
                    else (f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
                )
                print(f"| {name} | {conns} | {rate:,.0f} | {cpu:.0f} | {ratio} |", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
