"""Any OpenAI-compatible upstream (OpenAI, Azure-style proxies, Ollama, vLLM, LM Studio, Groq,
OpenRouter…) over one pooled keep-alive aiohttp `ClientSession` per provider."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator

import aiohttp

from aigw.config import ProviderConfig
from aigw.errors import UpstreamError, UpstreamTimeoutError
from aigw.providers.base import Provider, UpstreamResponse

# Upstream response headers worth passing to the client; everything else is hop-by-hop or noise.
FORWARDED_HEADERS: tuple[str, ...] = (
    "content-type",
    "openai-processing-ms",
    "openai-model",
    "openai-organization",
    "openai-version",
    "x-request-id",
)


class AiohttpResponse(UpstreamResponse):
    __slots__ = ("_resp",)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        headers = {k: resp.headers[k] for k in FORWARDED_HEADERS if k in resp.headers}
        super().__init__(resp.status, headers)
        self._resp = resp

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeoutError("Upstream timed out while sending the response") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Upstream connection failed: {_describe(exc)}") from exc
        finally:
            self._resp.release()

    async def iter_chunks(self) -> AsyncGenerator[bytes, None]:
        content = self._resp.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    if not content.is_eof():  # pragma: no cover - defensive
                        continue
                    return
                yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeoutError("Upstream stopped sending (read timeout)") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Upstream connection broke: {_describe(exc)}") from exc

    def close(self) -> None:
        if self._resp.content.is_eof():
            self._resp.release()
        else:
            # Closing the socket is how the upstream learns the client went away.
            self._resp.close()


class OpenAIProvider(Provider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config.name)
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        headers.update(config.headers)
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key.reveal()}"
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None
        # Proxies from the environment, resolved once: aiohttp's trust_env would re-read
        # ~/.netrc and scan os.environ on every request (a third of a request's CPU).
        self._proxy = _env_proxy(self.base_url)
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.timeout
        )

    async def start(self) -> None:
        if self._session is not None:
            return
        ssl_ctx: ssl.SSLContext | bool = True
        if self.config.ca_file:
            ssl_ctx = ssl.create_default_context(cafile=self.config.ca_file)
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections,
            limit_per_host=self.config.max_connections,
            keepalive_timeout=30,
            ssl=ssl_ctx,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self._timeout,
            auto_decompress=True,
            trust_env=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, endpoint: str, body: bytes, *, stream: bool, timeout: float
    ) -> UpstreamResponse:
        if self._session is None:
            await self.start()
        assert self._session is not None
        url = f"{self.base_url}/{endpoint}"
        headers = {"Accept": "text/event-stream"} if stream else None
        try:
            async with asyncio.timeout(
                min(timeout, self.config.connect_timeout + self.config.timeout)
            ):
                resp = await self._session.post(url, data=body, headers=headers, proxy=self._proxy)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"Upstream '{self.name}' timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Upstream '{self.name}' unreachable: {_describe(exc)}") from exc
        return AiohttpResponse(resp)

    async def probe(self) -> None:
        if self._session is None:
            await self.start()
        assert self._session is not None
        try:
            async with self._session.get(
                f"{self.base_url}/models",
                timeout=aiohttp.ClientTimeout(total=10),
                proxy=self._proxy,
            ) as resp:
                await resp.read()
                if resp.status >= 500 or resp.status == 429:
                    raise UpstreamError(f"probe got HTTP {resp.status}")
        except TimeoutError as exc:
            raise UpstreamTimeoutError("probe timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"probe failed: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """A short reason with no URL credentials or headers in it."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or 'error'})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response payload broken"
    return type(exc).__name__


def _env_proxy(base_url: str) -> str | None:
    """The proxy to use for `base_url` per HTTP(S)_PROXY / NO_PROXY, or None."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if not host or urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or None
