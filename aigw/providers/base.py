"""The narrow provider interface: send one request upstream, get a status and a byte stream back.

Transport details (aiohttp, sockets) never leave `providers/`: transport failures surface as
`UpstreamError` (502) or `UpstreamTimeoutError` (504) from `aigw.errors`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Final

#: The default largest answer body read whole (`server.max_upstream_body`'s default).
MAX_BODY: Final = 64 * 1024 * 1024

#: Endpoints the gateway proxies, relative to a provider's base URL.
ENDPOINTS: tuple[str, ...] = ("chat/completions", "completions", "embeddings")


class UpstreamResponse(ABC):
    """An upstream answer whose body has not been read yet."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str]) -> None:
        self.status = status
        self.headers = headers

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
    ) -> UpstreamResponse:
        """POST `body` (JSON) to `endpoint`; `timeout` is the time left of the request deadline.
        `client_headers` are the client's raw request headers: the provider forwards the ones
        its rules allow (`aigw.headers`), never credentials.

        Raises UpstreamError / UpstreamTimeoutError when no HTTP answer could be had."""

    @abstractmethod
    async def probe(self) -> None:
        """A cheap health check (never a paid completion); raises on failure."""

    async def start(self) -> None:
        """Open pools; called once inside the running event loop."""
        return None

    async def close(self) -> None:
        return None
