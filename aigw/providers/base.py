"""The narrow provider interface: send one request upstream, get a status and a byte stream back.

Two calls: `send()` for the JSON endpoints the gateway understands, `forward()` for the
pass-through ones (images, audio, moderations), whose request body may be streamed from the
client as it is sent upstream (`StreamedBody`). Transport details (aiohttp, sockets) never leave
`providers/`: transport failures surface as `UpstreamError` (502) or `UpstreamTimeoutError`
(504) from `aigw.errors`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Final

from aigw.errors import MalformedRequestError, RequestTooLargeError, UpstreamError

#: The default largest answer body read whole (`server.max_upstream_body`'s default).
MAX_BODY: Final = 64 * 1024 * 1024

#: Endpoints the gateway proxies, relative to a provider's base URL.
ENDPOINTS: tuple[str, ...] = ("chat/completions", "completions", "embeddings")

#: Pass-through endpoints (`Provider.forward()`) and the `providers.NAME.apis` name of each.
PASS_THROUGH_ENDPOINTS: Final[Mapping[str, str]] = {
    "images/generations": "images",
    "audio/speech": "audio",
    "audio/transcriptions": "audio",
    "audio/translations": "audio",
    "moderations": "moderations",
}


class StreamedBody:
    """A request body taken from the client chunk by chunk as it is sent upstream, never held
    whole (a multipart upload). It can be sent once: `replayable` says whether a failed attempt
    may still be tried on another target (nothing was taken from the client's stream yet).

    `chunks` is the client's body as the server reads it (e.g. aiohttp's
    `request.content.iter_chunked(64 * 1024)`); `head`, bytes already read from it (to find a
    form field, say), is sent first. `length` is the whole body's size (head included) when the
    client declared it, else None (the upstream then gets it chunked). `max_bytes` bounds what
    is read: a larger declared length is refused at once, and a stream that crosses it is cut
    having read at most one chunk more (`RequestTooLargeError`, 413). Errors of `chunks` itself
    (the client went away mid-body) pass through unchanged."""

    __slots__ = ("_rest", "head", "length", "max_bytes", "taken")

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        length: int | None,
        max_bytes: int,
        head: bytes = b"",
    ) -> None:
        if length is not None and length > max_bytes:
            raise RequestTooLargeError(
                f"Request body is {length} bytes; the limit is {max_bytes} bytes."
            )
        if length is not None and length < len(head):
            raise MalformedRequestError("The request body is longer than its Content-Length.")
        self._rest = chunks
        self.head = head
        self.length = length
        self.max_bytes = max_bytes
        self.taken = -1  # bytes taken from `chunks`; -1 while it was never asked for one

    @property
    def replayable(self) -> bool:
        """Whether nothing was taken from the client's stream (another attempt may send it)."""
        return self.taken < 0

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body, `head` first; raises when it breaks `max_bytes` or its `length`."""
        if self.head:
            yield self.head
        size = len(self.head)
        limit, length = self.max_bytes, self.length
        self.taken = 0
        async for data in self._rest:
            size += len(data)
            self.taken += len(data)
            if size > limit:
                raise RequestTooLargeError(f"Request body exceeds the limit of {limit} bytes.")
            if length is not None and size > length:
                raise MalformedRequestError("The request body is longer than its Content-Length.")
            if data:
                yield data
        if length is not None and size != length:
            raise MalformedRequestError("The request body ended before its Content-Length.")


class UpstreamResponse(ABC):
    """An upstream answer whose body has not been read yet."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str]) -> None:
        self.status = status
        self.headers = headers

    def body_length(self) -> int | None:
        """The body's size in bytes when known before it is read (a declared Content-Length
        of an unencoded body), else None: what a binary answer streamed on may announce."""
        return None

    @abstractmethod
    async def read(self) -> bytes:
        """The whole body (non-streamed answers and error bodies)."""

    @abstractmethod
    def iter_chunks(self) -> AsyncGenerator[bytes, None]:
        """Body bytes as they arrive (streams)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; a body not read to the end aborts it, so the upstream
        sees the connection close (how a client disconnect cancels generation)."""


class Provider(ABC):
    """One upstream API. Implementations keep one pooled keep-alive client each."""

    def __init__(self, name: str, *, max_body: int) -> None:
        self.name = name
        #: The largest answer body read whole, decoded bytes counted (`server.max_upstream_body`).
        self.max_body = max_body

    @abstractmethod
    async def send(
        self,
        endpoint: str,
        body: bytes,
        *,
        stream: bool,
        timeout: float,
        client_headers: Sequence[tuple[bytes, bytes]] = (),
        trace_headers: bytes = b"",
    ) -> UpstreamResponse:
        """POST `body` (JSON) to `endpoint`; `timeout` is the time left of the request deadline.
        `client_headers` are the client's raw request headers: the provider forwards the ones
        its rules allow (`aigw.headers`), never credentials. `trace_headers` are whole header lines
        (`traceparent`, `tracestate` of the attempt's span) sent instead of the client's own.

        Raises UpstreamError / UpstreamTimeoutError when no HTTP answer could be had."""

    async def forward(
        self,
        endpoint: str,
        body: bytes | StreamedBody,
        *,
        content_type: str,
        timeout: float,
        client_headers: Sequence[tuple[bytes, bytes]] = (),
        trace_headers: bytes = b"",
    ) -> UpstreamResponse:
        """POST `body` unchanged to a pass-through `endpoint` (`PASS_THROUGH_ENDPOINTS`) with
        the client's `content_type` (a multipart boundary differs per request); the answer is
        any media type (JSON, text, audio). A `StreamedBody` is read from the client as it is
        sent (see there); `bytes` may be sent again on a fresh connection like `send()`'s.
        Auth, forwarded headers, `timeout` and errors as for `send()`; the body's own errors
        (`RequestTooLargeError`, `MalformedRequestError`, the client's stream failing) abort
        the upstream call and pass through."""
        raise UpstreamError(f"Provider '{self.name}' has no pass-through endpoints")

    @abstractmethod
    async def probe(self) -> None:
        """A cheap health check (never a paid completion); raises on failure."""

    async def start(self) -> None:
        """Open pools; called once inside the running event loop."""
        return None

    async def close(self) -> None:
        return None
