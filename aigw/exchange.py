"""The request's own nouns: what one exchange between a client and an upstream is made of.

`RequestContext` travels through the pipeline (hooks see it), `Usage` is what an answer cost in
tokens (every dialect's usage fields map onto it), `ResponseInfo` is what `after_response` hooks
see of the answer. Plain dataclasses, no I/O: every layer may import them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one answer, in the canonical (OpenAI chat) accounting: `prompt_tokens`
    includes the cached and cache-write tokens, `completion_tokens` includes the reasoning
    tokens, `total_tokens` is their sum unless the upstream said otherwise."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    #: prompt tokens read from the provider's prompt cache (billed at the cached price)
    cached_tokens: int = 0
    #: prompt tokens written to the provider's prompt cache (Anthropic's cache creation)
    cache_write_tokens: int = 0
    #: completion tokens spent reasoning (billed as output, never shown)
    reasoning_tokens: int = 0

    @classmethod
    def from_json(cls, data: object) -> Usage | None:
        """Read an OpenAI chat/completions `usage` object; None when absent or malformed."""
        if not isinstance(data, dict):
            return None
        try:
            prompt = int(data.get("prompt_tokens") or 0)
            completion = int(data.get("completion_tokens") or 0)
            total = int(data.get("total_tokens") or (prompt + completion))
            cached = written = reasoning = 0
            details = data.get("prompt_tokens_details")
            if isinstance(details, dict):
                cached = int(details.get("cached_tokens") or 0)
                written = int(details.get("cache_write_tokens") or 0)
            details = data.get("completion_tokens_details")
            if isinstance(details, dict):
                reasoning = int(details.get("reasoning_tokens") or 0)
        except (TypeError, ValueError, OverflowError):
            return None
        if min(prompt, completion, total, cached, written, reasoning) < 0:
            return None  # a negative count would credit the tenant's quota
        return cls(prompt, completion, total, cached, written, reasoning)


@dataclass(slots=True)
class RequestContext:
    """One request as it travels through the gateway."""

    request_id: str
    tenant: str
    #: the API of `body`: "chat/completions", "completions", "embeddings" (a Responses or
    #: Messages request is translated to chat/completions before the hooks see it), or a
    #: pass-through endpoint ("images/generations", "audio/speech", ...)
    endpoint: str
    body: dict[str, Any]
    started: float  # monotonic seconds
    model: str = ""  # the gateway model the client asked for
    stream: bool = False
    client_wants_usage: bool = False
    provider: str | None = None  # provider that answered
    target: str | None = None  # "provider/upstream-model" that answered
    status: int = 0
    usage: Usage | None = None
    cache: str | None = None  # "hit" | "miss" | None when the cache is off
    #: the answering upstream's own request id (to quote to the provider), when it sent one
    upstream_request_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # the client's request headers
    #: the gateway's own headers for the answer (request id, rate limits, provider, cache);
    #: the upstream's are merged under them when the answer goes out
    response_headers: dict[str, str] = field(default_factory=dict)
    #: the API the client speaks: "chat", "responses" or "messages"
    dialect: str = "chat"
    #: the client's own body when it is not chat (`body` is then its canonical chat form)
    client_body: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # private space for hooks


@dataclass(slots=True)
class ResponseInfo:
    status: int
    body: bytes | None = None  # the whole answer, for non-streamed responses
    text: str | None = None  # streamed answer text, only when a hook set `wants_stream_text`
    usage: Usage | None = None
