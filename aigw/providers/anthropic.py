"""The Anthropic Messages API (api.anthropic.com, or any server that speaks it) over one pooled
keep-alive `HTTPClient` per provider.

It speaks `messages` natively: `send("messages", …)` POSTs `{base_url}/v1/messages` and
`send("messages/count_tokens", …)` `{base_url}/v1/messages/count_tokens` (either with
`?beta=true` when the endpoint names it, as the SDKs' beta namespace does), the body as given
(requests in another dialect are translated by the caller, `aigw.dialects.messages`). It also
takes `chat/completions` (every chat-speaking route of the gateway reaches it): the chat body
becomes a Messages request and the answer reads as chat (`ChatFromMessages`). `base_url`
defaults to `https://api.anthropic.com` and may end in `/v1` or not.

Headers: `x-api-key` is the provider's `api_key` (never the client's key), `anthropic-version`
is the client's when it sent one, else `ANTHROPIC_VERSION`; the client's `anthropic-beta` is
forwarded, with the default forwarded headers (`aigw.headers`) and `forward_headers`. The
answer's `request-id`, `anthropic-ratelimit-*` and `retry-after` reach the client.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Final

from aigw import sse
from aigw.config import ProviderConfig
from aigw.dialects import messages
from aigw.errors import UpstreamError
from aigw.headers import (
    PASSED_RESPONSE_HEADERS,
    PASSED_RESPONSE_PREFIXES,
    TRACE_CONTEXT_HEADERS,
    RequestHeaderFilter,
)
from aigw.jsonutil import dumps, loads
from aigw.providers.base import MAX_BODY, Provider, UpstreamResponse
from aigw.providers.http import HTTPClient, PreparedRequest

# The URL rules (query kept at the end, user:password as Basic auth) and the proxy choice are
# the openai provider's.
from aigw.providers.openai import PROBE_TIMEOUT, _env_proxy, _split_base_url

DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
#: Sent when the client did not say which API version it speaks.
ANTHROPIC_VERSION: Final = "2023-06-01"
#: What this provider sends upstream, relative to `{base_url}/v1/`; `?beta=true` is the query
#: the SDKs' beta namespace adds (Claude Code sends it), kept when the caller passes it on.
ENDPOINTS: Final = (
    "messages",
    "messages/count_tokens",
    "messages?beta=true",
    "messages/count_tokens?beta=true",
)
#: Client request headers an Anthropic upstream needs, besides the default forwarded ones.
ANTHROPIC_REQUEST_HEADERS: Final = ("anthropic-version", "anthropic-beta")

_VERSION_NAME: Final = b"anthropic-version"


class AnthropicProvider(Provider):
    def __init__(self, config: ProviderConfig, *, max_body: int = MAX_BODY) -> None:
        super().__init__(config.name, max_body=max_body)
        self.config = config
        base_url, self._query, basic = _split_base_url(config.base_url or DEFAULT_BASE_URL)
        if base_url.endswith("/v1"):
            base_url = base_url[: -len("/v1")]
        self.base_url = base_url
        headers = {"Content-Type": "application/json"}
        if basic is not None:
            headers["Authorization"] = basic  # a proxy in front that wants Basic auth
        headers.update(config.headers)
        if config.api_key:
            headers["x-api-key"] = config.api_key.reveal()
        own = {name.lower() for name in headers}
        # The configured anthropic-version wins over the client's, as any configured header.
        self._default_version = (
            b""
            if "anthropic-version" in own
            else b"anthropic-version: %s\r\n" % ANTHROPIC_VERSION.encode()
        )
        self._headers = headers
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
        self._forward = RequestHeaderFilter(
            (*config.forward_headers, *ANTHROPIC_REQUEST_HEADERS), own=headers
        )
        self._traced = self._forward.without(TRACE_CONTEXT_HEADERS)
        # Request heads encoded once per endpoint: a send only adds its header lines and body.
        self._plain = {e: self._prepare("POST", e, "application/json") for e in ENDPOINTS}
        self._streams = {e: self._prepare("POST", e, "text/event-stream") for e in ENDPOINTS}
        self._probe = self._prepare("GET", "models", "application/json")

    def _prepare(self, method: str, endpoint: str, accept: str) -> PreparedRequest:
        headers = {"Accept": accept, **self._headers}
        if method == "GET":
            headers.pop("Content-Type", None)
        path, _, query = endpoint.partition("?")
        query = self._query + ("&" if self._query else "?") + query if query else self._query
        url = f"{self.base_url}/v1/{path}{query}"
        return self.client.prepare(method, url, headers)

    async def start(self) -> None:
        await self.client.start()  # the TLS context, off the event loop

    async def close(self) -> None:
        await self.client.close()

    def _extra_headers(
        self, client_headers: Sequence[tuple[bytes, bytes]], trace_headers: bytes = b""
    ) -> bytes:
        if trace_headers:
            extra = self._traced.lines(client_headers) + trace_headers
        else:
            extra = self._forward.lines(client_headers) if client_headers else b""
        if self._default_version and not any(
            name.lower() == _VERSION_NAME for name, _ in client_headers
        ):
            extra += self._default_version
        return extra

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
        if endpoint == "chat/completions":
            return await self._send_chat(body, stream, timeout, client_headers, trace_headers)
        prepared = (self._streams if stream else self._plain).get(endpoint)
        if prepared is None:
            # The proxy sends only what `speaks()` lists; anything else is a gateway bug.
            raise UpstreamError(
                f"Provider '{self.name}' (type anthropic) speaks the Messages API only, "
                f"not {endpoint}"
            )
        extra = self._extra_headers(client_headers, trace_headers)
        return await self.client.send(prepared, body, timeout=timeout, extra_headers=extra)

    async def _send_chat(
        self,
        body: bytes,
        stream: bool,
        timeout: float,
        client_headers: Sequence[tuple[bytes, bytes]],
        trace_headers: bytes,
    ) -> UpstreamResponse:
        """A chat completions request, as a Messages call whose answer reads as chat: the
        gateway sends chat to every target that can take it, and this one translates."""
        try:
            chat = loads(body)
        except ValueError as exc:
            raise UpstreamError(f"Provider '{self.name}': the chat body is not JSON") from exc
        request = messages.request_from_chat(chat)  # InvalidRequestError names a chat field
        prepared = (self._streams if stream else self._plain)["messages"]
        extra = self._extra_headers(client_headers, trace_headers)
        resp = await self.client.send(
            prepared, dumps(request), timeout=timeout, extra_headers=extra
        )
        return ChatFromMessages(resp)

    async def probe(self) -> None:
        """`GET /v1/models`: free, and it checks the key as well as the reachability."""
        resp = await self.client.send(
            self._probe, None, timeout=PROBE_TIMEOUT, extra_headers=self._default_version
        )
        try:
            await resp.read()
        finally:
            resp.close()
        if resp.status >= 500 or resp.status == 429:
            raise UpstreamError(f"probe got HTTP {resp.status}")


class ChatFromMessages(UpstreamResponse):
    """A Messages answer read as a chat completions one: a `message` becomes a
    `chat.completion`, its event stream `chat.completion.chunk` events ending in `[DONE]` (the
    usage on the last chunk, cache reads and writes included), an Anthropic error body
    OpenAI's error JSON."""

    __slots__ = ("_resp",)

    def __init__(self, resp: UpstreamResponse) -> None:
        headers = dict(resp.headers)
        if resp.status < 400 and "text/event-stream" not in headers.get("content-type", ""):
            headers["content-type"] = "application/json"
        super().__init__(resp.status, headers)
        self._resp = resp

    async def read(self) -> bytes:
        raw = await self._resp.read()
        if self.status >= 400:
            return messages.error_to_chat(raw) or raw
        try:
            message = loads(raw)
        except ValueError:
            return raw  # not JSON: the proxy says so, as for any upstream
        if not isinstance(message, dict):
            return raw
        return dumps(messages.response_to_chat(message))

    async def iter_chunks(self) -> AsyncGenerator[bytes, None]:
        framer = sse.Framer()
        translate = messages.StreamToChat()
        chunks = self._resp.iter_chunks()
        try:
            async for data in chunks:
                out = b""
                for frame in sse.frames(framer.feed(data)):
                    for chunk in translate.feed_frame(frame):
                        out += sse.encode(dumps(chunk))
                if out:
                    yield out
            out = b""
            for frame in sse.frames(framer.flush()):
                for chunk in translate.feed_frame(frame):
                    out += sse.encode(dumps(chunk))
            yield out + sse.DONE
        finally:
            await chunks.aclose()

    def close(self) -> None:
        self._resp.close()
