"""The request pipeline: auth → rate limit → parse + hooks → quota → cache → balancer → upstream.

Handlers are thin: each turns an aiohttp request into a `RequestContext` and runs the pipeline;
every failure is a `GatewayError`, turned into OpenAI error JSON in one place (`_error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestPayloadError

from aigw import jsonutil, sse
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
from aigw.errors import (
    AuthenticationError,
    ContentFilteredError,
    ExpectationFailedError,
    GatewayBugError,
    GatewayError,
    InvalidRequestError,
    MalformedRequestError,
    MethodNotAllowedError,
    ModelNotFoundError,
    NoHealthyTargetError,
    NotFoundError,
    QuotaExceededError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    UpstreamAuthError,
    UpstreamBusyError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    error_event,
    retry_after_headers,
)
from aigw.exchange import RequestContext, ResponseInfo, Usage
from aigw.headers import RETRY_HEADERS, UPSTREAM_REQUEST_ID, client_headers
from aigw.logutil import RateLimitedLog
from aigw.ratelimit import headers as rate_headers
from aigw.redact import redact
from aigw.streaming import StreamTap, usage_from_body

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
#: A 429 without retry advice pauses its target this long (seconds): not at all, the client
#: backs off by its own rules and the next request may go there again.
DEFAULT_THROTTLE = 0.0
#: Content chunks a stream may send past `max_tokens` * n before it is cut: role, filter and
#: empty keep-alive chunks carry no token, and some upstreams send a few of them.
MAX_TOKENS_SLACK = 16
#: Tokens a stream past its reservation tries to reserve more of, largest first: the stream is
#: cut when not even the smallest fits in the tenant's quota.
STREAM_EXTENSION_BLOCKS = (256, 16)
#: How long the rest of an upstream body is awaited after [DONE] (its connection is then kept).
DRAIN_AFTER_DONE = 1.0
#: Status recorded for a request whose client went away first (nginx's convention).
CLIENT_CLOSED = 499
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class Proxy:
    """aiohttp handlers for the OpenAI-compatible API."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        #: one line per target and 10 s for requests that end in 5xx: a dead upstream under
        #: load must not write thousands of lines a second
        self.upstream_failures = RateLimitedLog(logging.getLogger("aigw.upstream"))

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
                charge.prompt_estimate, charge.estimate = quota.estimate(endpoint, body)
            await admission.admit(ctx.tenant, charge, req_decision, headers)
            return await self._forward(request, ctx, rt, raw, headers, charge)
        except GatewayError as err:
            return await self._fail(request, ctx, rt, charge, headers, err)
        except asyncio.CancelledError:
            if gw.drain_deadline.is_set() and not charge.counted:
                # Cut by the drain at shutdown before an answer started: say so (the drain
                # closes the connection right after).
                return await self._fail(request, ctx, rt, charge, headers, _shutting_down())
            # The client went away before an answer started: give back what was reserved and
            # count the request (a stream abandoned midway was already counted).
            await self._settle(ctx, charge, None)
            if not charge.counted:  # (a stream that ended or was abandoned already counted)
                ctx.status = CLIENT_CLOSED
                self._done(request, ctx, charge, CLIENT_CLOSED, charge.upstream_time)
            raise
        except Exception:
            # A bug (ours or a user hook's) must still end as OpenAI error JSON with every
            # charge settled, never as aiohttp's plain-text 500 with a reservation held.
            log.exception("request %s failed", rid)
            internal = GatewayBugError("The gateway failed to handle this request.")
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
        if isinstance(err, (UpstreamError, UpstreamTimeoutError, NoHealthyTargetError)) or (
            isinstance(err, UpstreamStatusError) and err.status >= 500
        ):
            self._log_upstream_failure(ctx, err)
        await _run_on_error(rt, ctx, err)
        err.headers = {**headers, **err.headers}
        self._done(request, ctx, charge, err.status, charge.upstream_time)
        return _error(err, ctx.request_id)

    def _log_upstream_failure(self, ctx: RequestContext, err: GatewayError) -> None:
        target = ctx.target or "-"
        self.upstream_failures.log(
            target if ctx.target else f"model {ctx.model}",
            "request %s: model %s, target %s: %s %s",
            ctx.request_id,
            ctx.model or "-",
            target,
            err.status,
            err.message,
        )

    def _done(
        self,
        request: web.BaseRequest,
        ctx: RequestContext,
        charge: Charge,
        status: int,
        upstream_time: float,
        ttft: float | None = None,
        target: str | None = None,
    ) -> None:
        """Count a finished request in the metrics and the access log: once, whichever way it
        ended (answered, refused, failed, abandoned)."""
        charge.counted = True
        metrics = self.gw.metrics
        if metrics is not None:
            metrics.request_done(
                ctx.model,
                ctx.target or "" if target is None else target,
                status,
                time.monotonic() - ctx.started,
                upstream_time,
                ttft,
            )
        self.gw.access_log(ctx, request)

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
        if self.gw.metrics is not None:
            self.gw.metrics.cache_event("hit")
        self._done(request, ctx, charge, 200, 0.0, target="cache")
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
        cooling: TargetState | None = None  # a target paused by its upstream's 429
        soonest = float("inf")
        for bal in chain:
            if bal is None:
                continue
            tried: list[TargetState] = []
            for _ in range(bal.retries + 1):
                lease = bal.acquire(tried)
                if lease is None:
                    soonest = min(soonest, bal.soonest_recovery())
                    if cooling is None:
                        cooling = bal.cooling_target()
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
                    resp = await provider.send(
                        ctx.endpoint,
                        body,
                        stream=ctx.stream,
                        timeout=left,
                        client_headers=request.raw_headers,
                    )
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
                upstream_id = resp.headers.get("x-request-id") or resp.headers.get("request-id")
                ctx.upstream_request_id = upstream_id
                if resp.status >= 400:
                    status_err = await _status_error(resp, lease, target.provider)
                    charge.upstream_time += time.monotonic() - upstream_started
                    if status_err.client_fault:
                        raise status_err
                    last_error = status_err
                    continue
                deliver = self._deliver_stream if ctx.stream else self._deliver
                result = await deliver(
                    request, ctx, rt, resp, lease, headers, charge, upstream_started
                )
                if not isinstance(result, GatewayError):
                    return result
                charge.upstream_time += time.monotonic() - upstream_started
                last_error = result
        if cooling is not None and (last_error is None or last_error.status != 429):
            # Every target that could serve is paused at its upstream's request: the client
            # gets that upstream's 429, with the time left of the pause as its retry advice.
            raise _cooling_error(cooling)
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
    ) -> web.StreamResponse | GatewayError:
        """A whole (non-streamed) answer; `as_sse` replays it as a stream for a client that
        asked for one. A `GatewayError` returned: the upstream failed, try the next target."""
        try:
            body = await resp.read()
        except GatewayError as err:
            resp.close()
            return _target_failed(lease, err)
        except BaseException:
            lease.neutral()
            raise
        if body.lstrip()[:1] != b"{":  # an HTML error page from a proxy in front, say
            return _target_failed(
                lease, UpstreamError("The upstream answered 200 with a body that is not JSON")
            )
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
        self._cache_store(ctx, charge, info.body, headers)
        headers = client_headers(resp.headers, headers)
        headers.setdefault("Content-Type", _JSON_CT)
        self._done(request, ctx, charge, resp.status, charge.upstream_time)
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
    ) -> web.StreamResponse | GatewayError:
        """Stream the answer through. A `GatewayError` returned: the upstream failed before
        anything reached the client, try the next target.

        The whole exchange keeps to the request deadline: a stream still running then is cut
        with an in-band error event, and so is one the drain at shutdown must end
        (`cut_streams`) and one that runs past its own `max_tokens`."""
        content_type = resp.headers.get("content-type", "text/event-stream")
        if not content_type.startswith("text/event-stream"):
            if "json" in content_type:  # an upstream that ignores `stream`: replay its answer
                return await self._deliver(
                    request, ctx, rt, resp, lease, headers, charge, upstream_started, as_sse=True
                )
            resp.close()
            return _target_failed(
                lease,
                UpstreamError(f"The upstream answered a stream request with {content_type[:40]}"),
            )
        tap = StreamTap(
            strip_usage=not ctx.client_wants_usage,
            collect=rt.collect_stream,
            max_kept=rt.config.server.max_upstream_body,
        )
        chunks = resp.iter_chunks()
        loop = asyncio.get_running_loop()
        deadline = ctx.started + rt.config.server.request_timeout
        when = loop.time() + (deadline - time.monotonic())  # the deadline on the loop's clock
        first = b""
        try:
            # Read until one whole event is ready: failover is still possible until then.
            async with asyncio.timeout_at(when):
                while not first:
                    chunk = await anext(chunks)
                    first = tap.feed(chunk)
        except StopAsyncIteration:
            first = tap.flush()
            if not first:
                resp.close()
                return _target_failed(
                    lease, UpstreamError("The upstream ended the stream without data")
                )
        except TimeoutError:
            lease.neutral()  # our deadline, not the target's fault
            resp.close()
            raise UpstreamTimeoutError(
                "The request deadline passed before the upstream's stream began"
            ) from None
        except GatewayError as err:
            resp.close()
            return _target_failed(lease, err)
        except BaseException:
            lease.neutral()
            resp.close()
            raise
        ttft = time.monotonic() - ctx.started  # arrival to first byte, as the metric says
        lease.first_byte()
        out = web.StreamResponse(
            status=200, headers={**client_headers(resp.headers, headers), **_SSE_HEADERS}
        )
        ctx.status = 200
        most = _max_stream_chunks(ctx)
        # Data events the quota reservation covers (0: no token quota holds this request): its
        # completion tokens and the role chunk. Past it, more is reserved or the stream is cut.
        covered = 0
        if charge.reservation is not None and charge.reservation.tokens:
            covered = charge.estimate - charge.prompt_estimate + tap.preamble
        failure: GatewayError | None = None
        gone: BaseException | None = None  # the client went away (or cancelled the request)
        try:
            async with asyncio.timeout_at(when):
                await out.prepare(request)
                data = first
                # [DONE] ends it: the client has everything (the openai SDK closes at once),
                # whether or not the upstream's end of body has arrived yet.
                while True:
                    if most and tap.chunks > most:
                        await out.write(_without_last_events(data, tap.chunks - most))
                        tap.cut(tap.chunks - most)
                        failure = UpstreamError(
                            f"The upstream sent more than the request's max_tokens "
                            f"({most - MAX_TOKENS_SLACK}); the gateway cut the stream"
                        )
                        break
                    while covered and tap.chunks > covered:
                        more = await self._extend(ctx, charge)
                        if not more:
                            break
                        covered += more
                    if covered and tap.chunks > covered:
                        await out.write(_without_last_events(data, tap.chunks - covered))
                        tap.cut(tap.chunks - covered)
                        failure = QuotaExceededError(
                            f"Tenant '{ctx.tenant}' ran out of token quota while this answer "
                            "was streaming; the gateway cut it."
                        )
                        break
                    if data:
                        await out.write(data)
                    if tap.done:
                        break
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        rest = tap.flush()
                        if rest:
                            await out.write(rest)
                        break
                    data = tap.feed(chunk)
            if failure is None and not tap.done and not tap.finished:
                failure = UpstreamError("The upstream closed the stream before it finished")
        except TimeoutError:
            failure = UpstreamTimeoutError(
                "The request deadline (server.request_timeout) passed; the gateway cut the stream"
            )
        except GatewayError as err:
            failure = err
        except asyncio.CancelledError as exc:
            if self.gw.drain_deadline.is_set():
                # Cancelled by the drain at shutdown: end the stream with the reason and its
                # proper end (the drain closes the connection after).
                failure = _shutting_down()
            else:
                gone = exc
        except ConnectionError as exc:
            gone = exc
        except Exception:  # our bug, not the target's: end the stream with an error event
            log.exception("stream %s failed", ctx.request_id)
            failure = GatewayBugError("The gateway failed while streaming this answer.")
        finally:
            if gone is not None or failure is not None:
                await chunks.aclose()
                resp.close()
        if gone is not None and not (tap.done or tap.finished):
            # The client left before the answer was complete: stop the upstream, still record
            # what was produced.
            lease.neutral()
            ctx.status = CLIENT_CLOSED
            ctx.usage = tap.usage or self._estimate(charge, tap)
            await self._settle(ctx, charge, ctx.usage)
            await self._after_stream(ctx, rt, tap, request)
            self._stream_done(request, ctx, charge, upstream_started, ttft)
            if isinstance(gone, asyncio.CancelledError):
                raise gone
            return out
        if failure is not None:
            if failure.client_fault or isinstance(
                failure, (UpstreamTimeoutError, ServiceUnavailableError)
            ):
                lease.neutral()  # our bug, our deadline or our shutdown: not the target's
            else:
                lease.failure(failure.message)
                self._log_upstream_failure(ctx, failure)
            ctx.status = failure.status
            with contextlib.suppress(ConnectionError):
                await out.write(error_event(failure))
        else:
            lease.success()
        ctx.usage = tap.usage or self._estimate(charge, tap)
        await self._settle(ctx, charge, ctx.usage)
        if failure is None and tap.done and charge.cache_key is not None and tap.events:
            self._cache_store(
                ctx, charge, assemble_stream(tap.events, ctx.endpoint, usage=tap.usage), headers
            )
        await self._after_stream(ctx, rt, tap, request)
        self._stream_done(request, ctx, charge, upstream_started, ttft)
        if gone is not None:
            if isinstance(gone, asyncio.CancelledError):
                raise gone
            return out
        with contextlib.suppress(ConnectionError):
            await out.write_eof()
        if failure is None:
            await _drain(chunks, resp)
        return out

    def _stream_done(
        self,
        request: web.BaseRequest,
        ctx: RequestContext,
        charge: Charge,
        upstream_started: float,
        ttft: float,
    ) -> None:
        """Count a finished stream, including one the client abandoned (status 499)."""
        upstream_time = charge.upstream_time + (time.monotonic() - upstream_started)
        self._done(request, ctx, charge, ctx.status, upstream_time, ttft)

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
        reservation = charge.reservation
        if reservation is None or not reservation.tokens:
            return
        # Released after the commit: the tenant's account never shows less than it used.
        held = reservation.tokens
        for extension in charge.extensions:
            held += extension.tokens
            if gw.quota is not None:
                await gw.quota.release(extension)
        if usage is not None and usage.total_tokens > held and gw.metrics is not None:
            gw.metrics.quota_overrun(ctx.tenant, usage.total_tokens - held)

    async def _extend(self, ctx: RequestContext, charge: Charge) -> int:
        """A stream passed what its reservation covers (an upstream ignoring max_tokens, or a
        request without one): reserve more of the tenant's quota. Returns the tokens added, 0
        when the quota has none left (the stream must be cut)."""
        quota = self.gw.quota
        if quota is None:
            return 0
        for block in STREAM_EXTENSION_BLOCKS:
            try:
                extension = await quota.reserve(ctx.tenant, block)
            except QuotaExceededError:
                continue
            charge.extensions.append(extension)
            return block
        return 0

    def _estimate(self, charge: Charge, tap: StreamTap) -> Usage | None:
        """A stream that ended without usage (client gone, upstream broke): count one token per
        content chunk, and the prompt by the quota estimator's rule."""
        if tap.chunks == 0:
            return None
        # Only the chunks that arrived: a stream cut short has no finish chunk and no [DONE].
        completion = max(0, tap.chunks - tap.preamble - tap.finished - tap.done)
        prompt = charge.prompt_estimate
        return Usage(prompt, completion, prompt + completion)


class Charge:
    """What a request has provisionally taken (quota reservation, token-rate estimate) and may
    store (cache key), settled once when it ends."""

    __slots__ = (
        "cache",
        "cache_key",
        "counted",
        "estimate",
        "extensions",
        "limiter",
        "prompt_estimate",
        "reservation",
        "settled",
        "tokens_taken",
        "upstream_time",
    )

    def __init__(self) -> None:
        self.counted = False  # in the metrics and the access log already
        self.estimate = 0  # worst-case tokens: what the quota holds for the request
        self.prompt_estimate = 0  # the prompt's share of `estimate`
        #: more quota taken while a stream ran past what `reservation` covers
        self.extensions: list[Reservation] = []
        self.reservation: Reservation | None = None
        self.limiter: RateLimiter | None = None  # set only when a token limit applies
        self.tokens_taken = 0  # what the token bucket really gave
        self.cache: ResponseCache | None = None
        self.cache_key: bytes | None = None  # None: do not store the answer
        self.settled = False
        #: Seconds spent waiting on upstreams, failed attempts included: the gateway overhead
        #: metric is total time minus this.
        self.upstream_time = 0.0


async def _status_error(resp: UpstreamResponse, lease: Lease, provider: str) -> GatewayError:
    """Turn an upstream error status into an error, charging the target only for its faults:
    a 429 pauses the target for its retry advice (never an error), a 401/403 is the gateway's
    own credentials failing (a 502, never shown as the caller's bad key)."""
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
    status = resp.status
    # What the client reads of the upstream's headers (retry advice, rate-limit state, its
    # request id) reaches it with the error; the content type is the gateway's own.
    passed = client_headers(resp.headers, {})
    passed.pop("Content-Type", None)
    err = UpstreamStatusError(status, body, headers=passed)
    # Upstream messages may quote (masked) provider keys: stats and logs never show them.
    summary = redact(f"HTTP {status}: {err.message[:1000]}")[:200]  # bounded work on the loop
    if status == 429:
        lease.throttled(retry_after_seconds(resp.headers), summary, err)
    elif status in (401, 403):
        lease.failure(summary)
        code = f" ({err.code})" if err.code else ""
        return UpstreamAuthError(
            f"The upstream '{provider}' refused the gateway's credentials (HTTP {status}{code}); "
            "the gateway's operator must fix the provider's key.",
            headers=passed,
        )
    elif err.client_fault:
        lease.neutral()
    else:
        lease.failure(summary)
    return err


def _shutting_down() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "The gateway is shutting down; this answer was cut at server.shutdown_timeout."
    )


def _target_failed(lease: Lease, err: GatewayError) -> GatewayError:
    """The target failed to deliver: charge it, and give the error to the failover loop."""
    lease.failure(err.message)
    return err


def _cooling_error(target: TargetState) -> GatewayError:
    """The 429 a paused target's upstream gave, with the pause's time left as retry advice."""
    left = target.cooling_left()
    answer = target.cooling_answer
    if isinstance(answer, UpstreamStatusError):
        headers = {
            k: v
            for k, v in answer.headers.items()
            if k not in RETRY_HEADERS and k != UPSTREAM_REQUEST_ID  # not this request's
        }
        headers.update(retry_after_headers(left))
        return UpstreamStatusError(429, answer.raw_body, headers=headers)
    return RateLimitError(f"The upstream of '{target.id}' is rate limited; retry later.", left)


def retry_after_seconds(headers: Mapping[str, str]) -> float:
    """How long an upstream asked to wait: `retry-after-ms`, `retry-after` (seconds or an HTTP
    date), else the reset time of an exhausted `x-ratelimit-remaining-*`, else no pause."""
    value = headers.get("retry-after-ms")
    if value is not None:
        with contextlib.suppress(ValueError):
            return max(float(value) / 1000.0, 0.0)
    value = headers.get("retry-after")
    if value is not None:
        try:
            return max(float(value), 0.0)
        except ValueError:
            from email.utils import parsedate_to_datetime

            with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    waits = [
        _go_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))
        for kind in ("requests", "tokens")
        if headers.get(f"x-ratelimit-remaining-{kind}") == "0"
    ]
    known = [w for w in waits if w is not None]
    return max(known) if known else DEFAULT_THROTTLE


_GO_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(h|ms|m|s))", re.ASCII)
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _go_duration(text: str) -> float | None:
    """OpenAI's reset times: `1s`, `6m0s`, `20ms`, `1h2m3.5s`; None when not one."""
    text = text.strip()
    if not text:
        return None
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


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
    except RequestPayloadError as exc:  # the message is fixed: never the client's bytes
        raise MalformedRequestError("The request body is malformed or incomplete.") from exc


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


def _max_stream_chunks(ctx: RequestContext) -> int:
    """Data events past which a stream has surely sent more tokens than its `max_tokens`
    (every content chunk holds at least one token); 0 when the request sets no limit."""
    body = ctx.body
    limit = body.get("max_completion_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        limit = body.get("max_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            return 0
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    return limit * choices + MAX_TOKENS_SLACK


def _without_last_events(data: bytes, count: int) -> bytes:
    """`data` (whole events) without its last `count` data events."""
    end = len(data)
    for _ in range(count):
        start = data.rfind(b"\ndata:", 0, end)
        if start < 0:
            return b""
        end = start + 1
    return data[:end]


async def _drain(chunks: AsyncGenerator[bytes, None], resp: UpstreamResponse) -> None:
    """Read what is left of an upstream stream after [DONE] (usually only the end of its chunked
    body), so its connection can be used again; give up after DRAIN_AFTER_DONE."""
    try:
        async with asyncio.timeout(DRAIN_AFTER_DONE):
            async for _ in chunks:
                pass
    except (TimeoutError, GatewayError):
        pass
    finally:
        await chunks.aclose()
        resp.close()


def _stream_text(events: list[bytes]) -> str:
    parts: list[str] = []
    for event in events:
        payload = sse.data_of(event)
        if payload is None or payload[:1] != b"{":
            continue
        try:
            data = jsonutil.loads(payload)
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
    err = MethodNotAllowedError(
        f"Method {method} is not allowed on {path}",
        headers={"Allow": "GET, HEAD" if allowed == "GET" else allowed},
    )
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
    err = ExpectationFailedError(f"Unsupported Expect header {expect[:64]!r}: only 100-continue.")
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


#: What the gateway serves, for the message of a path it does not.
SERVED = (
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/embeddings",
    "GET /v1/models",
    "GET /v1/models/{id}",
    "GET /healthz",
    "GET /metrics",
)


def not_found(request: web.BaseRequest) -> web.Response:
    """A path the gateway does not serve: say so (it is not the caller's typo) and list what
    it does serve."""
    path = request.path if len(request.path) <= 200 else request.path[:200] + "…"
    err = NotFoundError(
        f"aigw does not serve {request.method} {path}. It serves: {', '.join(SERVED)}.",
        code="unsupported_endpoint",
    )
    return _error(err, _request_id())
