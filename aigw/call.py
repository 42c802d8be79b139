"""One client request's way through the pipeline, and the ways it can end.

A `Call` holds what the pipeline modules share about one request (the client's request, its
`RequestContext`, the runtime it started on, what it took of the limits, what it may store in
the cache) and does the things every ending needs, once each: settle the limits (tokens, and
money at the price of the upstream model that answered), store the answer in the cache, run the
hooks that see the answer, count the request in the metrics, the usage history and the access
log. `proxy` starts calls, `forward` tries targets for them, `delivery` hands answers
back.

`GatewayView` is what these modules read of the gateway: a small Protocol, so they depend on the
gateway's parts, never on the server that owns them.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from aigw.cache import CachedResponse, ResponseCache
from aigw.dialects import Dialect
from aigw.errors import GatewayError, QuotaExceededError
from aigw.exchange import RequestContext, ResponseInfo, Usage
from aigw.limits import Charge, Limits
from aigw.logutil import RateLimitedLog

if TYPE_CHECKING:
    from aigw.metrics import Metrics
    from aigw.runtime import Runtime
    from aigw.tracing import AttemptSpan, RequestSpan, Tracing

CHAT = "chat"
NATIVE = "native"
TRANSLATED = "translated"

#: Tokens a stream past its reservation tries to reserve more of, largest first: the stream is
#: cut when not even the smallest fits in the tenant's quota.
STREAM_EXTENSION_BLOCKS = (256, 16)
_JSON_CT = "application/json"


class GatewayView(Protocol):
    """What the request pipeline reads of the gateway (`aigw.server.Gateway` is one)."""

    runtime: Runtime
    limits: Limits | None
    cache: ResponseCache | None
    metrics: Metrics | None
    worker_pid: str | None
    started_wall: float
    draining: bool
    #: set when the drain at shutdown reached its deadline: what still runs is being cut
    drain_deadline: asyncio.Event
    #: one line per target and 10 s for requests that end in an upstream failure
    upstream_failures: RateLimitedLog
    #: OpenTelemetry spans (None: tracing is off, and the pipeline checks only this)
    tracing: Tracing | None

    def access_log(self, ctx: RequestContext, request: web.BaseRequest) -> None: ...

    def refresh_gauges(self) -> None: ...


class Call:
    """One request in the pipeline (see the module docstring). `ctx.response_headers` are the
    gateway's own headers for the answer (request id, rate limits, provider, cache)."""

    __slots__ = (
        "answer",
        "attempt",
        "cache",
        "cache_key",
        "charge",
        "counted",
        "ctx",
        "dialect",
        "error",
        "gw",
        "limits",
        "request",
        "route",
        "rt",
        "span",
        "upstream_time",
    )

    def __init__(
        self,
        gw: GatewayView,
        request: web.BaseRequest,
        ctx: RequestContext,
        rt: Runtime,
        limits: Limits,
        dialect: Dialect | None = None,
    ) -> None:
        self.gw = gw
        #: the client's dialect when it is not chat (its answers are rendered in its shape)
        self.dialect = dialect
        self.request = request
        self.ctx = ctx
        self.rt = rt
        self.limits = limits
        self.charge = Charge(ctx)
        self.cache: ResponseCache | None = None
        self.cache_key: bytes | None = None  # None: do not store the answer
        self.counted = False  # in the metrics and the access log already
        #: how the current attempt's answer reaches the client: CHAT (chat to chat), NATIVE
        #: (the client's dialect, as the target answered it), TRANSLATED (chat, rendered in the
        #: client's dialect)
        self.route = CHAT
        #: Seconds spent waiting on upstreams, failed attempts included: the gateway overhead
        #: metric is total time minus this.
        self.upstream_time = 0.0
        #: the request's server span and its current upstream attempt's (tracing on only)
        self.span: RequestSpan | None = None
        self.attempt: AttemptSpan | None = None
        #: what ended the request in an error, and the answer a span captures (capture_content)
        self.error: GatewayError | None = None
        self.answer: bytes | str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return self.ctx.response_headers

    # --- the endings every request shares ------------------------------------------------------

    async def settle(self, usage: Usage | None, *, answered: bool = False) -> None:
        """Replace the request's worst-case charges (quota reservation, money reservation,
        token-rate estimate) by what it really used and cost; exactly once per request.
        `answered`: the client got an answer, so one without usage (some servers omit it)
        costs the worst case, never nothing."""
        charge = self.charge
        if charge.settled:
            return
        charge.settled = True
        ctx, metrics = self.ctx, self.gw.metrics
        charge.usage = usage
        if usage is not None:
            # Priced by the upstream model that answered; an unpriced one costs 0.
            upstream = ctx.response_headers.get("x-aigw-model")
            nanos = self.limits.pricing.cost(upstream, usage)
            charge.cost_nanos = nanos or 0
            if metrics is not None:
                metrics.tokens(
                    ctx.tenant,
                    ctx.model,
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.cached_tokens,
                )
                if nanos is None:
                    metrics.unpriced(upstream or "")
                elif nanos:
                    metrics.cost(ctx.tenant, ctx.model, nanos)
        elif answered:
            usage = Usage(0, 0, charge.estimate)
            reservation = charge.reservation
            held = reservation.nanos if reservation is not None else 0
            charge.cost_nanos = held or self.limits.pricing.estimate(
                ctx.model, charge.prompt_estimate, charge.output_estimate
            )
            if metrics is not None and charge.cost_nanos:
                metrics.cost(ctx.tenant, ctx.model, charge.cost_nanos)
        if charge.limiter is not None or charge.reservation is not None:
            await self.limits.admission.settle(ctx.tenant, charge, usage)
        reservation = charge.reservation
        if reservation is None or not reservation.tokens:
            return
        # Released after the commit: the tenant's account never shows less than it used.
        held = reservation.tokens
        for extension in charge.extensions:
            held += extension.tokens
            await self.limits.quota.release(extension)
        if usage is not None and usage.total_tokens > held and metrics is not None:
            metrics.quota_overrun(ctx.tenant, usage.total_tokens - held)

    async def extend(self) -> int:
        """A stream passed what its reservation covers (an upstream ignoring max_tokens, or a
        request without one): reserve more of the tenant's quota, and of its money budget at
        the worst output price of the model. Returns the tokens added, 0 when either has none
        left (the stream must be cut)."""
        for block in STREAM_EXTENSION_BLOCKS:
            try:
                await self.limits.admission.extend(self.ctx.tenant, self.charge, block)
            except QuotaExceededError:
                continue
            return block
        return 0

    def store(self, body: bytes | None) -> None:
        """Keep a successful, complete answer in the cache (when the request may be stored)."""
        cache, key = self.cache, self.cache_key
        if cache is None or key is None or body is None:
            return
        headers = self.ctx.response_headers
        stored = {"content-type": _JSON_CT}
        for name in ("x-aigw-provider", "x-aigw-model"):
            if name in headers:
                stored[name] = headers[name]
        evicted = cache.put(key, CachedResponse(body=body, usage=self.ctx.usage, headers=stored))
        metrics = self.gw.metrics
        if metrics is not None:
            if evicted:
                metrics.cache_event("eviction", evicted)
            metrics.cache_size(cache.entries, cache.bytes)

    async def observe(self, info: ResponseInfo, *, may_reject: bool) -> None:
        """Run the hooks that see the answer. Before a whole answer goes out they may still
        reject it (`may_reject`); once a stream is out nothing can take it back."""
        try:
            for hook in self.rt.after_hooks:
                await hook.after_response(self.ctx, info)
        except GatewayError:
            if may_reject:
                raise

    def start_attempt(self, provider: str, model: str) -> bytes:
        """A new upstream attempt's span (tracing on): the trace headers to send with it."""
        span = self.span
        if span is None:
            return b""
        attempt = self.attempt = span.attempt(self.rt.config.providers[provider], model)
        return attempt.header_lines()

    def end_attempt(
        self, status: int | None = None, error: GatewayError | str | None = None
    ) -> None:
        """End the current attempt's span (tracing on): one that failed without an answer
        (`status` None, `error`) or with an error status, or a plain answer (`status` only);
        a delivered answer's attempt is ended by the delivery, with its usage."""
        attempt = self.attempt
        if attempt is not None:
            attempt.end(status, error=error)

    def log_upstream_failure(self, err: GatewayError) -> None:
        ctx = self.ctx
        target = ctx.target or "-"
        self.gw.upstream_failures.log(
            target if ctx.target else f"model {ctx.model}",
            "request %s: model %s, target %s: %s %s",
            ctx.request_id,
            ctx.model or "-",
            target,
            err.status,
            err.message,
        )

    def done(
        self,
        status: int,
        upstream_time: float | None = None,
        ttft: float | None = None,
        target: str | None = None,
    ) -> None:
        """Count the finished request in the metrics, the usage history and the access log:
        once, whichever way it ended (answered, refused, failed, abandoned)."""
        self.counted = True
        ctx = self.ctx
        config = self.rt.config
        # A request of another dialect runs as chat/completions: it is counted under the API
        # the client called.
        endpoint = ctx.endpoint
        if ctx.dialect != CHAT and endpoint == "chat/completions":
            endpoint = ctx.dialect
        if ctx.tenant and config.usage.enabled:
            charge = self.charge
            # A model nobody configured (a 404, a refusal before the body) is kept as "-".
            self.limits.history.record(
                ctx.tenant,
                ctx.model if ctx.model in config.models else "-",
                endpoint,
                charge.usage,
                charge.cost_nanos,
                status >= 400,
            )
        metrics = self.gw.metrics
        if metrics is not None:
            metrics.request_done(
                ctx.model,
                ctx.target or "" if target is None else target,
                status,
                time.monotonic() - ctx.started,
                self.upstream_time if upstream_time is None else upstream_time,
                ttft,
                endpoint,
            )
        span = self.span
        if span is not None:
            span.end(
                status,
                tenant=ctx.tenant,
                cache=ctx.cache,
                usage=ctx.usage,
                answer=self.answer,
                error=self.error,
            )
        self.gw.access_log(ctx, self.request)
