"""Any OpenAI-compatible upstream (OpenAI, Azure-style proxies, Ollama, vLLM, LM Studio, Groq,
OpenRouter…) over one pooled keep-alive `HTTPClient` per provider."""

from __future__ import annotations

from aigw.config import ProviderConfig
from aigw.errors import UpstreamError
from aigw.providers.base import Provider, UpstreamResponse
from aigw.providers.http import HTTPClient, PreparedRequest

# Upstream response headers worth passing to the client; everything else is hop-by-hop or noise.
FORWARDED_HEADERS: tuple[str, ...] = (
    "content-type",  # JSON or SSE: how the proxy delivers the answer
    "retry-after",  # an upstream 429/503's advice, passed on to the client
    "retry-after-ms",
)

PROBE_TIMEOUT = 10.0


class OpenAIProvider(Provider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config.name)
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        headers = {"Content-Type": "application/json"}
        headers.update(config.headers)
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key.reveal()}"
        self._headers = headers
        # Proxies from the environment, resolved once (never per request).
        self.client = HTTPClient(
            label=config.name,
            max_connections=config.max_connections,
            connect_timeout=config.connect_timeout,
            read_timeout=config.timeout,
            ca_file=config.ca_file,
            proxy=_env_proxy(self.base_url),
            keep_headers=FORWARDED_HEADERS,
        )
        # Request heads encoded once per endpoint: a send only adds Content-Length and the body.
        self._plain: dict[str, PreparedRequest] = {}
        self._streams: dict[str, PreparedRequest] = {}
        self._probe = self._prepare("GET", "models", "application/json")

    def _prepare(self, method: str, endpoint: str, accept: str) -> PreparedRequest:
        headers = {"Accept": accept, **self._headers}
        if method == "GET":
            headers.pop("Content-Type", None)
        return self.client.prepare(method, f"{self.base_url}/{endpoint}", headers)

    async def close(self) -> None:
        await self.client.close()

    async def send(
        self, endpoint: str, body: bytes, *, stream: bool, timeout: float
    ) -> UpstreamResponse:
        prepared = (self._streams if stream else self._plain).get(endpoint)
        if prepared is None:
            accept = "text/event-stream" if stream else "application/json"
            prepared = self._prepare("POST", endpoint, accept)
            (self._streams if stream else self._plain)[endpoint] = prepared
        return await self.client.send(prepared, body, timeout=timeout)

    async def probe(self) -> None:
        resp = await self.client.send(self._probe, None, timeout=PROBE_TIMEOUT)
        try:
            await resp.read()
        finally:
            resp.close()
        if resp.status >= 500 or resp.status == 429:
            raise UpstreamError(f"probe got HTTP {resp.status}")


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
