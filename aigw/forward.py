"""Trying targets for a request: the balancer's choice, failover before the first byte, the
model's fallbacks, and what each upstream error means for the target and for the client.

An upstream's error status is judged here, once:
- a 429 is a pause the upstream asked for: the target gets no traffic for its retry advice
  (`retry_after_seconds`) and the request fails over; it is never an error of the target;
- a 401/403 is the gateway's own credentials refused: a 502 `upstream_auth_error` for the
  client (never the caller's "bad key"), a failure of the target;
- other 5xx, 404, 408 are the target's failures; the client's own 4xx pass through unchanged.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from aigw import jsonutil
from aigw.call import CHAT, NATIVE, TRANSLATED, Call
from aigw.delivery import deliver, deliver_stream
from aigw.errors import (
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    NoHealthyTargetError,
    RateLimitError,
    UpstreamAuthError,
    UpstreamBusyError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    retry_after_headers,
)
from aigw.headers import RETRY_HEADERS, UPSTREAM_REQUEST_ID, client_headers
from aigw.redact import redact

if TYPE_CHECKING:
    from aigw.health import Lease, TargetState
    from aigw.providers.base import UpstreamResponse

#: A 429 without retry advice pauses its target this long (seconds): not at all, the client
#: backs off by its own rules and the next request may go there again.
DEFAULT_THROTTLE = 0.0


async def forward(
    call: Call, raw: bytes, native_only: InvalidRequestError | None = None
) -> web.StreamResponse:
    """Try targets (failover before the first byte), then deliver the answer. `raw` is the
    client's body as it came: sent as it is when nothing had to change. `native_only`: the
    request cannot be translated (it sets a stateful parameter, say): only targets that speak
    its dialect are tried, and this is the error when the model has none."""
    ctx, rt = call.ctx, call.rt
    deadline = ctx.started + rt.config.server.request_timeout
    rewrite = rt.hooks_rewrite
    balancer = rt.balancers.get(ctx.model)
    if balancer is None:
        raise ModelNotFoundError(ctx.model)
    chain = (balancer, *(rt.balancers.get(name) for name in balancer.fallbacks))
    headers = ctx.response_headers
    raw_headers = call.request.raw_headers
    last_error: GatewayError | None = None
    cooling: TargetState | None = None  # a target paused by its upstream's 429
    soonest = float("inf")
    dialect = call.dialect
    if dialect is None:
        wanted = _WANTED[ctx.endpoint]
    else:
        wanted = frozenset({dialect.api}) if native_only else _wanted(dialect.api)
    for bal in chain:
        if bal is None:
            continue
        # Targets whose provider cannot answer this request at all are skipped.
        unfit = rt.unfit(bal, wanted)
        if len(unfit) == len(bal.targets):
            last_error = (
                last_error
                or native_only
                or InvalidRequestError(
                    f"No target of model '{bal.name}' answers {_named(wanted)} "
                    "(see providers.NAME.apis)",
                    param="model",
                )
            )
            continue
        tried: list[TargetState] = list(unfit)
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
            endpoint = ctx.endpoint
            if dialect is None:
                call.route = CHAT
                body = raw
                if (
                    rewrite
                    or target.model != ctx.model
                    or (ctx.stream and not ctx.client_wants_usage)
                ):
                    body = _upstream_body(ctx.body, target.model, ctx.stream, ctx.endpoint)
            elif dialect.api in rt.apis[target.provider]:
                # Native: the client's own body goes as it came, only the model renamed.
                call.route, endpoint = NATIVE, dialect.endpoint
                client_body = ctx.client_body or {}
                body = raw
                if client_body.get("model") != target.model:
                    body = jsonutil.dumps({**client_body, "model": target.model})
            else:  # translated: the canonical chat form to a chat target
                call.route = TRANSLATED
                body = _upstream_body(ctx.body, target.model, ctx.stream, ctx.endpoint)
            trace = call.start_attempt(target.provider, target.model) if call.span else b""
            upstream_started = time.monotonic()
            try:
                resp = await provider.send(
                    endpoint,
                    body,
                    stream=ctx.stream,
                    timeout=left,
                    client_headers=raw_headers,
                    trace_headers=trace,
                )
            except UpstreamBusyError as err:  # our pool to it is full: not its fault
                lease.neutral()
                call.end_attempt(error=err)
                last_error = err
                continue
            except (UpstreamError, UpstreamTimeoutError) as err:
                call.upstream_time += time.monotonic() - upstream_started
                lease.failure(err.message)
                call.end_attempt(error=err)
                last_error = err
                continue
            except BaseException:
                lease.neutral()
                call.end_attempt(error="cancelled")
                raise
            headers["x-aigw-provider"] = target.provider
            headers["x-aigw-model"] = target.model
            upstream_id = resp.headers.get("x-request-id") or resp.headers.get("request-id")
            ctx.upstream_request_id = upstream_id
            if resp.status >= 400:
                status_err = await status_error(resp, lease, target.provider)
                call.upstream_time += time.monotonic() - upstream_started
                call.end_attempt(resp.status, status_err)
                if status_err.client_fault:
                    raise status_err
                last_error = status_err
                continue
            result = await (deliver_stream if ctx.stream else deliver)(
                call, resp, lease, upstream_started
            )
            if not isinstance(result, GatewayError):
                return result
            call.upstream_time += time.monotonic() - upstream_started
            call.end_attempt(resp.status, result)
            last_error = result
    if cooling is not None and (last_error is None or last_error.status != 429):
        # Every target that could serve is paused at its upstream's request: the client gets
        # that upstream's 429, with the time left of the pause as its retry advice.
        raise cooling_error(cooling)
    if last_error is not None:
        raise last_error
    raise NoHealthyTargetError(
        f"No healthy target for model '{ctx.model}': every target is cooling down.",
        soonest if soonest != float("inf") else 1.0,
    )


#: What a target must answer to serve a request of each chat-dialect endpoint.
_WANTED: dict[str, frozenset[str]] = {
    "chat/completions": frozenset({"chat"}),
    "completions": frozenset({"completions"}),
    "embeddings": frozenset({"embeddings"}),
}


def _wanted(api: str) -> frozenset[str]:
    """A request of another dialect: its own API natively, or chat through translation."""
    return frozenset({api, "chat"})


def _named(wanted: frozenset[str]) -> str:
    return " or ".join(sorted(f"the {api} API" for api in wanted))


async def count_natively(call: Call, raw: bytes) -> web.Response | None:
    """`messages/count_tokens` by a target of the model that speaks Messages (failover between
    them as for any request); None when the model has no such target (the caller estimates)."""
    ctx, rt = call.ctx, call.rt
    balancer = rt.balancers.get(ctx.model)
    if balancer is None:
        raise ModelNotFoundError(ctx.model)
    unfit = rt.unfit(balancer, _MESSAGES_NATIVE)
    if len(unfit) == len(balancer.targets):
        return None
    tried: list[TargetState] = list(unfit)
    deadline = ctx.started + rt.config.server.request_timeout
    client_body = ctx.client_body or {}
    last_error: GatewayError | None = None
    for _ in range(balancer.retries + 1):
        lease = balancer.acquire(tried)
        if lease is None:
            break
        target = lease.target
        tried.append(target)
        ctx.provider, ctx.target = target.provider, target.id
        body = raw
        if client_body.get("model") != target.model:
            body = jsonutil.dumps({**client_body, "model": target.model})
        trace = call.start_attempt(target.provider, target.model) if call.span else b""
        try:
            resp = await rt.providers[target.provider].send(
                "messages/count_tokens",
                body,
                stream=False,
                timeout=max(deadline - time.monotonic(), 0.001),
                client_headers=call.request.raw_headers,
                trace_headers=trace,
            )
        except (UpstreamError, UpstreamTimeoutError) as err:
            lease.failure(err.message)
            call.end_attempt(error=err)
            last_error = err
            continue
        except BaseException:
            lease.neutral()
            call.end_attempt(error="cancelled")
            raise
        if resp.status >= 400:
            status_err = await status_error(resp, lease, target.provider)
            call.end_attempt(resp.status, status_err)
            if status_err.client_fault:
                raise status_err
            last_error = status_err
            continue
        try:
            answer = await resp.read()
        except GatewayError as err:
            lease.failure(err.message)
            call.end_attempt(resp.status, err)
            last_error = err
            continue
        finally:
            resp.close()
        lease.success()
        call.end_attempt(resp.status)
        headers = client_headers(resp.headers, ctx.response_headers)
        headers.setdefault("Content-Type", "application/json")
        return web.Response(status=resp.status, body=answer, headers=headers)
    raise last_error or NoHealthyTargetError(
        f"No healthy target for model '{ctx.model}' that counts tokens.", 1.0
    )


_MESSAGES_NATIVE = frozenset({"messages"})


def _upstream_body(body: dict[str, object], model: str, stream: bool, endpoint: str) -> bytes:
    """The body for a target: its model name, and usage always asked for on streams (quotas
    are exact; the usage chunk is taken out again when the client did not ask)."""
    out = dict(body)
    out["model"] = model
    if stream and endpoint != "embeddings":
        opts = out.get("stream_options")
        opts = dict(opts) if isinstance(opts, dict) else {}
        opts["include_usage"] = True
        out["stream_options"] = opts
    return jsonutil.dumps(out)


async def status_error(resp: UpstreamResponse, lease: Lease, provider: str) -> GatewayError:
    """Turn an upstream error status into an error, charging the target only for its faults
    (see the module docstring)."""
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


def cooling_error(target: TargetState) -> GatewayError:
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
