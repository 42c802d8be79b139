"""The hook interface: an ordered pipeline around every proxied request.

- `before_request(ctx)` runs before quota, cache and upstream. It may change `ctx.body` (the
  changed body is what goes upstream) or reject the request by raising a `GatewayError`.
- `after_response(ctx, response)` sees the answer and its usage. For non-streamed answers it runs
  before the client gets the answer and may still reject it by raising; for streams it runs once
  the stream ended (the client already has the bytes).
- `on_error(ctx, error)` sees every error the client gets.

Hooks are plain classes; `options` come from the YAML (`{name: {option: value}}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_json(cls, data: object) -> Usage | None:
        """Read an OpenAI `usage` object; None when absent or malformed."""
        if not isinstance(data, dict):
            return None
        try:
            prompt = int(data.get("prompt_tokens") or 0)
            completion = int(data.get("completion_tokens") or 0)
            total = int(data.get("total_tokens") or (prompt + completion))
        except (TypeError, ValueError, OverflowError):
            return None
        if prompt < 0 or completion < 0 or total < 0:
            return None  # a negative count would credit the tenant's quota
        return cls(prompt, completion, total)


@dataclass(slots=True)
class RequestContext:
    """One request as it travels through the gateway."""

    request_id: str
    tenant: str
    endpoint: str  # "chat/completions" | "completions" | "embeddings"
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
    extra: dict[str, Any] = field(default_factory=dict)  # private space for hooks


@dataclass(slots=True)
class ResponseInfo:
    status: int
    body: bytes | None = None  # the whole answer, for non-streamed responses
    text: str | None = None  # streamed answer text, only when a hook set `wants_stream_text`
    usage: Usage | None = None


class Hook:
    """Base class of every hook; override what you need."""

    #: Set True when after_response needs the text of streamed answers (costs hot-path work).
    wants_stream_text: ClassVar[bool] = False
    #: False when before_request never changes ctx.body: the gateway may then forward the
    #: client's bytes unchanged instead of serialising the body again.
    modifies_request: ClassVar[bool] = True
    #: True when after_response only records (never rejects): such hooks see an answer after
    #: every hook that may still reject it, so they record what the client really got.
    observes_only: ClassVar[bool] = False
    #: True when before_request's outcome depends only on the tenant and the request body: the
    #: same bytes always pass (and become the same body) or fail the same way. When every hook
    #: says so, a cached answer is served for bytes seen before without parsing them or running
    #: the hooks again (until a reload).
    deterministic: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = options

    async def before_request(self, ctx: RequestContext) -> None:
        return None

    async def after_response(self, ctx: RequestContext, response: ResponseInfo) -> None:
        return None

    async def on_error(self, ctx: RequestContext, error: Exception) -> None:
        return None

    async def close(self) -> None:
        """Release files and tasks at shutdown."""
        return None
