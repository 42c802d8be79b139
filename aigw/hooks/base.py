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

from typing import Any, ClassVar

# The request's own nouns live in `aigw.exchange`; re-exported here, where hooks import them.
from aigw.exchange import RequestContext, ResponseInfo, Usage

__all__ = ["Hook", "RequestContext", "ResponseInfo", "Usage"]


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
