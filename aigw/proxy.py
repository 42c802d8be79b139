"""The request pipeline: routing, then auth → rate limit → parse + hooks → quota → cache →
balancer → upstream (`aigw.forward`) → the answer back (`aigw.delivery`).

Handlers are thin: each turns an aiohttp request into a `Call` (`aigw.call`) and runs the
pipeline; every failure is a `GatewayError`, turned into the caller's error JSON in one place
(`_error`). The proxy reads the gateway through `GatewayView`, never the server itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestPayloadError

from aigw import jsonutil
from aigw.cache import (
    Alias,
    CacheDirectives,
    CachedResponse,
    ResponseCache,
    bytes_key,
    cache_key,
    parse_cache_control,
)
from aigw.call import Call, GatewayView
from aigw.delivery import CLIENT_CLOSED, replay, replay_translated, shutting_down
from aigw.dialects import MESSAGES, RESPONSES, Dialect, messages, responses
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
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from aigw.exchange import RequestContext, ResponseInfo
from aigw.forward import count_natively, forward
from aigw.limits.ratelimit import RateDecision
from aigw.limits.ratelimit import headers as rate_headers
from aigw.multipart import boundary_of, read_head
from aigw.passthrough import Upload, pass_through
from aigw.providers.base import PASS_THROUGH_ENDPOINTS

if TYPE_CHECKING:
    from aigw.metrics import RejectionReason
    from aigw.runtime import Runtime

log = logging.getLogger("aigw.proxy")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

_JSON_CT = "application/json"
_MODEL_PREFIX = "/v1/models/"


class Proxy:
    """aiohttp handlers for the OpenAI-compatible API."""

    def __init__(self, gateway: GatewayView) -> None:
        self.gw = gateway

        # Exact paths → (method, handler): one dict lookup per request instead of aiohttp's
        # router, middleware chain and Application (bench/README.md, "Low-level server").
        # The proxied endpoints go straight to the pipeline: one coroutine less per request.
        self.endpoints: dict[str, tuple[str, Dialect | None]] = {
            "/v1/chat/completions": ("chat/completions", None),
            "/v1/completions": ("completions", None),
            "/v1/embeddings": ("embeddings", None),
            "/v1/responses": ("chat/completions", RESPONSES),
            "/v1/messages": ("chat/completions", MESSAGES),
            **{f"/v1/{endpoint}": (endpoint, None) for endpoint in PASS_THROUGH_ENDPOINTS},
        }
        self.routes: dict[str, tuple[str, Handler]] = {
            "/v1/messages/count_tokens": ("POST", self.count_tokens),
            "/v1/models": ("GET", self.list_models),
            "/healthz": ("GET", self.healthz),
            "/metrics": ("GET", self.metrics),
        }

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The low-level server's one handler: route by exact path, then method. Routes match
        the path as sent (`/v1/chat%2Fcompletions` is not `/v1/chat/completions`)."""
        path, method = request.rel_url.raw_path, request.method
        proxied = self.endpoints.get(path)
        if proxied is not None:
            if method != "POST":
                return _not_allowed(method, path, "POST")
            if "Expect" in request.headers:
                refused = await _expect(request)
                if refused is not None:
                    return refused
            return await self._proxy(request, *proxied)
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

    async def count_tokens(self, request: web.BaseRequest) -> web.Response:
        """`POST /v1/messages/count_tokens`: a target that speaks Messages counts (its answer
        passes through); without one, the gateway's own estimate (`{"input_tokens": N}`). Rate
        limits apply; nothing is charged to the quota."""
        gw, rt = self.gw, self.gw.runtime
        rid = _request_id()
        ctx = RequestContext(
            rid, "", "messages/count_tokens", {}, time.monotonic(), headers=request.headers
        )
        ctx.dialect = MESSAGES.name
        ctx.response_headers.update({"x-request-id": rid, "request-id": rid})
        limits = gw.limits
        if limits is None:
            return _error(ServiceUnavailableError("The gateway is not running."), rid, MESSAGES)
        call = Call(gw, request, ctx, rt, limits, MESSAGES)
        if gw.tracing is not None:
            call.span = gw.tracing.start_request(
                "POST", request.rel_url.raw_path, request.headers, request_id=rid
            )
        try:
            ctx.tenant = rt.auth.tenant(request.headers)
            decision = await limits.admission.take_request(ctx.tenant)
            if decision.limit:
                ctx.response_headers.update(rate_headers(decision))
            raw = await _read_body(request, rt.config.server.max_body_size)
            ctx.client_body = _parse_body(raw)
            ctx.body = messages.count_tokens_to_chat(ctx.client_body)
            model = ctx.body.get("model")
            ctx.model = model if isinstance(model, str) else ""
            if call.span is not None:
                call.span.request(ctx.model, ctx.body)
            answer = await count_natively(call, raw)
            if answer is None:
                estimate = limits.quota.estimate_prompt_tokens("chat/completions", ctx.body)
                answer = _json({"input_tokens": estimate}, rid)
                answer.headers.update(ctx.response_headers)
            ctx.status = answer.status
            call.done(answer.status)
            return answer
        except GatewayError as err:
            return await self._fail(call, err)

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

    async def _proxy(
        self, request: web.BaseRequest, endpoint: str, dialect: Dialect | None
    ) -> web.StreamResponse:
        """The pipeline. `dialect`: the client speaks Responses or Messages (None: chat), so
        its body is turned into the canonical chat form before the hooks see it."""
        gw = self.gw
        rt = gw.runtime
        rid = _request_id()
        ctx = RequestContext(rid, "", endpoint, {}, time.monotonic(), headers=request.headers)
        if dialect is not None:
            ctx.dialect = dialect.name
        headers = ctx.response_headers
        headers["x-request-id"] = rid
        if dialect is MESSAGES:  # where Anthropic's SDKs read a request's id
            headers["request-id"] = rid
        if gw.worker_pid is not None:
            headers["x-aigw-worker"] = gw.worker_pid
        limits = gw.limits
        if limits is None:  # not started, or stopped
            return _error(ServiceUnavailableError("The gateway is not running."), rid, dialect)
        call = Call(gw, request, ctx, rt, limits, dialect)
        tracing = gw.tracing
        if tracing is not None:
            call.span = tracing.start_request(
                "POST", request.rel_url.raw_path, request.headers, request_id=rid
            )
        metrics = gw.metrics
        if metrics is not None:
            metrics.in_flight(1)
        try:
            ctx.tenant = rt.auth.tenant(request.headers)
            admission = limits.admission
            req_decision = await admission.take_request(ctx.tenant)
            if req_decision.limit:
                headers.update(rate_headers(req_decision))
            if endpoint in PASS_THROUGH_ENDPOINTS:
                return await self._pass_through(call, req_decision)
            raw = await _read_body(request, rt.config.server.max_body_size)
            cache = gw.cache
            if cache is not None:
                directives = parse_cache_control(request.headers.get("Cache-Control"))
                raw_key = (
                    bytes_key(ctx.tenant, endpoint, raw)
                    if rt.cache_by_bytes and dialect is None
                    else None
                )
                if raw_key is not None and not directives.no_cache:
                    # Bytes answered before: no parse, hooks, token estimate or canonical key.
                    found = cache.get_by_bytes(raw_key, rt.generation, directives.max_age)
                    if found is not None:
                        entry, alias = found
                        ctx.model, ctx.stream = alias.model, alias.stream
                        ctx.client_wants_usage = alias.wants_usage
                        if rt.after_hooks:
                            ctx.body = _parse_body(raw)
                        if call.span is not None:
                            call.span.request(ctx.model, ctx.body, stream=ctx.stream)
                        return await self._serve_cached(call, entry, req_decision)
            ctx.body = _parse_body(raw)
            model = ctx.body.get("model")  # known even when the translation refuses the body
            ctx.model = model if isinstance(model, str) else ""
            native_only = None  # why only a target that speaks the dialect may answer
            if dialect is not None:  # the hooks see the canonical (chat) form
                ctx.client_body = translated = ctx.body
                if dialect is RESPONSES:  # stateful parameters: the native target's business
                    translated, native_only = responses.stateless(translated)
                ctx.body = dialect.to_chat(translated)
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
            if call.span is not None:
                call.span.request(ctx.model, body, stream=ctx.stream)
            if cache is not None and native_only is None:  # stateful answers are not kept
                hit = self._cache_lookup(call, cache, directives, raw_key)
                if hit is not None:
                    return await self._serve_cached(call, hit, req_decision)
                ctx.cache = headers["x-aigw-cache"] = "miss"
            charge = call.charge
            charge.prompt_estimate, charge.estimate = limits.quota.estimate(endpoint, body)
            await admission.admit(ctx.tenant, charge, req_decision, headers)
            return await forward(call, raw, native_only)
        except GatewayError as err:
            return await self._fail(call, err)
        except asyncio.CancelledError:
            if gw.drain_deadline.is_set() and not call.counted:
                # Cut by the drain at shutdown before an answer started: say so (the drain
                # closes the connection right after).
                return await self._fail(call, shutting_down())
            # The client went away before an answer started: give back what was reserved and
            # count the request (a stream abandoned midway was already counted).
            await call.settle(None)
            if not call.counted:
                ctx.status = CLIENT_CLOSED
                call.done(CLIENT_CLOSED)
            raise
        except Exception:
            # A bug (ours or a user hook's) must still end as OpenAI error JSON with every
            # charge settled, never as aiohttp's plain-text 500 with a reservation held.
            log.exception("request %s failed", rid)
            return await self._fail(
                call, GatewayBugError("The gateway failed to handle this request.")
            )
        finally:
            if metrics is not None:
                metrics.in_flight(-1)

    async def _pass_through(self, call: Call, requests: RateDecision) -> web.StreamResponse:
        """Images, speech, transcriptions, moderations: the body as it is (a multipart upload
        streamed, only its head read to route it), no cache, usage where the answer has it."""
        ctx, request, limits = call.ctx, call.request, call.limits
        content_type = request.headers.get("Content-Type", "")
        upload = None
        raw = b""
        if content_type.startswith("multipart/form-data"):
            limit = call.rt.config.server.max_body_size
            if request.content_length is not None and request.content_length > limit:
                raise RequestTooLargeError(  # refused before any of it is read
                    f"Request body is {request.content_length} bytes; the limit is {limit} bytes."
                )
            rest = request.content.iter_chunked(64 * 1024)
            form = await read_head(rest, boundary_of(content_type), limit)
            ctx.body = dict(form.fields)
            upload = Upload(form, rest, content_type=content_type, length=request.content_length)
        else:
            raw = await _read_body(request, call.rt.config.server.max_body_size)
            ctx.body = _parse_body(raw)
        model = ctx.body.get("model")
        ctx.model = model if isinstance(model, str) else ""
        for hook in call.rt.hooks:
            await hook.before_request(ctx)
        if call.span is not None:
            call.span.request(ctx.model, ctx.body)
        # Rate limits by request; the quota only checks the tenant still has some (nothing is
        # held: what the answer reports is recorded).
        await limits.admission.admit(ctx.tenant, call.charge, requests, ctx.response_headers)
        return await pass_through(call, raw, upload)

    async def _fail(self, call: Call, err: GatewayError) -> web.Response:
        """The one way a request ends in an error response."""
        ctx = call.ctx
        await call.settle(None)
        ctx.status = err.status
        metrics = self.gw.metrics
        if metrics is not None:
            reason = _rejection_reason(err)
            if reason is not None:
                metrics.rejected(reason)
        if isinstance(err, (UpstreamError, UpstreamTimeoutError, NoHealthyTargetError)) or (
            isinstance(err, UpstreamStatusError) and err.status >= 500
        ):
            call.log_upstream_failure(err)
        await _run_on_error(call.rt, ctx, err)
        err.headers = {**ctx.response_headers, **err.headers}
        call.error = err
        call.done(err.status)
        return _error(err, ctx.request_id, call.dialect)

    # --- cache -----------------------------------------------------------------------------------

    def _cache_lookup(
        self,
        call: Call,
        cache: ResponseCache,
        directives: CacheDirectives,
        raw_key: tuple[str, str, bytes] | None,
    ) -> CachedResponse | None:
        ctx = call.ctx
        key = cache_key(ctx.tenant, ctx.endpoint, ctx.body, ctx.dialect)
        if key is None:
            return None
        call.cache = cache
        call.cache_key = None if directives.no_store else key
        if raw_key is not None:  # the runtime's hooks are all deterministic
            alias = Alias(key, ctx.model, ctx.stream, ctx.client_wants_usage, call.rt.generation)
            cache.learn(raw_key, alias)
        hit = None if directives.no_cache else cache.get(key, directives.max_age)
        metrics = self.gw.metrics
        if metrics is not None and hit is None:
            metrics.cache_event("miss")
        return hit

    async def _serve_cached(
        self, call: Call, hit: CachedResponse, requests: RateDecision
    ) -> web.StreamResponse:
        """Replay a stored answer: no upstream call, zero quota tokens. The limits still apply
        (quota before cache, DESIGN §1): a tenant with no quota or token budget left is refused
        even a cached answer, so one token is held while it is served and given back."""
        ctx, headers = call.ctx, call.ctx.response_headers
        call.cache_key = None  # nothing to store again
        call.charge.estimate = 1
        await call.limits.admission.admit(ctx.tenant, call.charge, requests, headers)
        ctx.cache = "hit"
        ctx.status = 200
        headers.update(hit.headers)
        headers["x-aigw-cache"] = "hit"
        ctx.provider = hit.headers.get("x-aigw-provider")
        try:
            if call.rt.after_hooks:
                await call.observe(
                    ResponseInfo(200, body=hit.body, usage=hit.usage), may_reject=True
                )
        finally:
            await call.settle(None)
        if self.gw.metrics is not None:
            self.gw.metrics.cache_event("hit")
        call.done(200, 0.0, target="cache")
        if call.dialect is not None:
            return await replay_translated(call, hit.body, hit.usage)
        if not ctx.stream:
            return web.Response(status=200, body=hit.body, headers=headers)
        return await replay(call.request, ctx, hit.body, headers)


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


def _model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "aigw"}


def _json(payload: Any, rid: str) -> web.Response:
    return web.Response(
        body=jsonutil.dumps(payload),
        headers={"Content-Type": _JSON_CT, "x-request-id": rid},
    )


def _error(err: GatewayError, rid: str, dialect: Dialect | None = None) -> web.Response:
    """The one place an error becomes the caller's error JSON (OpenAI's, or its dialect's)."""
    headers = {"Content-Type": _JSON_CT, "x-request-id": rid}
    headers.update(err.headers)
    body = err.body() if dialect is None else dialect.error_body(err)
    return web.Response(status=err.status, body=body, headers=headers)


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
