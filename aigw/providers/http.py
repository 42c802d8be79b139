"""A lean pooled HTTP/1.1 keep-alive client on asyncio Protocols and `httptools` (llhttp).

aiohttp's `ClientSession` costs about half of a naive gateway's CPU per request (DESIGN.md §7);
this client does only what an upstream call needs:

- one pool per (scheme, host, port) with a connection limit, LIFO keep-alive reuse and an idle
  timeout; when the pool is full, waiters queue for at most the connect timeout (and never past
  the request deadline), then get `UpstreamBusyError`: the gateway's own congestion, which the
  proxy answers by trying another target rather than by blaming this one;
- Content-Length, chunked and close-delimited bodies, HTTP/1.0 and `Connection: close` answers,
  gzip/deflate bodies decoded (we ask for `identity`, so only a stubborn upstream compresses),
  interim 1xx answers (100 Continue, 103 Early Hints) skipped for the final one;
- a body read whole is bounded by `max_body` (`server.max_upstream_body`), decoded bytes
  counted: a larger declared Content-Length is refused before the body is read, a chunked or
  close-delimited body is cut as it crosses the limit, and gzip/deflate is inflated at most to
  the limit, so a bomb never expands in memory; the connection is then aborted, never reused;
- streaming chunk by chunk with backpressure (reading pauses while the consumer lags), encoded
  streams inflated in pieces of at most `HIGH_WATER` bytes; a stream has no total limit (its
  memory stays flat; the SSE reader bounds one event);
- TLS with the standard `ssl` module and certificate verification, an extra CA from config; the
  context is built by `start()` in a worker thread (loading the CA store blocks for ~50 ms);
- HTTP proxies: absolute-form requests for http upstreams, CONNECT tunnels for https ones;
- one retry on a fresh connection when a reused idle connection fails before any response byte
  and either while the request was still being written (the server cannot have a whole request)
  or within `STALE_WINDOW` of writing it (the server had closed it while idle). Any later close
  may come from a server that read the request and worked on it: a POST is never sent twice
  then, the caller fails over instead;
- request bodies streamed from the client (`send_streamed()`, `StreamedBody`): with
  Content-Length when the client declared one, else chunked; the next chunk is taken from the
  client only once the previous one left our buffer for the socket's (backpressure); cut at
  `max_bytes` (the connection aborted, `RequestTooLargeError`). Such a body cannot be sent
  twice, so it always goes on a new connection (an idle one may be stale: the server may have
  timed it out, and the retry above would need the body again); a connection handed over the
  moment another answer ended is as good, the server has just said keep-alive. An upstream
  that answers before the whole body is sent (a 413, a 401) is listened to: the rest is not
  sent, the answer is returned, and the connection is closed after it.

Failures surface as `UpstreamError` / `UpstreamTimeoutError` with short messages that never
contain headers or credentials.

Size: one concept, one HTTP/1.1 client: the pool, the connection protocol and the response share
their state (waiters, the parser's callbacks, backpressure, the watchdog timer) by design, to
keep a request to a handful of Python calls.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from typing import Final
from urllib.parse import unquote, urlsplit

import httptools

from aigw.config import format_size
from aigw.errors import GatewayError, UpstreamBusyError, UpstreamError, UpstreamTimeoutError
from aigw.providers.base import MAX_BODY, StreamedBody, UpstreamResponse

#: Buffered body bytes above which the socket stops being read until the consumer catches up;
#: also the largest piece an encoded stream is inflated into at once.
HIGH_WATER: Final = 256 * 1024

#: How much of an encoded body read whole is inflated before other tasks get a turn.
INFLATE_PIECE: Final = 1024 * 1024

#: How soon after the request was written a close still means "closed while idle". A server
#: that times an idle connection out sends its FIN (or, getting our request on a closed socket,
#: an RST) before it could read the request, so the close reaches us within one round trip of
#: our write. 50 ms covers round trips to any nearby or same-continent upstream; on a slower
#: path the lost race is not retried here and the balancer fails over instead (never unsafe).
STALE_WINDOW: Final = 0.05

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# Connection states (pool bookkeeping).
_ACTIVE: Final = 0
_IDLE: Final = 1
_DEAD: Final = 2

# Response states.
_HEAD: Final = 0  # waiting for the status line and headers
_BODY: Final = 1
_DONE: Final = 2


class PreparedRequest:
    """A request line and the fixed headers, encoded once; only the body (and the caller's
    per-request header lines) change per call."""

    __slots__ = ("has_body", "head", "pool")

    def __init__(self, pool: Pool, head: bytes, has_body: bool) -> None:
        self.pool = pool
        self.head = head  # the request line and header lines, each ending in CRLF
        self.has_body = has_body


class HTTPClient:
    """Pools keyed by origin. Create anywhere; use inside one running event loop."""

    def __init__(
        self,
        *,
        label: str,
        max_connections: int = 100,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        idle_timeout: float = 30.0,
        ca_file: str | None = None,
        proxy: str | None = None,
        keep_headers: Iterable[str] = (),
        keep_prefixes: Iterable[str] = (),
        max_body: int = MAX_BODY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label  # names the upstream in error messages
        self.max_body = max_body  # largest body read() returns, decoded bytes counted
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.ca_file = ca_file
        self.clock = clock
        #: response headers kept for the caller (lower case); others are dropped as they arrive
        self.keep_headers = frozenset(h.lower().encode("latin-1") for h in keep_headers)
        self.keep_prefixes = tuple(p.lower().encode("latin-1") for p in keep_prefixes)
        self.proxy: _Proxy | None = None
        self.proxy_error: str | None = None  # an unusable proxy fails requests, not start-up
        if proxy:
            try:
                self.proxy = _Proxy.parse(proxy)
            except ValueError as exc:
                self.proxy_error = str(exc)
        self.pools: dict[tuple[str, str, int], Pool] = {}
        self._ssl: ssl.SSLContext | None = None

    def prepare(self, method: str, url: str, headers: Mapping[str, str]) -> PreparedRequest:
        """Encode `method url` with `headers` (plus Host, Accept-Encoding and, for a plain-http
        upstream behind a proxy, Proxy-Authorization) for repeated `send()`s."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"unsupported upstream URL scheme or host: {scheme!r}")
        host = parts.hostname
        port = parts.port or _DEFAULT_PORTS[scheme]
        key = (scheme, host, port)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(self, scheme, host, port)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host_header = f"[{host}]" if ":" in host else host
        if port != _DEFAULT_PORTS[scheme]:
            host_header += f":{port}"
        target = path
        lines = [f"Host: {host_header}", "Accept-Encoding: identity"]
        if self.proxy is not None and scheme == "http":
            target = f"http://{host_header}{path}"  # absolute form: the proxy forwards it
            if self.proxy.auth:
                lines.append(f"Proxy-Authorization: {self.proxy.auth}")
        for name, value in headers.items():
            if name.lower() in ("host", "content-length", "accept-encoding"):
                continue
            if any(c in name or c in value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} contains a line break")  # never the value
            lines.append(f"{name}: {value}")
        has_body = method not in ("GET", "HEAD")
        head = f"{method} {target} HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n"
        return PreparedRequest(pool, head.encode("latin-1"), has_body)

    async def send(
        self,
        request: PreparedRequest,
        body: bytes | None,
        *,
        timeout: float,
        extra_headers: bytes = b"",
    ) -> HTTPResponse:
        """Send and wait for the status line and headers; `timeout` is the time left of the
        caller's deadline, which also bounds `HTTPResponse.read()`. `extra_headers` are whole
        header lines (`Name: value\r\n`, already checked by the caller) for this call only."""
        if request.has_body:
            payload = b"%b%bContent-Length: %d\r\n\r\n%b" % (
                request.head,
                extra_headers,
                len(body or b""),
                body or b"",
            )
        else:
            payload = request.head + extra_headers + b"\r\n"
        pool = request.pool
        deadline = asyncio.get_running_loop().time() + timeout
        conn, reused = await pool.acquire(deadline, fresh=False)
        while True:
            resp = HTTPResponse(self, conn, deadline)
            try:
                conn.begin(resp, payload)
                await resp.wait_head()
                return resp
            except UpstreamError:
                if not (resp.stale and reused):
                    raise
            except BaseException:
                resp.close()
                raise
            # The server closed this idle connection as we reused it (it never had the whole
            # request): retry once on a new one.
            conn, reused = await pool.acquire(deadline, fresh=True)
            reused = False

    async def send_streamed(
        self,
        request: PreparedRequest,
        body: StreamedBody,
        *,
        timeout: float,
        extra_headers: bytes = b"",
    ) -> HTTPResponse:
        """Send `body` as it is read from the client, then wait for the status line and headers
        (see the module docstring). `extra_headers` as for `send()`: the body's Content-Type
        goes there. Raises what `send()` raises, and the body's own errors (over its
        `max_bytes`, not its declared length, the client's stream failing) after aborting the
        upstream connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn, _ = await request.pool.acquire(deadline, fresh=True)
        resp = HTTPResponse(self, conn, deadline)
        if body.length is None:
            framing = b"Transfer-Encoding: chunked\r\n\r\n"
        else:
            framing = b"Content-Length: %d\r\n\r\n" % body.length
        try:
            conn.uploading = True  # never reused while its request is unfinished
            conn.begin(resp, request.head + extra_headers + framing)
            try:
                async with asyncio.timeout_at(deadline):
                    await self._upload(conn, resp, body)
            except TimeoutError:
                raise UpstreamTimeoutError(
                    f"Upstream '{self.label}' timed out (the request deadline passed while the "
                    "request body was being sent)"
                ) from None
            await resp.wait_head()
            return resp
        except BaseException:
            resp.close()
            raise

    async def _upload(self, conn: _Connection, resp: HTTPResponse, body: StreamedBody) -> None:
        """Write the body chunk by chunk, each once the previous one is out of our buffer; stop
        early when the upstream answered or failed meanwhile (`wait_head()` then tells)."""
        transport = conn.transport
        chunked = body.length is None
        chunks = body.chunks()
        try:
            while resp.state == _HEAD and resp.error is None and not transport.is_closing():
                try:
                    data = await anext(chunks)
                except StopAsyncIteration:
                    if chunked:
                        transport.write(b"0\r\n\r\n")
                    conn.uploading = False  # the request is whole: keep-alive is possible
                    return
                if resp.state != _HEAD or resp.error is not None or transport.is_closing():
                    return
                transport.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
                while conn.writing and resp.state == _HEAD and resp.error is None:
                    # Our buffer holds bytes the socket would not take: the upstream reads
                    # slower than the client sends. Wait (resume_writing wakes us).
                    limit = min(self.read_timeout, resp.deadline - resp.loop.time())
                    await resp._wait(limit, "the upstream stopped reading the request body")
        finally:
            await chunks.aclose()

    def sweep_idle(self) -> None:
        """Close connections idle for longer than `idle_timeout` (also runs on a timer)."""
        for pool in self.pools.values():
            pool.sweep()

    async def close(self) -> None:
        for pool in self.pools.values():
            pool.close()

    async def start(self) -> None:
        """Build the TLS context in a worker thread when an https origin is known: loading the
        system CA store takes ~50 ms, which would otherwise freeze the event loop (every stream)
        on the first HTTPS request."""
        if self._ssl is not None or not any(scheme == "https" for scheme, _, _ in self.pools):
            return
        try:
            ctx = await asyncio.to_thread(self._new_ssl_context)
        except OSError:
            return  # a bad ca_file fails the requests (as an UpstreamError), not the start
        if self._ssl is None:
            self._ssl = ctx

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:  # not started (or a new https origin): build it here, once
            try:
                self._ssl = self._new_ssl_context()
            except OSError as exc:  # ssl.SSLError included: a ca_file that is not PEM
                reason = exc.strerror or getattr(exc, "reason", None) or type(exc).__name__
                raise UpstreamError(
                    f"Upstream '{self.label}' TLS setup failed: cannot load its ca_file ({reason})"
                ) from exc
        return self._ssl

    def _new_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.ca_file:
            ctx.load_verify_locations(cafile=self.ca_file)  # added to the system CAs
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


class _Proxy:
    __slots__ = ("auth", "host", "port")

    def __init__(self, host: str, port: int, auth: str | None) -> None:
        self.host = host
        self.port = port
        self.auth = auth  # the Proxy-Authorization value, or None

    @classmethod
    def parse(cls, url: str) -> _Proxy:
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("only http:// proxies are supported")
        auth = None
        if parts.username is not None:
            raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(raw.encode()).decode()
        return cls(parts.hostname, parts.port or 80, auth)


class Pool:
    """Keep-alive connections to one origin, at most `max_connections` of them."""

    def __init__(self, client: HTTPClient, scheme: str, host: str, port: int) -> None:
        self.client = client
        self.scheme = scheme
        self.host = host
        self.port = port
        self.max_connections = client.max_connections
        self.idle: deque[_Connection] = deque()  # oldest first; reuse takes the newest
        self.count = 0  # live connections, opening ones included
        self.opened = 0  # connections ever opened (for stats and tests)
        self.waiters: deque[asyncio.Future[_Connection | bool | None]] = deque()
        self.closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    async def acquire(self, deadline: float, *, fresh: bool) -> tuple[_Connection, bool]:
        """A connection and whether it was reused; `fresh` never takes an idle one."""
        if self.closed:
            raise UpstreamError(f"Upstream '{self.client.label}' client is closed")
        idle = self.idle
        if idle:
            if fresh:
                if self.count >= self.max_connections:
                    self._drop(idle[0])
            else:
                now = self.client.clock()
                limit = self.client.idle_timeout
                while idle:
                    conn = idle.pop()
                    conn.state = _ACTIVE
                    if conn.transport_closing() or now - conn.idle_since >= limit:
                        self._drop(conn)
                        continue
                    return conn, True
        if self.count < self.max_connections:
            self.count += 1
            return await self._open(deadline), False
        return await self._wait(deadline)

    async def _wait(self, deadline: float) -> tuple[_Connection, bool]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Connection | bool | None] = loop.create_future()
        self.waiters.append(fut)
        # As long as a connect may take: a slot that frees later than that is better had from
        # another target than waited for until the request deadline.
        give_up = min(deadline, loop.time() + self.client.connect_timeout)
        timer = loop.call_at(give_up, _expire, fut)
        try:
            got = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._give_back(fut.result())
            raise
        finally:
            timer.cancel()
        if isinstance(got, _Connection):
            return got, True
        if got is None:  # a slot was handed over: open a connection in it
            return await self._open(deadline), False
        if self.closed:
            raise UpstreamError(f"Upstream '{self.client.label}' client is closed")
        raise UpstreamBusyError(
            f"Upstream '{self.client.label}' busy: all {self.max_connections} connections "
            "in use, none came free in time"
        )

    def _give_back(self, got: _Connection | bool | None) -> None:
        """Return what a cancelled waiter had been handed."""
        if isinstance(got, _Connection):
            self.release(got, keep_alive=True)
        elif got is None:
            self.count -= 1
            self._slot_freed()

    async def _open(self, deadline: float) -> _Connection:
        """Connect in a slot already counted; the slot is freed again on failure."""
        client = self.client
        if client.proxy_error is not None:
            self.count -= 1
            self._slot_freed()
            raise UpstreamError(f"Upstream '{client.label}' proxy unusable: {client.proxy_error}")
        loop = asyncio.get_running_loop()
        tls = self.scheme == "https"
        proxy = client.proxy
        host, port = (proxy.host, proxy.port) if proxy is not None else (self.host, self.port)
        where = f"proxy {host}:{port}" if proxy is not None else f"{host}:{port}"
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(min(client.connect_timeout, deadline - loop.time())):
                ssl_ctx = client.ssl_context() if tls and proxy is None else None
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    host,
                    port,
                    ssl=ssl_ctx,
                    server_hostname=self.host if ssl_ctx is not None else None,
                )
                if tls and proxy is not None:
                    await conn.tunnel(self.host, self.port, proxy.auth)
                    # The tunnel's socket now carries TLS records: default flow control there,
                    # write tracking on the TLS transport the requests go through.
                    conn.transport.set_write_buffer_limits()
                    transport = await loop.start_tls(
                        conn.transport, conn, client.ssl_context(), server_hostname=self.host
                    )
                    if transport is None:  # pragma: no cover - only with a non-TLS loop
                        raise ConnectionError("TLS upgrade failed")
                    conn.transport = transport
                    _track_writes(transport)
        except BaseException as exc:
            if conn is not None:
                conn.state = _DEAD
                conn.abort()
            self.count -= 1
            self._slot_freed()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeoutError(
                    f"Upstream '{client.label}' timed out connecting to {where}"
                ) from exc
            if isinstance(exc, ssl.SSLCertVerificationError):
                reason = exc.verify_message or "certificate verify failed"
                raise UpstreamError(
                    f"Upstream '{client.label}' TLS certificate of {self.host} not trusted "
                    f"({reason})"
                ) from exc
            if isinstance(exc, ssl.SSLError):
                raise UpstreamError(
                    f"Upstream '{client.label}' TLS handshake with {self.host} failed"
                ) from exc
            if isinstance(exc, GatewayError):
                raise
            if isinstance(exc, OSError):
                reason = exc.strerror or type(exc).__name__
                raise UpstreamError(
                    f"Upstream '{client.label}' unreachable: cannot connect to {where} ({reason})"
                ) from exc
            raise
        self.opened += 1
        return conn

    def release(self, conn: _Connection, *, keep_alive: bool) -> None:
        """A connection whose response is complete: reuse it, or close it."""
        if not keep_alive or self.closed or conn.transport_closing():
            self._drop(conn)
            return
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        conn.state = _IDLE
        conn.idle_since = self.client.clock()
        self.idle.append(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(
                self.client.idle_timeout, self._on_sweep_timer
            )

    def _drop(self, conn: _Connection) -> None:
        """Close a connection for good and free its slot (once, whatever its state)."""
        state = conn.state
        if state == _DEAD:
            return
        if state == _IDLE:
            self.idle.remove(conn)
        conn.state = _DEAD
        conn.abort()
        self.count -= 1
        self._slot_freed()

    def _slot_freed(self) -> None:
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                self.count += 1  # the slot passes to the waiter, who connects in it
                fut.set_result(None)
                return

    def _on_sweep_timer(self) -> None:
        self._sweeper = None
        self.sweep()

    def sweep(self) -> None:
        idle = self.idle
        now = self.client.clock()
        limit = self.client.idle_timeout
        while idle and now - idle[0].idle_since >= limit:
            self._drop(idle[0])
        if idle and self._sweeper is None:
            delay = max(idle[0].idle_since + limit - now, 0.05 * limit)
            self._sweeper = asyncio.get_running_loop().call_later(delay, self._on_sweep_timer)

    def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self.idle:
            self._drop(self.idle[0])
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(False)


def _track_writes(transport: asyncio.BaseTransport) -> None:
    """pause_writing() as soon as a write leaves bytes buffered, resume_writing() once all are
    out: how a connection knows whether its request was wholly written."""
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=1, low=0)  # (0 would pause every TLS write)


def _expire(fut: asyncio.Future[_Connection | bool | None]) -> None:
    if not fut.done():
        fut.set_result(False)


class _Connection(asyncio.Protocol):
    """One socket and its llhttp parser; feeds the response currently in flight."""

    __slots__ = (
        "_chunked",
        "_complete",
        "_has_length",
        "_headers",
        "_interim",
        "_keep_alive",
        "_tunnel_buf",
        "_tunnel_waiter",
        "idle_since",
        "parser",
        "paused",
        "pool",
        "response",
        "sent_at",
        "state",
        "transport",
        "uploading",
        "writing",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set at once
        self.parser = httptools.HttpResponseParser(self)
        self.response: HTTPResponse | None = None
        self.state = _ACTIVE
        self.idle_since = 0.0
        self.paused = False
        self.writing = False  # the request is not wholly out of our buffers yet
        self.uploading = False  # a streamed request body is being sent, not wholly yet
        self.sent_at = 0.0  # client clock when the request was wholly written
        self._headers: dict[str, str] = {}
        self._has_length = False
        self._chunked = False
        self._complete = False
        self._interim = False
        self._keep_alive = False
        self._tunnel_buf: bytearray | None = None
        self._tunnel_waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _track_writes(self.transport)

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None:
            if self._tunnel_buf is not None:
                self._tunnel_data(data)
                return
            # Bytes on an idle connection (a 408, garbage): it cannot be trusted any more.
            self.pool._drop(self)
            return
        resp.got_bytes = True
        pieces = len(resp.chunks)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # we never upgrade
            self._fail(UpstreamError(f"Upstream '{self.pool.client.label}' sent invalid HTTP"))
            return
        if self._complete:
            self._finish()
        elif len(resp.chunks) > pieces:
            if not resp.whole:
                # Body bytes arrived. llhttp calls on_body once per chunk-encoded piece, so the
                # backpressure and the waking are done here, once per read. (A whole read() is
                # woken by the body's completion, or an error, only.)
                if resp.buffered > HIGH_WATER and not self.paused:
                    self.paused = True
                    self.transport.pause_reading()
                resp.wake()
            elif resp.buffered > self.pool.client.max_body:
                # read() takes the body whole, without backpressure: cut it as it crosses the
                # limit (encoded bodies too: they are rarely larger than their decoded form).
                resp.refuse()

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        waiter = self._tunnel_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("proxy closed the connection"))
        resp = self.response
        if resp is None:
            if self.state == _IDLE:  # the server closed an idle keep-alive connection
                self.pool._drop(self)
            return
        if exc is None and resp.state == _BODY and not self._has_length and not self._chunked:
            # A close-delimited body (HTTP/1.0 style): the close is its end.
            self._complete = True
            self._keep_alive = False
            self._finish()
            return
        client = self.pool.client
        if resp.state == _HEAD:
            err = UpstreamError(f"Upstream '{client.label}' closed the connection before answering")
            # Safe to send again only if the server cannot have read the whole request.
            stale = not resp.got_bytes and (
                self.writing or client.clock() - self.sent_at < STALE_WINDOW
            )
            self._fail(err, stale=stale)
        else:
            self._fail(UpstreamError(f"Upstream '{client.label}' connection broke mid-response"))

    # A request body read whole is bounded by max_body_size, so the transport buffers it whole;
    # with the write limits of `_track_writes` these two tell when the request is wholly out,
    # and when a streamed body may take its next chunk from the client (`send_streamed`).

    def pause_writing(self) -> None:
        self.writing = True

    def resume_writing(self) -> None:
        self.writing = False
        self.sent_at = self.pool.client.clock()
        if self.uploading and self.response is not None:
            self.response.wake()

    # --- llhttp callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname == b"content-length":
            self._has_length = True
            assert self.response is not None
            self.response.length = int(value) if value.strip().isdigit() else -1
        elif lname == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()
        elif lname == b"content-encoding":
            enc = value.strip().lower()
            if enc != b"identity":
                assert self.response is not None
                self.response.encoding = enc
        client = self.pool.client
        if lname in client.keep_headers or (
            client.keep_prefixes and lname.startswith(client.keep_prefixes)
        ):
            self._headers[lname.decode("latin-1")] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        resp = self.response
        assert resp is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints…: an interim answer; the final one follows on the
            # same connection (101 is an upgrade, which llhttp reports as an error).
            self._interim = True
            self._headers = {}
            self._has_length = self._chunked = False
            resp.encoding = None
            resp.length = -1
            return
        resp.status = status
        resp.headers = self._headers
        resp.state = _BODY
        resp.wake()

    def on_body(self, body: bytes) -> None:
        resp = self.response
        assert resp is not None
        resp.chunks.append(body)
        resp.buffered += len(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False  # only the interim answer ended: keep waiting for the head
            return
        self._complete = True
        self._keep_alive = self.parser.should_keep_alive()

    # --- used by the pool and the response -------------------------------------------------

    def begin(self, resp: HTTPResponse, payload: bytes) -> None:
        self.response = resp
        self._headers = {}
        self._has_length = self._chunked = self._complete = self._interim = False
        if self.transport.is_closing():
            self._fail(
                UpstreamError(f"Upstream '{self.pool.client.label}' connection already closed"),
                stale=True,  # nothing was written
            )
            return
        self.writing = False
        self.transport.write(payload)  # calls pause_writing() when some of it stays buffered
        self.sent_at = self.pool.client.clock()

    def transport_closing(self) -> bool:
        return self.transport.is_closing()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.response = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    def _finish(self) -> None:
        """The response's last byte is in: hand the body over and free the connection."""
        resp = self.response
        assert resp is not None
        self._complete = False
        self.response = None
        resp.conn = None
        resp.state = _DONE
        resp.disarm()
        resp.wake()
        self.resume()
        # (An answer that came before the whole streamed request body: the rest of that body
        # is never sent, so the connection cannot carry another request.)
        self.pool.release(self, keep_alive=self._keep_alive and not self.uploading)

    def _fail(self, err: UpstreamError, *, stale: bool = False) -> None:
        resp = self.response
        if resp is not None:
            resp.fail(err, stale=stale)
        self.pool._drop(self)

    # --- CONNECT tunnels -------------------------------------------------------------------

    async def tunnel(self, host: str, port: int, auth: str | None) -> None:
        """Ask the proxy for a tunnel to host:port; returns once it answered 200."""
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if auth:
            lines.append(f"Proxy-Authorization: {auth}")
        self._tunnel_buf = bytearray()
        self._tunnel_waiter = asyncio.get_running_loop().create_future()
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            await self._tunnel_waiter
        finally:
            self._tunnel_waiter = None
        head = bytes(self._tunnel_buf)
        self._tunnel_buf = None
        status_line = head.split(b"\r\n", 1)[0].split()
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
        if status != 200:
            raise UpstreamError(
                f"Upstream '{self.pool.client.label}' proxy refused the tunnel (HTTP {status})"
            )

    def _tunnel_data(self, data: bytes) -> None:
        buf = self._tunnel_buf
        assert buf is not None
        buf += data
        waiter = self._tunnel_waiter
        if b"\r\n\r\n" in buf and waiter is not None and not waiter.done():
            waiter.set_result(None)
        elif len(buf) > 65536:
            self.pool._drop(self)


class HTTPResponse(UpstreamResponse):
    """Status and headers are in; the body arrives into `chunks` as the socket delivers it."""

    __slots__ = (
        "buffered",
        "chunks",
        "client",
        "conn",
        "deadline",
        "encoding",
        "error",
        "got_bytes",
        "length",
        "loop",
        "mark",
        "stale",
        "state",
        "timer",
        "timer_at",
        "wait_until",
        "waiter",
        "whole",
    )

    def __init__(self, client: HTTPClient, conn: _Connection, deadline: float) -> None:
        super().__init__(0, {})
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.conn: _Connection | None = conn
        self.deadline = deadline
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.state = _HEAD
        self.encoding: bytes | None = None
        self.length = -1  # the declared Content-Length, -1 without one
        self.error: UpstreamError | None = None
        self.got_bytes = False
        self.stale = False  # the server cannot have processed the request: safe to send again
        self.waiter: asyncio.Future[bool] | None = None
        self.whole = False  # read() wants everything: woken at the end only, no backpressure
        # One watchdog timer per response, re-armed only when it fires, instead of a timer per
        # wait (a stream waits once per chunk): it ends the current wait at `wait_until`.
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.wait_until = 0.0
        self.mark = 0  # `buffered` when the wait began: progress of a whole read()

    def fail(self, err: UpstreamError, *, stale: bool = False) -> None:
        self.error = err
        self.stale = stale
        self.conn = None
        self.disarm()
        self.wake()

    def wake(self) -> None:
        """The connection has news (head, body bytes, the end, an error) for a waiting reader."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def disarm(self) -> None:
        """The answer is over (complete, failed or closed): stop the watchdog."""
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()

    def _on_timer(self) -> None:
        self.timer = None
        fut = self.waiter
        if fut is None or fut.done():
            return  # nobody is waiting now: the next wait arms it again
        now = self.loop.time()
        if self.whole and self.buffered != self.mark:
            # Bytes arrived while read() waits for the end (it is not woken per packet): the
            # body is not stalled; give it another read timeout from now.
            self.mark = self.buffered
            self.wait_until = min(now + self.client.read_timeout, self.deadline)
        if now + 0.001 >= self.wait_until:  # (loops may fire a timer a hair early)
            fut.set_result(False)
        else:
            self.timer_at = self.wait_until
            self.timer = self.loop.call_at(self.wait_until, self._on_timer)

    async def _wait(self, limit: float, what: str) -> None:
        """Until the connection has news, at most `limit` seconds."""
        loop = self.loop
        fut: asyncio.Future[bool] = loop.create_future()
        self.waiter = fut
        until = self.wait_until = loop.time() + limit
        self.mark = self.buffered
        timer = self.timer
        if timer is None or self.timer_at > until:  # else it fires sooner and re-arms itself
            if timer is not None:
                timer.cancel()
            self.timer_at = until
            self.timer = loop.call_at(until, self._on_timer)
        try:
            news = await fut
        except asyncio.CancelledError:
            self.close()  # the caller gave up mid-answer: the connection cannot be reused
            raise
        finally:
            self.waiter = None
        if not news:
            self.close()
            if loop.time() >= self.deadline:
                what = "the request deadline passed"
            raise UpstreamTimeoutError(f"Upstream '{self.client.label}' timed out ({what})")

    async def wait_head(self) -> None:
        loop = asyncio.get_running_loop()
        while self.state == _HEAD:
            if self.error is not None:
                raise self.error
            limit = min(self.client.read_timeout, self.deadline - loop.time())
            await self._wait(limit, "no answer within the read timeout")
        if self.error is not None:
            raise self.error

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        max_body = self.client.max_body
        if self.length > max_body or self.buffered > max_body:
            raise self.refuse()  # refused at the head: not a byte more is read
        self.whole = True
        if self.conn is not None:
            self.conn.resume()
        while self.state != _DONE:
            if self.error is not None:
                raise self.error
            limit = min(self.client.read_timeout, self.deadline - loop.time())
            await self._wait(limit, "the response stalled")
        if self.buffered > max_body:  # the whole body came in the read that crossed the limit
            raise self.refuse()
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        self.buffered = 0
        if self.encoding is not None:
            body = await self._inflate(body, max_body)
        return body

    async def _inflate(self, data: bytes, max_body: int) -> bytes:
        """Decode a whole body, never past `max_body + 1` bytes (a bomb stops there), in pieces
        with other tasks let run between them: inflating 64MiB takes a few hundred ms."""
        decoder = self._decoder()
        pieces: list[bytes] = []
        size = 0
        try:
            while True:
                piece = decoder.decompress(data, min(INFLATE_PIECE, max_body + 1 - size))
                size += len(piece)
                pieces.append(piece)
                data = decoder.unconsumed_tail
                if size > max_body:
                    raise self.refuse()
                if not data:
                    break
                await asyncio.sleep(0)
            tail = decoder.flush()  # all input is in: at most the last match's few bytes
        except zlib.error as exc:
            raise self._bad_encoding() from exc
        if size + len(tail) > max_body:
            raise self.refuse()
        pieces.append(tail)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def iter_chunks(self) -> AsyncGenerator[bytes, None]:
        decoder = self._decoder() if self.encoding is not None else None
        read_timeout = self.client.read_timeout
        try:
            while True:
                chunks = self.chunks
                if chunks:
                    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    self.chunks = []
                    self.buffered = 0
                    conn = self.conn
                    if conn is not None and conn.paused:
                        conn.resume()
                    if decoder is None:
                        yield data
                        continue
                    # Inflated piece by piece, so a small read of a bomb never becomes a
                    # large buffer: each piece is handed on before the next is made.
                    while data:
                        try:
                            piece = decoder.decompress(data, HIGH_WATER)
                        except zlib.error as exc:
                            raise self._bad_encoding() from exc
                        data = decoder.unconsumed_tail
                        if piece:
                            yield piece
                    continue
                if self.state == _DONE:
                    if decoder is not None:
                        tail = decoder.flush()
                        if tail:
                            yield tail
                    return
                if self.error is not None:
                    raise self.error
                await self._wait(read_timeout, "the stream stalled")
        finally:
            if self.state != _DONE:
                self.close()  # abandoned mid-stream: abort, so the upstream stops

    def body_length(self) -> int | None:
        return self.length if self.length >= 0 and self.encoding is None else None

    def close(self) -> None:
        self.disarm()
        conn = self.conn
        if conn is not None:
            # Not read to the end: abort, so the upstream sees the close (and stops generating).
            self.conn = None
            conn.response = None
            conn.pool._drop(conn)
        if self.state != _DONE and self.error is None:
            self.error = UpstreamError(f"Upstream '{self.client.label}' response closed")

    def refuse(self) -> UpstreamError:
        """The body is over `max_body`: drop what came of it, abort the connection (it is never
        reused), wake the reader and return the error to raise."""
        limit = format_size(self.client.max_body)
        err = UpstreamError(
            f"Upstream '{self.client.label}' answer exceeds server.max_upstream_body ({limit})"
        )
        self.chunks = []
        self.buffered = 0
        self.close()
        self.error = err
        self.wake()
        return err

    def _decoder(self) -> zlib._Decompress:
        if self.encoding not in (b"gzip", b"x-gzip", b"deflate"):
            raise UpstreamError(f"Upstream '{self.client.label}' used an unsupported encoding")
        return zlib.decompressobj(wbits=47)  # 32 + 15: zlib or gzip header, detected

    def _bad_encoding(self) -> UpstreamError:
        return UpstreamError(f"Upstream '{self.client.label}' sent a body that does not decode")
