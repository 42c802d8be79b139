"""The API's connections under abuse, in process over real loopback sockets (and one `aigw serve`
under a low open-file limit): header and keep-alive timeouts, the connection cap, bodies not read
to their end, malformed HTTP, the drain deadline, and start-up/reload leaving nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import aigw.server
from aigw.balancer import Balancers
from aigw.config import (
    Config,
    HookSpec,
    ModelConfig,
    ProviderConfig,
    ServerConfig,
    StateConfig,
    TargetConfig,
)
from aigw.errors import StartupError
from aigw.hooks.base import Hook
from aigw.server import Gateway
from tests.clock import FakeClock
from tests.conftest import cli_env, make_config
from tests.upstream import Upstream

CHAT = b'{"model": "mock", "messages": [{"role": "user", "content": "hi"}]}'


def mock_config(sock: Path, **server: Any) -> Config:
    return Config(
        server=ServerConfig(port=0, admin_socket=str(sock / "admin.sock"), **server),
        state=StateConfig(backend="memory"),
        providers={"m": ProviderConfig(name="m", type="mock")},
        models={"mock": ModelConfig(name="mock", targets=(TargetConfig(provider="m"),))},
    )


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(gw: Any) -> Conn:
    return await asyncio.open_connection("127.0.0.1", gw.gateway.bound_port)


async def request(conn: Conn, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request on a keep-alive connection; the status, headers and body of the answer."""
    reader, writer = conn
    writer.write(head + body)
    await writer.drain()
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}
    length = int(headers.get("content-length", "0"))
    return int(status_line.split()[1]), headers, await reader.readexactly(length)


async def healthz(conn: Conn) -> int:
    return (await request(conn, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0]


async def closed_by_server(conn: Conn, within: float = 15.0) -> bool:
    """Whether the server closes the connection (EOF or reset) within `within` seconds, with
    nothing sent."""
    try:
        rest = await asyncio.wait_for(conn[0].read(), within)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return rest == b""


def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()


# --- 1. header and keep-alive timeouts ------------------------------------------------------


async def test_half_sent_heads_and_a_dribbling_client_are_closed_at_the_header_timeout(
    start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(mock_config(sock_dir, header_timeout=0.5, keepalive_timeout=60.0))
    half_sent = [await connect(gw) for _ in range(200)]
    for _, writer in half_sent:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # no blank line
    silent = await connect(gw)  # connects and never sends a byte
    dribbler = await connect(gw)

    async def dribble() -> None:  # a byte every 50 ms: data keeps coming, the head never ends
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 1000
        with pytest.raises(ConnectionError):
            for byte in head:
                dribbler[1].write(bytes([byte]))
                await dribbler[1].drain()
                await asyncio.sleep(0.05)

    dribbling = asyncio.ensure_future(dribble())
    closed = await asyncio.gather(*(closed_by_server(c) for c in [*half_sent, silent, dribbler]))
    await asyncio.wait_for(dribbling, 15)
    assert all(closed), f"{closed.count(False)} connections still open"
    close_all([*half_sent, silent, dribbler])
    # The gateway still serves.
    fresh = await connect(gw)
    assert await healthz(fresh) == 200
    close_all([fresh])


async def test_the_header_timeout_runs_from_a_heads_first_byte_not_from_idling(
    start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(mock_config(sock_dir, header_timeout=0.3, keepalive_timeout=60.0))
    conn = await connect(gw)
    assert await healthz(conn) == 200
    await asyncio.sleep(1.0)  # idle well past the header timeout, within the keep-alive one
    assert await healthz(conn) == 200
    close_all([conn])


async def test_idle_keep_alive_connections_are_closed_at_the_keepalive_timeout(
    start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(mock_config(sock_dir, header_timeout=10.0, keepalive_timeout=0.5))
    conns = [await connect(gw) for _ in range(20)]
    for conn in conns:
        assert await healthz(conn) == 200
    assert all(await asyncio.gather(*(closed_by_server(c) for c in conns)))
    close_all(conns)


# --- 1. the connection cap ----------------------------------------------------------------------


async def test_over_the_cap_the_connection_idle_longest_makes_room(
    start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(mock_config(sock_dir, max_connections=8))
    conns = [await connect(gw) for _ in range(8)]
    for conn in conns:  # one request each, in order: conns[0] has idled longest
        assert await healthz(conn) == 200
    newcomer = await connect(gw)
    assert await healthz(newcomer) == 200
    status, _, body = await request(
        newcomer,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(CHAT),
        CHAT,
    )
    assert status == 200 and json.loads(body)["choices"]
    assert await closed_by_server(conns[0])
    for conn in conns[1:]:  # only as many as needed were closed
        assert await healthz(conn) == 200
    close_all([*conns, newcomer])


async def test_over_the_cap_with_every_connection_busy_the_new_one_gets_503(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    upstream.behaviour.hang = True
    config = make_config(
        {"up": upstream.url}, sock=sock_dir, server={"max_connections": 4, "shutdown_timeout": 0.1}
    )
    gw = await start_gateway(config)
    body = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}'
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    busy = [await connect(gw) for _ in range(4)]
    for _, writer in busy:
        writer.write(head % len(body) + body)
    while len(upstream.requests) < 4:  # noqa: ASYNC110 - the upstream runs on this loop
        await asyncio.sleep(0.01)
    newcomer = await connect(gw)
    status, headers, answer = await request(newcomer, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 503
    assert headers["content-type"].startswith("application/json")
    assert headers["retry-after"] == "1"
    error = json.loads(answer)["error"]
    assert error["code"] == "too_many_connections" and "server.max_connections" in error["message"]
    assert error["type"] == "server_error" and error["param"] is None
    assert await closed_by_server(newcomer)  # answered, then closed
    close_all([*busy, newcomer])


@pytest.mark.slow
def test_thousands_of_idle_and_half_sent_connections_leave_the_daemon_usable(
    tmp_path: Path, sock_dir: Path
) -> None:
    """Issue acceptance under an open-file limit of 256: 900 idle and half-sent connections
    neither exhaust the descriptors nor lock out /healthz, chat or the admin socket."""
    limit = 256
    config = tmp_path / "config.yaml"
    config.write_text(
        "version: 1\nserver: {header_timeout: 1s}\nstate: {backend: memory}\n"
        "providers: {m: {type: mock}}\nmodels: {mock: {targets: [{provider: m}]}}\n"
    )
    admin = sock_dir / "admin.sock"
    log = tmp_path / "daemon.log"

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aigw",
                "serve",
                "--config",
                str(config),
                "--port",
                "0",
                "--admin-socket",
                str(admin),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            preexec_fn=low_fd_limit,
        )
    sockets: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        while not (found := re.search(r"serving http://127\.0\.0\.1:(\d+)/v1", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        port = int(found.group(1))
        for i in range(900):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 3 == 0:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)

        def ask(raw: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(raw)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                return answer

        assert ask(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
            b"HTTP/1.1 200"
        )
        chat = ask(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(CHAT), CHAT)
        )
        assert chat.startswith(b"HTTP/1.1 200") and b"You said: hi" in chat
        status = subprocess.run(
            [sys.executable, "-m", "aigw", "status", "--admin-socket", str(admin)],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert len(os.listdir(f"/proc/{proc.pid}/fd")) < limit
        # Every half-sent head is closed at the header timeout; the cap closed idle ones.
        for i, sock in enumerate(sockets):
            if i % 3 == 0:
                sock.settimeout(15)
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(1) == b""
    finally:
        for sock in sockets:
            sock.close()
        proc.terminate()
        assert proc.wait(30) == 0
    output = log.read_text()
    assert "server.max_connections" in output and "Traceback" not in output


def test_the_default_cap_is_what_the_open_file_limit_allows() -> None:
    from aigw.connections import RESERVED_FDS, plan_limits

    limits, warning = plan_limits(ServerConfig(), fd_limit=1024, upstream_connections=100)
    reserved = RESERVED_FDS + 100
    assert warning is None
    assert limits.max_connections + limits.overflow == 1024 - reserved
    assert (limits.header_timeout, limits.keepalive_timeout) == (10.0, 75.0)
    mine, warning = plan_limits(
        ServerConfig(max_connections=100), fd_limit=1024, upstream_connections=100
    )
    assert (mine.max_connections, warning) == (100, None)


def test_a_cap_above_the_open_file_limit_is_lowered_with_a_warning() -> None:
    from aigw.connections import MIN_CONNECTIONS, RESERVED_FDS, plan_limits

    limits, warning = plan_limits(
        ServerConfig(max_connections=50_000), fd_limit=1024, upstream_connections=0
    )
    assert limits.max_connections < 1024 - RESERVED_FDS
    assert warning is not None
    assert "server.max_connections 50000" in warning and "ulimit -n" in warning
    tiny, warning = plan_limits(ServerConfig(), fd_limit=80, upstream_connections=100)
    assert tiny.max_connections == MIN_CONNECTIONS and warning is not None


# --- 4. a body that is not read is not read to its end ------------------------------------------


async def test_after_a_413_on_a_chunked_body_the_connection_is_closed(
    start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(mock_config(sock_dir, max_body_size=1024))
    reader, writer = await connect(gw)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    limit = 256 * 1024 * 1024
    sent = 0
    with pytest.raises(ConnectionError):  # the gateway stops reading: the connection is gone
        while sent < limit:  # the body, and more of it after the answer
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    assert sent < limit
    assert (await answer).startswith(b"HTTP/1.1 413")
    writer.close()
    fresh = await connect(gw)
    assert await healthz(fresh) == 200
    close_all([fresh])


# --- 9. malformed HTTP ----------------------------------------------------------------------------

SECRET = b"sk-tenant-SECRET-0123456789"

MALFORMED = {
    "duplicate content-length": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET
        + b"\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        400,
        "bad_request",
    ),
    "obs-fold": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Key: " + SECRET + b"\r\n  folded\r\n\r\n",
        400,
        "bad_request",
    ),
    "oversized authorization": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET
        + b"x" * 9000
        + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
    "nul in a header": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Key: " + SECRET + b"\x00\r\n\r\n",
        400,
        "bad_request",
    ),
    "too many headers": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: %s\r\n" % (i, SECRET) for i in range(200))
        + b"\r\n",
        431,
        "headers_too_large",
    ),
    "bad method": (b"G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
async def test_malformed_http_answers_openai_json_that_echoes_nothing(
    start_gateway: Any, sock_dir: Path, case: str
) -> None:
    raw, status, code = MALFORMED[case]
    gw = await start_gateway(mock_config(sock_dir))
    reader, writer = await connect(gw)
    writer.write(raw)
    answer = await asyncio.wait_for(reader.read(), 10)  # answered, then closed
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode()
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, code)
    assert SECRET not in answer and b"folded" not in answer


async def test_malformed_requests_are_logged_in_one_line_without_traceback(
    start_gateway: Any, sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await start_gateway(mock_config(sock_dir))
    for raw, _, _ in list(MALFORMED.values()) * 4:
        reader, writer = await connect(gw)
        writer.write(raw)
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(problems) == 1, [r.getMessage() for r in problems]
    line = problems[0].getMessage()
    assert "malformed HTTP request from 127.0.0.1" in line
    assert problems[0].exc_info is None
    assert all(SECRET.decode() not in r.getMessage() for r in caplog.records)


async def test_a_chunked_body_that_stops_parsing_is_answered_not_left_hanging(
    start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(mock_config(sock_dir))
    reader, writer = await connect(gw)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    await writer.drain()
    while gw.gateway.requests_in_flight() == 0:  # noqa: ASYNC110 - the proxy reads the body
        await asyncio.sleep(0.01)
    writer.write(b"zz\r\n" + SECRET + b"\r\n0\r\n\r\n")  # not a chunk size
    answer = await asyncio.wait_for(reader.read(), 10)  # one answer, then closed
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert int(head.split(b" ")[1]) >= 400
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert SECRET not in answer


def test_throttled_log_counts_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    from aigw.connections import ThrottledLog

    clock = FakeClock()
    throttled = ThrottledLog(logging.getLogger("aigw.test"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="aigw.test"):
        for _ in range(5):
            throttled.warning("bad", "bad request from %s", "a")
        throttled.warning("other", "other problem")
        clock.advance(10.0)
        throttled.warning("bad", "bad request from %s", "b")
        throttled.warning("bad", "bad request from %s", "c")
    assert [r.getMessage() for r in caplog.records] == [
        "bad request from a",
        "other problem",
        "bad request from b (4 more like it since the previous line)",
    ]


# --- the drain ----------------------------------------------------------------------------------


async def test_stop_cuts_requests_still_running_at_the_shutdown_timeout(
    upstream: Upstream, sock_dir: Path
) -> None:
    timeout = 2.0
    upstream.behaviour.hang = True  # never answers: the request runs until it is cut
    config = make_config({"up": upstream.url}, sock=sock_dir, server={"shutdown_timeout": timeout})
    slow = dataclasses.replace(config.providers["up"], timeout=60.0)
    gateway = Gateway(dataclasses.replace(config, providers={"up": slow}))
    await gateway.start()
    async with aiohttp.ClientSession() as session:
        call = asyncio.ensure_future(
            session.post(
                f"http://127.0.0.1:{gateway.bound_port}/v1/chat/completions",
                json={"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]},
            )
        )
        while not upstream.requests:  # noqa: ASYNC110 - the upstream runs on this loop
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await gateway.stop()
        took = time.monotonic() - started
        answer = await call
        # Cut before its answer began: a 503 that says why, not a reset connection.
        assert answer.status == 503
        error = (await answer.json())["error"]
        assert error["code"] == "service_unavailable" and "shutting down" in error["message"]
    # It waited for the request until the deadline, and not a second time after it (aiohttp's
    # own shutdown waits shutdown_timeout twice: for the handler, then for its cancellation).
    assert timeout <= took < 2 * timeout - 0.5, took
    assert gateway.drain_deadline.is_set()


async def test_a_stream_cut_at_the_shutdown_timeout_ends_with_an_in_band_error(
    upstream: Upstream, sock_dir: Path
) -> None:
    upstream.behaviour.endless = True
    upstream.behaviour.chunk_delay = 0.02
    config = make_config({"up": upstream.url}, sock=sock_dir, server={"shutdown_timeout": 0.5})
    gateway = Gateway(config)
    await gateway.start()
    body = b""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{gateway.bound_port}/v1/chat/completions",
            json={
                "model": "gpt-test",
                "messages": [{"role": "user", "content": "x"}],
                "stream": True,
            },
        ) as resp:
            body += await resp.content.readline()  # the stream runs
            stopping = asyncio.ensure_future(gateway.stop())
            async for line in resp.content:
                body += line
        await stopping
    events = [e for e in body.split(b"\n\n") if e.strip()]
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "service_unavailable"
    assert "shutting down" in last["error"]["message"]
    assert len(events) > 3  # what ran before the deadline was delivered


async def test_stop_with_nothing_in_flight_never_reaches_the_deadline(
    start_gateway: Any, sock_dir: Path
) -> None:
    gateway = Gateway(mock_config(sock_dir, shutdown_timeout=30.0))
    await gateway.start()
    conn = await asyncio.open_connection("127.0.0.1", gateway.bound_port)
    assert await healthz(conn) == 200  # an idle keep-alive connection: closed at once
    assert gateway.requests_in_flight() == 0
    await asyncio.wait_for(gateway.stop(), 10)
    assert not gateway.drain_deadline.is_set()
    assert await closed_by_server(conn)
    close_all([conn])


# --- 16. start-up failures and reloads leave nothing behind ------------------------------------


class RecordsClose(Hook):
    """A user hook that remembers being closed."""

    closed = False

    async def close(self) -> None:
        self.closed = True


def _with_hook_and_upstream(sock: Path, **server: Any) -> Config:
    config = make_config({"up": "http://127.0.0.1:9/v1"}, sock=sock, server=server)
    hooks = (HookSpec("validation"), HookSpec("tests.test_server_hardening:RecordsClose"))
    return dataclasses.replace(config, hooks=hooks)


def _all_closed(gateway: Gateway) -> bool:
    """Whether the gateway's provider (its connection pools) and its user hook are closed."""
    provider: Any = gateway.runtime.providers["up"]
    hook: Any = gateway.runtime.hooks[-1]
    assert type(hook).__name__ == "RecordsClose" and provider.client.pools
    return hook.closed and all(pool.closed for pool in provider.client.pools.values())


async def test_a_start_that_fails_on_the_port_closes_providers_and_hooks(sock_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        gateway = Gateway(_with_hook_and_upstream(sock_dir, port=taken.getsockname()[1]))
        with pytest.raises(StartupError, match="already in use"):
            await gateway.start()
    assert _all_closed(gateway)
    assert gateway.store is None


async def test_a_start_that_fails_on_the_admin_socket_closes_providers_and_the_port(
    tmp_path: Path,
) -> None:
    too_long = Path("/tmp") / ("y" * 120)  # beyond AF_UNIX's ~107 bytes
    config = _with_hook_and_upstream(tmp_path)
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, admin_socket=str(too_long / "a.sock"))
    )
    gateway = Gateway(config)
    try:
        with pytest.raises(StartupError, match="cannot create the admin socket"):
            await gateway.start()
    finally:
        if too_long.exists():
            too_long.rmdir()
    assert _all_closed(gateway)
    assert gateway.bound_port is not None
    with socket.socket() as again:  # the port it had bound is free again
        again.bind(("127.0.0.1", gateway.bound_port))


async def test_a_reload_builds_no_throwaway_balancers(
    start_gateway: Any, sock_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Balancers] = []

    class CountedBalancers(Balancers):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(aigw.server, "Balancers", CountedBalancers)
    path = tmp_path / "config.yaml"
    path.write_text(
        f"version: 1\nserver: {{port: 0, admin_socket: {sock_dir / 'admin.sock'}}}\n"
        "state: {backend: memory}\nproviders: {m: {type: mock}}\n"
        "models: {mock: {targets: [{provider: m}]}}\n"
    )
    gw = await start_gateway(aigw.server.load_config(path))
    assert len(built) == 1
    first = gw.gateway.runtime.balancers
    await gw.gateway.reload()
    await gw.gateway.reload()
    assert len(built) == 1  # reloads derive from the running set, they build none of their own
    assert gw.gateway.runtime.balancers is not first
