"""The API's client connections: aiohttp's low-level HTTP protocol with the limits a server that
faces untrusted clients needs, at almost no cost per request.

Timeouts, enforced by the one timer aiohttp already keeps per connection (never one per request):
- `server.header_timeout`: a request's head (request line and headers) must be complete within
  this long of its first byte; a connection's first request, within this long of connecting.
- `server.keepalive_timeout`: a connection idle between requests is closed after this long.
The timer fires at least every header_timeout while the connection lives, so a head that starts
at any moment is caught in time; the only work per request is one clock read when the first
bytes of a head arrive.

`server.max_connections` (default: what RLIMIT_NOFILE allows after a reserve for what is not a
client connection): past it, the connections that have waited longest for a request (idle
keep-alive ones, half-sent heads) are closed to make room; when every connection is busy, the
new one is answered 503 and closed. Those 503s may use a small overflow above the cap; past it
a new connection is closed at once, so the reserve (admin socket, upstream pools, state store,
files) is never spent on clients.

A head that cannot be parsed never reaches the proxy: it is answered with OpenAI error JSON
(400, or 431 for a header line over the limit) that never echoes its bytes, and logged in one
line at most every PROBLEM_LOG_INTERVAL seconds; a body that stops parsing fails the read of
the handler waiting for it (aiohttp leaves that handler waiting forever). A body the handler did
not read (a 413, a 401 before the body) is not read to its end either: the connection closes
once the answer is sent, where aiohttp would read and discard for up to 10 s (gigabytes on a
fast client).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from aigw.config import ServerConfig
from aigw.errors import (
    ConnectionLimitError,
    GatewayError,
    HeadersTooLargeError,
    MalformedRequestError,
    UpstreamTimeoutError,
)

log = logging.getLogger("aigw")

#: Descriptors kept for what is not a client connection: stdio, the event loop, the listening
#: and admin sockets, admin connections, the state store, the audit log, pipes, DNS lookups.
#: Upstream pools (`providers.*.max_connections`) are reserved on top of these.
RESERVED_FDS = 64
#: Fewest client connections the cap allows, however low the open-file limit.
MIN_CONNECTIONS = 16
#: Longest between two log lines about the same kind of bad client behaviour.
PROBLEM_LOG_INTERVAL = 10.0
#: How long requests cut at the drain deadline get to end (settle their charges, close their
#: streams) before the connections are closed under them.
CUT_GRACE = 1.0
#: After a scan for idle connections found too few, new connections over the cap are refused
#: without scanning again for this long: the scan is O(connections).
SCAN_BACKOFF = 0.25


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float
    keepalive_timeout: float
    max_connections: int
    #: connections above max_connections still accepted, to be answered 503
    overflow: int


def raise_fd_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit, as Go's runtime does (the
    soft limit is often 1024 for no reason but history); returns the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # not allowed here: live with the soft limit
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def plan_limits(
    server: ServerConfig, *, fd_limit: int, upstream_connections: int
) -> tuple[ConnectionLimits, str | None]:
    """The connection limits for `server` under an open-file limit of `fd_limit`, with
    `upstream_connections` descriptors kept for the upstream pools; and a warning when the
    configured cap cannot be honoured."""
    reserved = RESERVED_FDS + upstream_connections
    available = fd_limit - reserved
    overflow = min(max(available // 20, 8), 1024)
    allowed = max(available - overflow, MIN_CONNECTIONS)
    wanted = server.max_connections
    warning = None
    if wanted is not None and wanted <= allowed:
        cap = wanted
    else:
        cap = allowed
        if wanted is not None or available - overflow < MIN_CONNECTIONS:
            what = f"server.max_connections {wanted}" if wanted is not None else "the default"
            warning = (
                f"{what} is more than the open-file limit allows ({fd_limit} files, {reserved} "
                f"kept for upstream connections, the admin socket and files): at most {cap} "
                "client connections; raise `ulimit -n` for more"
            )
    limits = ConnectionLimits(
        header_timeout=server.header_timeout,
        keepalive_timeout=server.keepalive_timeout,
        max_connections=cap,
        overflow=overflow,
    )
    return limits, warning


class ThrottledLog:
    """Warnings a client can cause once per request, logged at most once per `interval`
    seconds per kind; a line says how many were suppressed since the previous one."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = PROBLEM_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object, **kwargs: Any) -> None:
        now = self._clock()
        due = self._next.get(kind)
        if due is not None and now < due:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._next[kind] = now + self._interval
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (%d more like it since the previous line)"
            args = (*args, suppressed)
        self._logger.warning(message, *args, **kwargs)


def http_problem(status: int, exc: BaseException | None) -> GatewayError:
    """The client-facing error for what aiohttp could not handle: its own words, never the
    request's bytes (a header that failed to parse may be an Authorization)."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else "the limit of"
        return HeadersTooLargeError(f"A request line or header is longer than {limit} bytes.")
    if isinstance(exc, HttpProcessingError):
        reason = _safe_reason(exc)
        if reason == "Too many headers received":
            return HeadersTooLargeError("The request has too many headers.")
        return MalformedRequestError(f"The request is not valid HTTP: {reason}.")
    if status == 504:
        return UpstreamTimeoutError("The gateway timed out handling this request.")
    return GatewayError("The gateway failed to handle this request.")


def _safe_reason(exc: HttpProcessingError) -> str:
    if isinstance(exc, BadHttpMethod):
        if exc.message.startswith("Received HTTPS traffic"):
            return "HTTPS traffic on an HTTP port"
        return "invalid method"
    if isinstance(exc, BadStatusLine):
        return "invalid request line"
    if isinstance(exc, InvalidURLError):
        return "invalid request target"
    if isinstance(exc, InvalidHeader):
        return "invalid header"
    # llhttp's reasons are fixed texts, followed by the bytes after a colon and a line break;
    # aiohttp's own are fixed texts naming at most a well-known header.
    first = (exc.message or "").split("\n", 1)[0].rstrip(":. ")
    if first and len(first) <= 80 and first.isascii() and first.isprintable():
        return first
    return "malformed request"


class ProxyConnection(RequestHandler):
    """One client connection (aiohttp's protocol) with the head timeout and the hooks the
    connection cap needs. Runs on aiohttp's private state: pinned by the tests that exercise
    every path (tests/test_server_hardening.py)."""

    __slots__ = ("_head_count", "_head_since", "_header_timeout")

    def __init__(self, manager: ProxyServer, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        #: `_request_count` when the current head's first bytes came: a head is in progress
        #: while the two are equal (a complete head increments `_request_count`)
        self._head_count = 0
        self._head_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # the server may refuse or close it in there
        loop = self._loop
        handle = self._keepalive_handle
        if handle is not None:
            handle.cancel()
            self._keepalive_handle = None
        if self._force_close:
            return
        # The first request's head is timed from connecting.
        self._head_since = now = loop.time()
        self._keepalive_handle = loop.call_at(now + self._header_timeout, self._process_keepalive)

    def data_received(self, data: bytes) -> None:
        # Waiting for a request and no head begun: these are its first bytes.
        if self._head_count != self._request_count and self._waiter is not None:
            self._head_count = self._request_count
            self._head_since = self._loop.time()
        super().data_received(data)
        if self._messages and self._current_request is not None:
            self._fail_body_on_parse_error()

    def _fail_body_on_parse_error(self) -> None:
        """A body that stops parsing (a bad chunk size) comes out of aiohttp's parser as an
        error message queued for later, while the handler reading that body is never told and
        waits forever: tell it (the proxy then answers; the connection closes after)."""
        message = self._messages[-1][0]
        request = self._current_request
        if isinstance(message, RawRequestMessage) or request is None:
            return
        err = http_problem(message.status, message.exc)
        request._cancel(RequestPayloadError(err.message))

    def _process_keepalive(self) -> None:
        """aiohttp's keep-alive timer, which this class keeps ticking at least every
        header_timeout: closes a connection whose head is late or that idled too long."""
        self._keepalive_handle = None
        if self._force_close or self.transport is None:
            return
        loop = self._loop
        now = loop.time()
        waiter = self._waiter
        if waiter is not None and not waiter.done():  # waiting for a request
            if self._head_count == self._request_count:
                deadline = self._head_since + self._header_timeout
            else:
                deadline = self._next_keepalive_close_time
            if now >= deadline:
                self.force_close()
                return
            when = min(deadline, now + self._header_timeout)
        else:  # a request is being handled: tick on, to time the next head from its first byte
            when = now + self._header_timeout
        self._keepalive_handle = loop.call_at(when, self._process_keepalive)

    def waiting_for_request(self) -> bool:
        """True when no request is being handled or queued here: closing it loses nothing."""
        if self._force_close or self._close:
            return False
        if self._request_count == 0:
            return True
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def waiting_since(self) -> float:
        """Loop time since when this connection has been waiting for its next request."""
        if self._head_count == self._request_count:
            return self._head_since
        return self._next_keepalive_close_time - self._keepalive_timeout

    def refuse(self, handler: Callable[[web.BaseRequest], Any]) -> None:
        """Answer this connection's request with `handler` instead of the proxy."""
        self._request_handler = handler

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: too late for an answer
            raise ConnectionError("the response is already being sent")
        err = http_problem(status, exc)
        manager = cast("ProxyServer | None", self._manager)
        if manager is not None:
            if isinstance(exc, HttpProcessingError):
                manager.problems.warning(
                    "malformed",
                    "rejected a malformed HTTP request from %s: %s (HTTP %d)",
                    request.remote,
                    err.message,
                    err.status,
                )
            else:  # a bug: worth its traceback, but not one per request
                manager.problems.warning(
                    "internal", "request from %s failed", request.remote, exc_info=exc
                )
        response = web.Response(
            status=err.status, body=err.body(), headers=err.headers, content_type="application/json"
        )
        response.force_close()
        return response


class ProxyServer(web.Server):
    """aiohttp's low-level server with ProxyConnection, the connection cap and the drain."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Any],
        *,
        limits: ConnectionLimits,
        request_factory: Any,
    ) -> None:
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=limits.keepalive_timeout,
            lingering_time=0.0,  # an unread body is not read to its end: the answer, then close
        )
        self.limits = limits
        self.problems = ThrottledLog(log)
        self._scan_after = 0.0
        busy = ConnectionLimitError(
            f"The gateway has reached its connection limit ({limits.max_connections}, "
            "server.max_connections) and every connection is busy; retry shortly."
        )
        self._busy_status = busy.status
        self._busy_body = busy.body()
        self._busy_headers = busy.headers

    def __call__(self) -> ProxyConnection:
        return ProxyConnection(
            self, loop=self._loop, header_timeout=self.limits.header_timeout, **self._kwargs
        )

    # --- the connection cap -----------------------------------------------------------------

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        excess = len(self._connections) - self.limits.max_connections
        if excess > 0:
            self._over_limit(cast(ProxyConnection, handler), excess)

    def _over_limit(self, new: ProxyConnection, excess: int) -> None:
        limits = self.limits
        now = self._loop.time()
        freed = 0
        if now >= self._scan_after:
            idle = [
                c
                for c in cast("list[ProxyConnection]", list(self._connections))
                if c is not new and c.waiting_for_request()
            ]
            # Free a few more than needed: the scan is O(connections), not to be run per accept.
            batch = min(len(idle), excess + limits.max_connections // 64)
            for conn in heapq.nsmallest(batch, idle, key=ProxyConnection.waiting_since):
                del self._connections[conn]
                conn.force_close()
            freed = batch
            if freed:
                self.problems.warning(
                    "evicted",
                    "server.max_connections (%d) reached: closed %d connections idle longest",
                    limits.max_connections,
                    freed,
                )
            if freed < excess:
                self._scan_after = now + SCAN_BACKOFF
        if freed >= excess:
            return
        if len(self._connections) > limits.max_connections + limits.overflow:
            del self._connections[new]
            new.force_close()
            self.problems.warning(
                "rejected",
                "server.max_connections (%d) reached and every connection busy: "
                "closing new connections",
                limits.max_connections,
            )
        else:
            new.refuse(self._answer_busy)

    async def _answer_busy(self, request: web.BaseRequest) -> web.StreamResponse:
        response = web.Response(
            status=self._busy_status,
            body=self._busy_body,
            headers=self._busy_headers,
            content_type="application/json",
        )
        response.force_close()
        return response

    # --- stopping ---------------------------------------------------------------------------

    def requests_in_flight(self) -> int:
        return sum(1 for conn in self._connections if conn._request_in_progress)

    async def drain(self, timeout: float, on_deadline: Callable[[], None]) -> int:
        """Close idle connections now and let the requests in flight finish, each connection
        closing after its answer; at `timeout` call `on_deadline` and cancel what still runs
        (giving it CUT_GRACE to end). Returns how many requests were cut."""
        loop = self._loop
        deadline = loop.time() + timeout
        busy: set[asyncio.Task[None]] = set()
        for conn in cast("list[ProxyConnection]", list(self._connections)):
            task = conn._task_handler
            if task is None or task.done() or conn.waiting_for_request():
                conn.force_close()
            else:
                conn.close()
                busy.add(task)
        pending = busy
        if busy:
            _, pending = await asyncio.wait(busy, timeout=max(deadline - loop.time(), 0.0))
        if pending:
            on_deadline()
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=CUT_GRACE)
        for left in list(self._connections):
            left.force_close()
        self._connections.clear()
        return len(pending)
