"""The request pipeline: auth → rate limit → parse + hooks → quota → cache → balancer → upstream.

Handlers are thin: each turns an aiohttp request into a `RequestContext` and runs the pipeline;
every failure is a `GatewayError`, turned into OpenAI error JSON in one place (`_error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import HttpVersion11, web

from aigw import jsonutil
from aigw.cache import (
    Alias,
    CacheDirectives,
    CachedResponse,
    ResponseCache,
    assemble_stream,
    bytes_key,
    cache_key,
    parse_cache_control,
    replay_as_sse,
)
from aigw.config import AuthKey
from aigw.errors import (
    AuthenticationError,
    ContentFilteredError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    NoHealthyTargetError,
    NotFoundError,
    QuotaExceededError,
    RateLimitError,
    RequestTooLargeError,
    UpstreamBusyError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    error_event,
)
from aigw.hooks.base import RequestContext, ResponseInfo, Usage
from aigw.ratelimit import headers as rate_headers
from aigw.redact import redact
from aigw.streaming import StreamTap, usage_from_body
from aigw.tenants import is_valid_tenant

if TYPE_CHECKING:
    from aigw.balancer import Lease, TargetState
    from aigw.metrics import RejectionReason
    from aigw.providers.base import UpstreamResponse
    from aigw.quota import Reservation
    from aigw.ratelimit import RateDecision, RateLimiter
    from aigw.server import Gateway, Runtime

log = logging.getLogger("aigw.proxy")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

_JSON_CT = "application/json"
_MODEL_PREFIX = "/v1/models/"
_RETRY_HEADERS = ("retry-after", "retry-after-ms")
#: Status recorded for a request whose client went away first (nginx's convention).
CLIENT_CLOSED = 499
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class Authenticator:
    """Bearer key → tenant. Keys are held only as SHA-256 digests.

    Comparison is constant-time in the sense that matters: the presented key is hashed before
    the lookup, so lookup timing depends only on the digest of the caller's own input and never
    on how many characters of a real key they guessed."""

    __slots__ = ("_by_digest",)

    def __init__(self, keys: Collection[AuthKey]) -> None:
        self._by_digest = {k.digest(): k.tenant for k in keys}

    @property
    def laptop_mode(self) -> bool:
        return not self._by_digest

    def tenant(self, headers: Mapping[str, str]) -> str:
        if not self._by_digest:
            tenant = headers.get("X-Aigw-Tenant") or "default"
            if not is_valid_tenant(tenant):
                raise InvalidRequestError(
                    "X-Aigw-Tenant must be 1-64 characters of letters, digits, '.', '_' or '-'",
                    param="X-Aigw-Tenant",
                )
            return tenant
        auth = headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        found = self._by_digest.get(hashlib.sha256(token.encode()).digest())
        if found is None:
            raise AuthenticationError("Incorrect API key provided.")
        return found


class Proxy:
    """aiohttp handlers for the OpenAI-compatible API."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

        # Exact paths → (method, handler): one dict lookup per request instead of aiohttp's
        # router, middleware chain and Application (bench/README.md, "Low-level server").
        # The proxied endpoints go straight to the pipeline: one coroutine less per request.
        self.endpoints = {
            "/v1/chat/completions": "chat/completions",
            "/v1/completions": "completions",
            "/v1/embeddings": "embeddings",
        }
        self.routes: dict[str, tuple[str, Handler]] = {
            "/v1/models": ("GET", self.list_models),
            "/healthz": ("GET", self.healthz),
            "/metrics": ("GET", self.metrics),
        }

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The low-level server's one handler: route by exact path, then method. Routes match
        the path as sent (`/v1/chat%2Fcompletions` is not `/v1/chat/completions`)."""
        path, method = request.rel_url.raw_path, request.method
        endpoint = self.endpoints.get(path)
        if endpoint is not None:
            if method != "POST":
                return _not_allowed(method, path, "POST")
            if "Expect" in request.headers:
                refused = await _expect(request)
                if refused is not None:
                    return refused
            return await self._proxy(request, endpoint)
        route = self.routes.get(path)
        if route is None:
            if path.startswith(_MODEL_PREFIX) and len(path) > len(_MODEL_PREFIX):
                route = ("GET", self.get_model)
            else:
                return not_found(request)
        allowed, handler = route
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            return _not_allowed(method, path, allowed)
        if "Expect" in request.headers:
            refused = await _expect(request)
            if refused is not None:
                return refused
        return await handler(request)

    # --- handlers ----------------------------------------------------------------------------

    async def list_models(self, request: web.BaseRequest) -> web.Response:
        created = int(self.gw.started_wall)
        return self._model_info(
            request,
            lambda rt: {
                "object": "list",
                "data": [_model_object(name, created) for name in rt.config.models],
            },
        )

    async def get_model(self, request: web.BaseRequest) -> web.Response:
        name = request.path[len(_MODEL_PREFIX) :]

        def one(rt: Runtime) -> dict[str, Any]:
            if name not in rt.config.models:
                raise ModelNotFoundError(name)
            return _model_object(name, int(self.gw.started_wall))

        return self._model_info(request, one)

    def _model_info(
        self, request: web.BaseRequest, build: Callable[[Runtime], dict[str, Any]]
    ) -> web.Response:
        rt = self.gw.runtime
        ctx = RequestContext(_request_id(), "", "models", {}, time.monotonic())
        try:
            ctx.tenant = rt.auth.tenant(request.headers)
            response = _json(build(rt), ctx.request_id)
        except GatewayError as err:
            response = _error(err, ctx.request_id)
        ctx.status = response.status
        self.gw.access_log(ctx, request)
        return response

    async def healthz(self, request: web.BaseRequest) -> web.Response:
        status = "draining" if self.gw.draining else "ok"
        return web.json_response({"status": status}, status=503 if self.gw.draining else 200)

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        if self.gw.metrics is None or not self.gw.metrics.enabled:
            return _error(_not_found("metrics are disabled"), _request_id())
        self.gw.refresh_gauges()
        body, content_type = self.gw.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    # --- the pipeline --------------------------------------------------------------------------

    async def _proxy(self, request: web.BaseRequest, endpoint: str) -> web.StreamResponse:
        gw = self.gw
        rt = gw.runtime
        rid = _request_id()
        ctx = RequestContext(rid, "", endpoint, {}, time.monotonic(), headers=request.headers)
        headers: dict[str, str] = {"x-request-id": rid}
        if gw.worker_pid is not None:
            headers["x-aigw-worker"] = gw.worker_pid
        charge = Charge()
        metrics = gw.metrics
        if metrics is not None:
            metrics.in_flight(1)
        try:
            ctx.tenant = rt.auth.tenant(request.headers)
            admission = gw.admission
            req_decision = await admission.take_request(ctx.tenant)
            if req_decision.limit:
                headers.update(rate_headers(req_decision))
            raw = await _read_body(request, rt.config.server.max_body_size)
            cache = gw.cache
            if cache is not None:
                directives = parse_cache_control(request.headers.get("Cache-Control"))
                raw_key = bytes_key(ctx.tenant, endpoint, raw) if rt.cache_by_bytes else None
                if raw_key is not None and not directives.no_cache:
                    # Bytes answered before: no parse, hooks, token estimate or canonical key.
                    found = cache.get_by_bytes(raw_key, rt.generation, directives.max_age)
                    if found is not None:
                        entry, alias = found
                        ctx.model, ctx.stream = alias.model, alias.stream
                        ctx.client_wants_usage = alias.wants_usage
                        if rt.after_hooks:
                            ctx.body = _parse_body(raw)
                        return await self._serve_cached(
                            request, ctx, rt, entry, headers, charge, req_decision
                        )
            ctx.body = _parse_body(raw)
            model = ctx.body.get("model")
            ctx.model = model if isinstance(model, str) else ""
            for hook in rt.hooks:
                await hook.before_request(ctx)
            body = ctx.body
            model = body.get("model")
            ctx.model = model if isinstance(model, str) else ctx.model
            # Embeddings have no streaming form: a stray `stream` is forwarded, never obeyed.
            ctx.stream = body.get("stream") is True and endpoint != "embeddings"
            if ctx.stream:
                opts = body.get("stream_options")
                ctx.client_wants_usage = (
                    isinstance(opts, dict) and opts.get("include_usage") is True
                )
            if cache is not None:
                hit = self._cache_lookup(ctx, cache, charge, directives, raw_key, rt)
                if hit is not None:
                    return await self._serve_cached(
                        request, ctx, rt, hit, headers, charge, req_decision
                    )
                ctx.cache = headers["x-aigw-cache"] = "miss"
            quota = gw.quota
            if quota is not None:
                charge.estimate = quota.estimate_tokens(endpoint, body)
            await admission.admit(ctx.tenant, charge, req_decision, headers)
            return await self._forward(request, ctx, rt, raw, headers, charge)
        except GatewayError as err:
            return await self._fail(request, ctx, rt, charge, headers, err)
        except asyncio.CancelledError:
            # The client went away before an answer started: give back what was reserved and
            # count the request (a stream abandoned midway was already counted).
            await self._settle(ctx, charge, None)
            if ctx.status != CLIENT_CLOSED:
                ctx.status = CLIENT_CLOSED
                if metrics is not None:
                    metrics.request_done(
                        ctx.model,
                        ctx.target or "",
                        CLIENT_CLOSED,
                        time.monotonic() - ctx.started,
                        charge.upstream_time,
                        None,
                    )
                gw.access_log(ctx, request)
            raise
        except Exception:
            # A bug (ours or a user hook's) must still end as OpenAI error JSON with every
            # charge settled, never as aiohttp's plain-text 500 with a reservation held.
            log.exception("request %s failed", rid)
            internal = GatewayError("The gateway failed to handle this request.")
            return await self._fail(request, ctx, rt, charge, headers, internal)
        finally:
            if metrics is not None:
                metrics.in_flight(-1)

    async def _fail(
        self,
        request: web.BaseRequest,
        ctx: RequestContext,
        rt: Runtime,
        charge: Charge,
        headers: dict[str, str],
        err: GatewayError,
    ) -> web.Response:
        """The one way a request ends in an error response."""
        await self._settle(ctx, charge, None)
        ctx.status = err.status
        metrics = self.gw.metrics
        if metrics is not None:
            reason = _rejection_reason(err)
            if reason is not None:
                metrics.rejected(reason)
            metrics.request_done(
                ctx.model,
                ctx.target or "",
                err.status,
                time.monotonic() - ctx.started,
                charge.upstream_time,
                None,
            )
        await _run_on_error(rt, ctx, err)
        err.headers = {**headers, **err.headers}
        self.gw.access_log(ctx, request)
        return _error(err, ctx.request_id)

    # --- cache -----------------------------------------------------------------------------------

    def _cache_lookup(
        self,
        ctx: RequestContext,
        cache: ResponseCache,
        charge: Charge,
        directives: CacheDirectives,
        raw_key: tuple[str, str, bytes] | None,
        rt: Runtime,
    ) -> CachedResponse | None:
        key = cache_key(ctx.tenant, ctx.endpoint, ctx.body)
        if key is None:
            return None
        charge.cache = cache
        charge.cache_key = None if directives.no_store else key
        if raw_key is not None:  # the runtime's hooks are all deterministic
            alias = Alias(key, ctx.model, ctx.stream, ctx.client_wants_usage, rt.generation)
            cache.learn(raw_key, alias)
        hit = None if directives.no_cache else cache.get(key, directives.max_age)
        metrics = self.gw.metrics
        if metrics is not None and hit is None:
            metrics.cache_event("miss")
        return hit

    async def _serve_cached(
        self,
        request: web.BaseRequest,
        ctx: RequestContext,
        rt: Runtime,
        hit: CachedResponse,
        headers: dict[str, str],
        charge: Charge,
        requests: RateDecision,
    ) -> web.StreamResponse:
        """Replay a stored answer: no upstream call, zero quota tokens. The limits still apply
        (quota before cache, DESIGN §1): a tenant with no quota or token budget left is refused
        even a cached answer, so one token is held while it is served and given back."""
        charge.cache_key = None  # nothing to store again
        charge.estimate = 1
        await self.gw.admission.admit(ctx.tenant, charge, requests, headers)
        ctx.cache = "hit"
        ctx.status = 200
        headers.update(hit.headers)
        headers["x-aigw-cache"] = "hit"
        ctx.provider = hit.headers.get("x-aigw-provider")
        try:
            if rt.after_hooks:
                info = ResponseInfo(200, body=hit.body, usage=hit.usage)
                for hook in rt.after_hooks:
                    await hook.after_response(ctx, info)
        finally:
            await self._settle(ctx, charge, None)
        metrics = self.gw.metrics
        if metrics is not None:
            metrics.cache_event("hit")
            metrics.request_done(ctx.model, "cache", 200, time.monotonic() - ctx.started, 0.0, None)
        self.gw.access_log(ctx, request)
        if not ctx.stream:
            return web.Response(status=200, body=hit.body, headers=headers)
        return await _replay(request, ctx, hit.body, headers)

    def _cache_store(
        self, ctx: RequestContext, charge: Charge, body: bytes | None, headers: dict[str, str]
    ) -> None:
        cache, key = charge.cache, charge.cache_key
        if cache is None or key is None or body is None:
            return
        stored = {"content-type": _JSON_CT}
        for name in ("x-aigw-provider", "x-aigw-model"):
            if name in headers:
                stored[name] = headers[name]
        evicted = cache.put(key, CachedResponse(body=body, usage=ctx.usage, headers=stored))
        metrics = self.gw.metrics
        if metrics is not None:
            if evicted:
                metrics.cache_event("eviction", evicted)
            metrics.cache_size(cache.entries, cache.bytes)

    # --- upstream --------------------------------------------------------------------------------

    async def _forward(
        self,
        request: web.BaseRequest,
        ctx: RequestContext,
        rt: Runtime,
        raw: bytes,
        headers: dict[str, str],
        charge: Charge,
    ) -> web.StreamResponse:
        """Try targets (failover before the first byte), then deliver the answer."""
        deadline = ctx.started + rt.config.server.request_timeout
        rewrite = rt.hooks_rewrite
        balancer = rt.balancers.get(ctx.model)
        if balancer is None:
            raise ModelNotFoundError(ctx.model)
        chain = (balancer, *(rt.balancers.get(name) for name in balancer.fallbacks))
        last_error: GatewayError | None = None
        soonest = float("inf")
        for bal in chain:
            if bal is None:
                continue
            tried: list[TargetState] = []
            for _ in range(bal.retries + 1):
                lease = bal.acquire(tried)
                if lease is None:
                    soonest = min(soonest, bal.soonest_recovery())
                    break
                target = lease.target
                tried.append(target)
                provider = rt.providers[target.provider]
                ctx.provider, ctx.target = target.provider, target.id
                left = deadline - time.monotonic()
                if left <= 0:
                    lease.neutral()
                    raise UpstreamTimeoutError(
                        "The request deadline passed before an upstream answered"
                    )
                body = raw
                if (
                    rewrite
                    or target.model != ctx.model
                    or (ctx.stream and not ctx.client_wants_usage)
                ):
                    body = _upstream_body(ctx, target.model)
                upstream_started = time.monotonic()
                try:
                    resp = await provider.send(ctx.endpoint, body, stream=ctx.stream, timeout=left)
                except UpstreamBusyError as err:  # our pool to it is full: not its fault
                    lease.neutral()
                    last_error = err
                    continue
                except (UpstreamError, UpstreamTimeoutError) as err:
                    charge.upstream_time += time.monotonic() - upstream_started
                    lease.failure(err.message)
                    last_error = err
                    continue
                except BaseException:
                    lease.neutral()
                    raise
                headers["x-aigw-provider"] = target.provider
                headers["x-aigw-model"] = target.model
                if resp.status >= 400:
                    status_err = await _status_error(resp, lease)
                    charge.upstream_time += time.monotonic() - upstream_started
                    if status_err.client_fault:
                        raise status_err
                    last_error = status_err
                    continue
                deliver = self._deliver_stream if ctx.stream else self._deliver
                result = await deliver(
                    request, ctx, rt, resp, lease, headers, charge, upstream_started
                )
                if result is not None:
                    return result
                charge.upstream_time += time.monotonic() - upstream_started
                last_error = UpstreamError("The upstream failed before sending its answer")
        if last_error is not None:
            raise last_error
        raise NoHealthyTargetError(
            f"No healthy target for model '{ctx.model}': every target is cooling down.",
            soonest if soonest != float("inf") else 1.0,
        )

    async def _deliver(
        self,
        request: web.BaseRequest,
        ctx: RequestContext,
        rt: Runtime,
        resp: UpstreamResponse,
        lease: Lease,
        headers: dict[str, str],
        charge: Charge,
        upstream_started: float,
        *,
        as_sse: bool = False,
    ) -> web.StreamResponse | None:
        """A whole (non-streamed) answer; `as_sse` replays it as a stream for a client that
        asked for one. None: the upstream failed, try the next target."""
        try:
            body = await resp.read()
        except GatewayError as err:
            lease.failure(err.message)
            resp.close()
            return None
        except BaseException:
            lease.neutral()
            raise
        if body.lstrip()[:1] != b"{":  # an HTML error page from a proxy in front, say
            lease.failure("The upstream answered 200 with a body that is not a JSON object")
            return None
        lease.success()
        charge.upstream_time += time.monotonic() - upstream_started
        ctx.usage = usage_from_body(body)
        ctx.status = resp.status
        info = ResponseInfo(resp.status, body=body, usage=ctx.usage)
        try:
            for hook in rt.after_hooks:
                await hook.after_response(ctx, info)
        finally:
            await self._settle(ctx, charge, ctx.usage, answered=True)
        headers["Content-Type"] = resp.headers.get("content-type", _JSON_CT)
        self._cache_store(ctx, charge, info.body, headers)
        if self.gw.metrics is not None:
            self.gw.metrics.request_done(
                ctx.model,
                ctx.target or "",
                resp.status,
                time.monotonic() - ctx.started,
                charge.upstream_time,
                None,
            )
        self.gw.access_log(ctx, request)
        if as_sse and info.body is not None:
            return await _replay(request, ctx, info.body, headers)
        return web.Response(status=resp.status, body=info.body, headers=headers)

    async def _deliver_stream(
        self,
        request: web.BaseRequest,
        ctx: RequestContext,
        rt: Runtime,
        resp: UpstreamResponse,
        lease: Lease,
        headers: dict[str, str],
        charge: Charge,
        upstream_started: float,
    ) -> web.StreamResponse | None:
        """Stream the answer through. None: the upstream failed before anything reached the
        client, try the next target."""
        content_type = resp.headers.get("content-type", "text/event-stream")
        if not content_type.startswith("text/event-stream"):
            if "json" in content_type:  # an upstream that ignores `stream`: replay its answer
                return await self._deliver(
                    request, ctx, rt, resp, lease, headers, charge, upstream_started, as_sse=True
                )
            lease.failure(f"The upstream answered a stream request with {content_type[:40]}")
            resp.close()
            return None
        tap = StreamTap(strip_usage=not ctx.client_wants_usage, collect=rt.collect_stream)
        chunks = resp.iter_chunks()
        first = b""
        try:
            # Read until one whole event is ready: failover is still possible until then.
            while not first:
                chunk = await anext(chunks)
                first = tap.feed(chunk)
        except StopAsyncIteration:
            first = tap.flush()
            if not first:
                lease.failure("The upstream ended the stream without data")
                resp.close()
                return None
        except GatewayError as err:
            lease.failure(err.message)
            resp.close()
            return None
        except BaseException:
            lease.neutral()
            resp.close()
            raise
        ttft = time.monotonic() - ctx.started  # arrival to first byte, as the metric says
        lease.first_byte()
        out = web.StreamResponse(status=200, headers={**headers, **_SSE_HEADERS})
        ctx.status = 200
        failure: GatewayError | None = None
        try:
            await out.prepare(request)
            await out.write(first)
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    rest = tap.flush()
                    if rest:
                        await out.write(rest)
                    break
                data = tap.feed(chunk)
                if data:
                    await out.write(data)
            if not tap.done and not tap.finished:
                failure = UpstreamError("The upstream closed the stream before it finished")
        except GatewayError as err:
            failure = err
        except (ConnectionError, asyncio.CancelledError) as exc:
            # The client went away: stop the upstream, still record what was produced.
            resp.close()
            lease.neutral()
            ctx.status = CLIENT_CLOSED
            ctx.usage = tap.usage or self._estimate(ctx, tap)
            await self._settle(ctx, charge, ctx.usage)
            await self._after_stream(ctx, rt, tap, request)
            self._stream_done(ctx, charge, upstream_started, ttft)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return out
        except Exception:  # our bug, not the target's: end the stream with an error event
            log.exception("stream %s failed", ctx.request_id)
            failure = GatewayError("The gateway failed while streaming this answer.")
            failure.client_fault = True  # keeps the target's record clean
        finally:
            await chunks.aclose()
            resp.close()
        if failure is not None:
            if failure.client_fault:
                lease.neutral()
            else:
                lease.failure(failure.message)
            ctx.status = failure.status
            with contextlib.suppress(ConnectionError):
                await out.write(error_event(failure))
        else:
            lease.success()
        ctx.usage = tap.usage or self._estimate(ctx, tap)
        await self._settle(ctx, charge, ctx.usage)
        if failure is None and charge.cache_key is not None and tap.events is not None:
            self._cache_store(
                ctx, charge, assemble_stream(tap.events, ctx.endpoint, usage=tap.usage), headers
            )
        await self._after_stream(ctx, rt, tap, request)
        self._stream_done(ctx, charge, upstream_started, ttft)
        with contextlib.suppress(ConnectionError):
            await out.write_eof()
        return out

    def _stream_done(
        self, ctx: RequestContext, charge: Charge, upstream_started: float, ttft: float
    ) -> None:
        """Count a finished stream, including one the client abandoned (status 499)."""
        if self.gw.metrics is not None:
            now = time.monotonic()
            self.gw.metrics.request_done(
                ctx.model,
                ctx.target or "",
                ctx.status,
                now - ctx.started,
                charge.upstream_time + (now - upstream_started),
                ttft,
            )

    async def _after_stream(
        self, ctx: RequestContext, rt: Runtime, tap: StreamTap, request: web.BaseRequest
    ) -> None:
        info = ResponseInfo(ctx.status, usage=ctx.usage)
        if rt.wants_stream_text and tap.events is not None:
            info.text = _stream_text(tap.events)
        try:
            for hook in rt.after_hooks:
                await hook.after_response(ctx, info)
        except GatewayError:
            pass  # the answer is already out: a hook cannot take it back
        self.gw.access_log(ctx, request)

    async def _settle(
        self,
        ctx: RequestContext,
        charge: Charge,
        usage: Usage | None,
        *,
        answered: bool = False,
    ) -> None:
        """Replace the request's worst-case charges (quota reservation, token-rate estimate)
        by what it really used; exactly once per request. `answered`: the client got an answer,
        so one without usage (some servers omit it) costs the worst case, never nothing."""
        if charge.settled:
            return
        charge.settled = True
        gw = self.gw
        if usage is not None and gw.metrics is not None:
            gw.metrics.tokens(ctx.tenant, ctx.model, usage.prompt_tokens, usage.completion_tokens)
        if usage is None and answered:
            usage = Usage(0, 0, charge.estimate)
        if charge.limiter is not None or charge.reservation is not None:
            await gw.admission.settle(ctx.tenant, charge, usage)

    def _estimate(self, ctx: RequestContext, tap: StreamTap) -> Usage | None:
        """A stream that ended without usage (client gone, upstream broke): count one token per
        content chunk, and the prompt by the quota estimator's rule."""
        if tap.chunks == 0:
            return None
        # Only the chunks that arrived: a stream cut short has no finish chunk and no [DONE].
        completion = max(0, tap.chunks - tap.preamble - tap.finished - tap.done)
        prompt = 0
        if self.gw.quota is not None:
            prompt = self.gw.quota.estimate_prompt_tokens(ctx.endpoint, ctx.body)
        return Usage(prompt, completion, prompt + completion)


class Charge:
    """What a request has provisionally taken (quota reservation, token-rate estimate) and may
    store (cache key), settled once when it ends."""

    __slots__ = (
        "cache",
        "cache_key",
        "estimate",
        "limiter",
        "reservation",
        "settled",
        "tokens_taken",
        "upstream_time",
    )

    def __init__(self) -> None:
        self.estimate = 0
        self.reservation: Reservation | None = None
        self.limiter: RateLimiter | None = None  # set only when a token limit applies
        self.tokens_taken = 0  # what the token bucket really gave
        self.cache: ResponseCache | None = None
        self.cache_key: bytes | None = None  # None: do not store the answer
        self.settled = False
        #: Seconds spent waiting on upstreams, failed attempts included: the gateway overhead
        #: metric is total time minus this.
        self.upstream_time = 0.0


async def _status_error(resp: UpstreamResponse, lease: Lease) -> GatewayError:
    """Turn an upstream error status into an error, charging the target only for its faults."""
    try:
        body = await resp.read()
    except GatewayError as broken:
        lease.failure(broken.message)
        return broken
    except BaseException:
        lease.neutral()  # the client went away mid-read: an unsettled lease stays in flight
        raise
    finally:
        resp.close()
    # The upstream's own retry advice reaches the client (the SDKs back off by it).
    advice = {k: resp.headers[k] for k in _RETRY_HEADERS if k in resp.headers}
    err = UpstreamStatusError(resp.status, body, headers=advice)
    if err.client_fault:
        lease.neutral()
    else:
        # Upstream messages may quote (masked) provider keys: stats never show them.
        lease.failure(redact(f"HTTP {resp.status}: {err.message}")[:200])
    return err


def _rejection_reason(err: GatewayError) -> RejectionReason | None:
    if isinstance(err, RateLimitError):
        return "rate_limit"
    if isinstance(err, QuotaExceededError):
        return "quota"
    if isinstance(err, ContentFilteredError):
        return "content_filter"
    if isinstance(err, AuthenticationError):
        return "auth"
    if isinstance(err, (InvalidRequestError, RequestTooLargeError, ModelNotFoundError)):
        return "invalid"
    return None


# --- helpers ---------------------------------------------------------------------------------


async def _replay(
    request: web.BaseRequest, ctx: RequestContext, body: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    """Send a whole answer (cached, or from an upstream that ignored `stream`) as SSE."""
    for name in ("content-type", "Content-Type"):
        headers.pop(name, None)
    events = b"".join(replay_as_sse(body, ctx.endpoint, ctx.client_wants_usage))
    out = web.StreamResponse(status=200, headers={**headers, **_SSE_HEADERS})
    await out.prepare(request)
    with contextlib.suppress(ConnectionError):
        await out.write(events)
        await out.write_eof()
    return out


_REQUEST_IDS = itertools.count(1)
_REQUEST_PREFIX = "req_" + os.urandom(6).hex()


def _request_id() -> str:
    # A random per-process prefix and a counter: unique, and no syscall per request.
    return f"{_REQUEST_PREFIX}{next(_REQUEST_IDS):010x}"


async def _read_body(request: web.BaseRequest, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise RequestTooLargeError(f"Request body is {length} bytes; the limit is {limit} bytes.")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise RequestTooLargeError(f"Request body exceeds the limit of {limit} bytes.") from exc


def _parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    try:
        body = jsonutil.loads(raw)
    except ValueError as exc:  # invalid JSON, invalid UTF-8, nesting too deep
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request: {exc}"
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body


def _upstream_body(ctx: RequestContext, upstream_model: str) -> bytes:
    body = dict(ctx.body)
    body["model"] = upstream_model
    if ctx.stream and ctx.endpoint != "embeddings":
        opts = body.get("stream_options")
        opts = dict(opts) if isinstance(opts, dict) else {}
        opts["include_usage"] = True
        body["stream_options"] = opts
    return jsonutil.dumps(body)


def _stream_text(events: list[bytes]) -> str:
    parts: list[str] = []
    for event in events:
        if not event.startswith(b"data: {"):
            continue
        try:
            data = jsonutil.loads(event[6:])
        except ValueError:
            continue
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if text is None:
                text = choice.get("text")
            if isinstance(text, str):
                parts.append(text)
    return "".join(parts)


def _model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "aigw"}


def _json(payload: Any, rid: str) -> web.Response:
    return web.Response(
        body=jsonutil.dumps(payload),
        headers={"Content-Type": _JSON_CT, "x-request-id": rid},
    )


def _error(err: GatewayError, rid: str) -> web.Response:
    headers = {"Content-Type": _JSON_CT, "x-request-id": rid}
    headers.update(err.headers)
    return web.Response(status=err.status, body=err.body(), headers=headers)


def _not_allowed(method: str, path: str, allowed: str) -> web.Response:
    err = InvalidRequestError(f"Method {method} is not allowed on {path}")
    err.status = 405
    err.headers = {"Allow": "GET, HEAD" if allowed == "GET" else allowed}
    return _error(err, _request_id())


async def _expect(request: web.BaseRequest) -> web.Response | None:
    """`Expect: 100-continue`: tell the client to send its body (aiohttp's router did this; its
    low-level server does not). Any other expectation: 417."""
    expect = request.headers.get("Expect", "")
    if request.version < HttpVersion11:
        return None  # HTTP/1.0 has no interim answers: the body just follows
    if expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of the response
        return None
    err = InvalidRequestError(f"Unsupported Expect header {expect[:64]!r}: only 100-continue.")
    err.status = 417
    return _error(err, _request_id())


def _not_found(message: str) -> GatewayError:
    return NotFoundError(message)


async def _run_on_error(rt: Runtime, ctx: RequestContext, err: GatewayError) -> None:
    for hook in rt.hooks:
        try:
            await hook.on_error(ctx, err)
        except Exception:  # a broken hook must not hide the real error
            logging.getLogger("aigw.hooks").exception(
                "on_error hook %s failed", type(hook).__name__
            )


def not_found(request: web.BaseRequest) -> web.Response:
    return _error(_not_found(f"Unknown path {request.method} {request.path}"), _request_id())
