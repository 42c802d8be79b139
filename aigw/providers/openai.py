"""Any OpenAI-compatible upstream (OpenAI, Azure-style proxies, Ollama, vLLM, LM Studio, Groq,
OpenRouter…) over one pooled keep-alive `HTTPClient` per provider.

`base_url` is the prefix the endpoint paths are appended to:

- a query string stays at the end: `https://x.openai.azure.com/openai/deployments/d?api-version=1`
  sends to `…/deployments/d/chat/completions?api-version=1` (a fragment is dropped);
- `user:password@` in it becomes `Authorization: Basic …` (what curl and browsers do), and never
  goes on the wire or into messages otherwise. An explicit `Authorization` (`api_key`, or one in
  `headers`) takes precedence; the URL's credentials are then ignored with a warning at start-up.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from aigw.config import ProviderConfig
from aigw.errors import InvalidRequestError, UpstreamError
from aigw.headers import (
    PASSED_RESPONSE_HEADERS,
    PASSED_RESPONSE_PREFIXES,
    TRACE_CONTEXT_HEADERS,
    RequestHeaderFilter,
)
from aigw.providers.base import MAX_BODY, Provider, StreamedBody, UpstreamResponse
from aigw.providers.http import HTTPClient, PreparedRequest

PROBE_TIMEOUT = 10.0
#: Bytes that may not appear in a header value (HTAB aside).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

log = logging.getLogger("aigw")


class OpenAIProvider(Provider):
    def __init__(self, config: ProviderConfig, *, max_body: int = MAX_BODY) -> None:
        super().__init__(config.name, max_body=max_body)
        self.config = config
        self.base_url, self._query, basic = _split_base_url(config.base_url)
        headers = {"Content-Type": "application/json"}
        auth = basic
        for name, value in config.headers.items():
            if name.lower() == "authorization":
                auth = value  # one Authorization header: the configured one wins over the URL's
            else:
                headers[name] = value
        if config.api_key:
            auth = f"Bearer {config.api_key.reveal()}"
        if auth is not None:
            headers["Authorization"] = auth
        if basic is not None and auth is not basic:
            log.warning(
                "provider %s: the user:password in base_url is ignored: "
                "api_key or headers set Authorization",
                config.name,
            )
        self._headers = headers
        # Proxies from the environment, resolved once (never per request).
        self.client = HTTPClient(
            label=config.name,
            max_connections=config.max_connections,
            connect_timeout=config.connect_timeout,
            read_timeout=config.timeout,
            ca_file=config.ca_file,
            proxy=_env_proxy(self.base_url),
            keep_headers=PASSED_RESPONSE_HEADERS,
            keep_prefixes=PASSED_RESPONSE_PREFIXES,
            max_body=max_body,
        )
        self._forward = RequestHeaderFilter(config.forward_headers, own=headers)
        self._traced = self._forward.without(TRACE_CONTEXT_HEADERS)
        # Request heads encoded once per endpoint: a send only adds Content-Length and the body.
        self._plain: dict[str, PreparedRequest] = {}
        self._streams: dict[str, PreparedRequest] = {}
        self._forwards: dict[str, PreparedRequest] = {}  # Content-Type comes per request
        self._probe = self._prepare("GET", "models", "application/json")

    def _prepare(
        self, method: str, endpoint: str, accept: str, *, content_type: bool = True
    ) -> PreparedRequest:
        headers = {"Accept": accept, **self._headers}
        if method == "GET" or not content_type:
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        return self.client.prepare(method, f"{self.base_url}/{endpoint}{self._query}", headers)

    async def start(self) -> None:
        await self.client.start()  # the TLS context, off the event loop

    async def close(self) -> None:
        await self.client.close()

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
        prepared = (self._streams if stream else self._plain).get(endpoint)
        if prepared is None:
            accept = "text/event-stream" if stream else "application/json"
            prepared = self._prepare("POST", endpoint, accept)
            (self._streams if stream else self._plain)[endpoint] = prepared
        if trace_headers:
            extra = self._traced.lines(client_headers) + trace_headers
        else:
            extra = self._forward.lines(client_headers) if client_headers else b""
        return await self.client.send(prepared, body, timeout=timeout, extra_headers=extra)

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
        prepared = self._forwards.get(endpoint)
        if prepared is None:
            # Any answer type: JSON, text, or audio bytes (`Accept: */*`, as curl sends).
            prepared = self._prepare("POST", endpoint, "*/*", content_type=False)
            self._forwards[endpoint] = prepared
        if trace_headers:
            extra = self._traced.lines(client_headers) + trace_headers
        else:
            extra = self._forward.lines(client_headers) if client_headers else b""
        extra += b"Content-Type: " + _header_value(content_type) + b"\r\n"
        if isinstance(body, bytes):
            return await self.client.send(prepared, body, timeout=timeout, extra_headers=extra)
        return await self.client.send_streamed(prepared, body, timeout=timeout, extra_headers=extra)

    async def probe(self) -> None:
        resp = await self.client.send(self._probe, None, timeout=PROBE_TIMEOUT)
        try:
            await resp.read()
        finally:
            resp.close()
        if resp.status >= 500 or resp.status == 429:
            raise UpstreamError(f"probe got HTTP {resp.status}")


def _header_value(value: str) -> bytes:
    """The client's header value as it came on the wire (aiohttp decodes header bytes as UTF-8
    with surrogateescape); a control character would end the header line: refused."""
    raw = value.encode("utf-8", "surrogateescape")
    if _CONTROL.search(raw):
        raise InvalidRequestError("The Content-Type header is invalid.", param="Content-Type")
    return raw


def _split_base_url(base_url: str) -> tuple[str, str, str | None]:
    """(base URL without credentials, query or fragment and without a trailing slash,
    "?query" or "", the `Authorization: Basic` value of its user:password or None)."""
    parts = urlsplit(base_url)
    netloc = parts.netloc
    basic = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        raw = f"{unquote(user)}:{unquote(password)}".encode()
        basic = "Basic " + base64.b64encode(raw).decode("ascii")
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return url, ("?" + parts.query if parts.query else ""), basic


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
