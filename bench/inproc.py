"""The gateway's CPU per request with nothing else on its core: one process, one event loop.

    python bench/inproc.py                                  # floor, aigw off, aigw on; c=16
    python bench/inproc.py --rounds 9 --requests 16000 --connections 1,16
    python bench/inproc.py --legs aigw-on --repo /work/old  # another checkout, same harness

A raw asyncio upstream (answering run.py's fixed chat completion), the server under test and a
raw asyncio keep-alive client all run in this process on one pinned core (uvloop). A leg's
figure is process CPU time over the requests it served, so it includes the client's and the
upstream's small, fixed share (the `floor` leg shows how small). Legs alternate within each
round; the table shows the best and the median round. Because nothing crosses cores, this is
far less disturbed by other work on the machine than bench/run.py's wrk legs, which remain the
figures of record; use this to compare changes (`--repo`).

Legs:
- floor: aiohttp's low-level server + aigw's HTTPClient forwarding the body, nothing else —
  what any aiohttp-served gateway with this transport pays;
- aigw-off / aigw-on: a real `Gateway` with bench/run.py's two configs (features on: auth, rate
  limit, sqlite quota, 2 balanced targets, metrics, validation).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

BENCH_DIR = Path(__file__).resolve().parent


class _Upstream(asyncio.Protocol):
    """Answers every request (Content-Length bodies) with one fixed response."""

    answer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = _content_length(self.buf[:head_end])
            if len(self.buf) < head_end + 4 + length:
                return
            self.buf = self.buf[head_end + 4 + length :]
            self.transport.write(self.answer)


class _Client(asyncio.Protocol):
    """One keep-alive connection sending the same request, one at a time."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buf = b""
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buf[:head_end]
        length = _content_length(head)
        if len(self.buf) < head_end + 4 + length:
            return
        assert self.waiter is not None
        if not head.startswith(b"HTTP/1.1 200"):
            self.waiter.set_exception(RuntimeError(self.buf[:300].decode(errors="replace")))
        else:
            self.waiter.set_result(None)
        self.buf = self.buf[head_end + 4 + length :]

    async def one(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(self.request)
        await self.waiter


def _content_length(head: bytes) -> int:
    at = head.lower().find(b"content-length:")
    if at < 0:
        return 0
    end = head.find(b"\r\n", at)
    return int(head[at + 15 : end if end > 0 else None])


async def _load(port: int, key: str, connections: int, requests: int) -> float:
    """CPU µs per request of this whole process while `connections` loops send `requests`."""
    loop = asyncio.get_running_loop()
    import run  # bench/run.py: the same body the wrk legs send

    body = run.CHAT_BODY.encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\n{auth}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(lambda: _Client(request), "127.0.0.1", port)
        clients.append(client)
    each = max(1, requests // connections)

    async def drive(client: _Client, n: int) -> None:
        for _ in range(n):
            await client.one()

    await asyncio.gather(*(drive(c, 50) for c in clients))  # warm: pools, caches
    started = time.process_time()
    await asyncio.gather(*(drive(c, each) for c in clients))
    cpu = time.process_time() - started
    for client in clients:
        client.transport.close()
    return cpu / (each * connections) * 1e6


async def _start_floor(upstream: str) -> tuple[int, Any]:
    from aiohttp import web

    from aigw.providers.http import HTTPClient

    client = HTTPClient(label="floor")
    prepared = client.prepare(
        "POST", upstream + "/v1/chat/completions", {"Content-Type": "application/json"}
    )

    async def forward(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        resp = await client.send(prepared, body, timeout=30)
        data = await resp.read()
        ctype = resp.headers.get("content-type", "application/json")
        return web.Response(status=resp.status, body=data, headers={"Content-Type": ctype})

    runner = web.ServerRunner(web.Server(forward, access_log=None))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner.addresses[0][1], runner


async def _start_aigw(variant: str, upstream_port: int, tmp: Path) -> tuple[int, str, Any]:
    import run

    from aigw.config import load_config
    from aigw.server import Gateway

    sub = tmp / variant
    sub.mkdir()
    os.environ["AIGW_BENCH_KEY"] = key = "sk-bench-inproc-" + os.urandom(12).hex()
    os.environ["AIGW_BENCH_KEY_2"] = "sk-bench-inproc-" + os.urandom(12).hex()
    path = sub / "aigw.yaml"
    path.write_text(run.aigw_config(variant, port=0, nginx_port=upstream_port, tmp=sub))
    gateway = Gateway(load_config(str(path)))
    await gateway.start()
    assert gateway.bound_port is not None
    return gateway.bound_port, key if variant == "on" else "", gateway


async def amain(args: argparse.Namespace) -> int:
    import run

    loop = asyncio.get_running_loop()
    answer = json.dumps(run.COMPLETION, separators=(",", ":")).encode()
    _Upstream.answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
        % (len(answer), answer)
    )
    upstream = await loop.create_server(_Upstream, "127.0.0.1", 0)
    up_port = upstream.sockets[0].getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="aigw-inproc-"))
    legs: dict[str, tuple[int, str]] = {}
    stops: list[Any] = []
    for leg in args.legs:
        if leg == "floor":
            port, runner = await _start_floor(f"http://127.0.0.1:{up_port}")
            legs[leg] = (port, "")
            stops.append(runner.cleanup)
        else:
            port, key, gateway = await _start_aigw(leg.removeprefix("aigw-"), up_port, tmp)
            legs[leg] = (port, key)
            stops.append(gateway.stop)
    results: dict[tuple[str, int], list[float]] = {}
    for c in args.connections:
        for _ in range(args.rounds):
            for leg, (port, key) in legs.items():
                cpu = await _load(port, key, c, args.requests)
                results.setdefault((leg, c), []).append(cpu)
    for stop in stops:
        await stop()
    upstream.close()
    print(
        f"python bench/inproc.py {' '.join(sys.argv[1:])}  --  "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPU {args.cpu}, "
        f"{args.rounds} rounds x {args.requests} requests"
    )
    print()
    print("| leg | conns | best µs/req | median µs/req | x floor (median) |")
    print("|---|---|---:|---:|---|")
    for c in args.connections:
        floor = results.get(("floor", c))
        for leg in legs:
            vals = results[(leg, c)]
            ratio = f"{statistics.median(vals) / statistics.median(floor):.2f}x" if floor else "-"
            print(f"| {leg} | {c} | {min(vals):.1f} | {statistics.median(vals):.1f} | {ratio} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--legs", default="floor,aigw-off,aigw-on")
    parser.add_argument("--connections", default="16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=8000, help="per leg and round")
    parser.add_argument("--cpu", type=int, default=0, help="core to pin this process to")
    parser.add_argument("--repo", help="import aigw from this checkout instead")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    args.legs = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
    args.connections = [int(c) for c in args.connections.split(",")]
    if args.repo:
        sys.path.insert(0, str(Path(args.repo).resolve()))
    sys.path.insert(0, str(BENCH_DIR))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    if args.loop == "uvloop":
        import uvloop

        return uvloop.run(amain(args))
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
