"""Which HTTP headers cross the gateway, each way: one home for the rules the config validator,
the providers and the proxy all apply.

Client -> upstream: a short allow-list of headers the SDKs and routers send for the upstream's
sake (organisation and project selectors, beta flags, the client's identity), plus whatever a
provider lists in `providers.NAME.forward_headers`. Credentials, the gateway's own `X-Aigw-*`
headers, cookies and hop-by-hop headers never cross, whatever the config says: the upstream gets
the gateway's credentials, never the tenant's.

Upstream -> client: the headers clients read (request id, processing time, API version, the
upstream's rate-limit state, retry advice) pass through; the upstream's request id is renamed
`x-upstream-request-id`, because `x-request-id` is the gateway's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: Client request headers forwarded to OpenAI-compatible upstreams by default (lower case).
FORWARDED_REQUEST_HEADERS: frozenset[str] = frozenset(
    {
        "openai-organization",
        "openai-project",
        "openai-beta",
        "user-agent",
        "http-referer",  # OpenRouter's app attribution
        "x-title",
    }
)
#: Prefixes of client request headers forwarded by default (the SDKs' platform telemetry).
FORWARDED_REQUEST_PREFIXES: tuple[str, ...] = ("x-stainless-",)

#: Never forwarded to an upstream, even when listed in `forward_headers`.
NEVER_FORWARDED: frozenset[str] = frozenset(
    {
        # credentials: the upstream gets the provider's own, never the tenant's
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "set-cookie",
        # hop-by-hop (RFC 9110 §7.6.1) and framing: they describe this connection only
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "accept",
        "accept-encoding",
        "expect",
    }
)
NEVER_FORWARDED_PREFIXES: tuple[str, ...] = ("x-aigw-",)

#: Upstream response headers passed to the client (lower case), besides the prefixes below.
PASSED_RESPONSE_HEADERS: tuple[str, ...] = (
    "content-type",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "x-request-id",  # renamed x-upstream-request-id
    "request-id",  # Anthropic's spelling, renamed the same way
    "openai-processing-ms",
    "openai-version",
    "openai-organization",
    "openai-project",
)
#: Prefixes of upstream response headers passed to the client: the rate-limit state, in OpenAI's
#: and in Anthropic's spelling.
PASSED_RESPONSE_PREFIXES: tuple[str, ...] = ("x-ratelimit-", "anthropic-ratelimit-")
UPSTREAM_REQUEST_ID = "x-upstream-request-id"
#: Upstream headers that tell a client when to try again.
RETRY_HEADERS: tuple[str, ...] = ("retry-after", "retry-after-ms")


def never_forwarded(name: str) -> bool:
    """Whether a request header may never reach an upstream (config validation uses this)."""
    lower = name.lower()
    return lower in NEVER_FORWARDED or lower.startswith(NEVER_FORWARDED_PREFIXES)


#: The W3C trace context: when tracing is on, the gateway's own attempt span is the upstream's
#: parent, so a client's values are never forwarded beside it.
TRACE_CONTEXT_HEADERS = ("traceparent", "tracestate")


class RequestHeaderFilter:
    """Picks the client's request headers one provider forwards, as ready-to-send header lines.

    Built once per provider; `lines()` runs per upstream attempt over the raw header pairs the
    HTTP parser kept (bytes, no decoding). Headers the provider sets itself (`headers:` in its
    config) are not forwarded: the configured value wins."""

    __slots__ = ("_names", "_prefixes")

    def __init__(self, extra: Iterable[str] = (), own: Iterable[str] = ()) -> None:
        own_lower = {h.lower() for h in own}
        names = (FORWARDED_REQUEST_HEADERS | {h.lower() for h in extra}) - own_lower
        self._names = frozenset(n.encode("latin-1") for n in names if not never_forwarded(n))
        self._prefixes = tuple(p.encode("latin-1") for p in FORWARDED_REQUEST_PREFIXES)

    def without(self, names: Iterable[str]) -> RequestHeaderFilter:
        """This filter, never forwarding `names` (the trace context when the gateway sends its
        own)."""
        out = RequestHeaderFilter.__new__(RequestHeaderFilter)
        out._names = self._names - {n.lower().encode("latin-1") for n in names}
        out._prefixes = self._prefixes
        return out

    def lines(self, raw: Iterable[tuple[bytes, bytes]]) -> bytes:
        names, prefixes = self._names, self._prefixes
        out = b""
        for name, value in raw:
            lower = name.lower()
            if lower in names or lower.startswith(prefixes):
                out += name + b": " + value + b"\r\n"
        return out


def client_headers(upstream: Mapping[str, str], own: Mapping[str, str]) -> dict[str, str]:
    """The response headers a client gets: the upstream's (`upstream`, lower-case names as the
    transport kept them; the request id renamed) under the gateway's own (`own`), which win (so
    aigw's own `x-ratelimit-*` replace the upstream's when an aigw limit applies)."""
    merged: dict[str, str] = {}
    for name, value in upstream.items():
        if name == "content-type":
            merged["Content-Type"] = value
        elif name == "x-request-id" or name == "request-id":
            merged[UPSTREAM_REQUEST_ID] = value
        else:
            merged[name] = value
    merged.update(own)
    return merged
