"""Handing an upstream's answer to the client: whole answers, streams, and replays as SSE.

A delivery either returns the client's response or, when the target failed before anything
reached the client, the `GatewayError` that says why (the failover loop tries the next target).

Streams pass through event by event (`StreamTap`); the whole exchange keeps to the request
deadline (a stream still running then is cut with an in-band error event), and so does one that
sends more than its `max_tokens` allows or runs past what the tenant's quota can cover. A stream
is complete once its `[DONE]` is delivered, whatever the upstream does after (the openai SDK
closes the connection right then). A client that goes away stops the upstream; what was
produced is still recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from aigw import jsonutil, sse
from aigw.cache import assemble_stream, replay_as_sse
from aigw.call import CHAT, NATIVE, TRANSLATED, Call
from aigw.dialects import Renderer
from aigw.errors import (
    GatewayBugError,
    GatewayError,
    QuotaExceededError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
    error_event,
)
from aigw.exchange import RequestContext, ResponseInfo, Usage
from aigw.headers import client_headers
from aigw.hooks.texts import stream_texts
from aigw.streaming import DONE_MARKERS, StreamTap, usage_from_body

if TYPE_CHECKING:
    from aigw.health import Lease
    from aigw.providers.base import UpstreamResponse

log = logging.getLogger("aigw.proxy")

_JSON_CT = "application/json"
#: Content chunks a stream may send past `max_tokens` * n before it is cut: role, filter and
#: empty keep-alive chunks carry no token, and some upstreams send a few of them.
MAX_TOKENS_SLACK = 16
#: How long the rest of an upstream body is awaited after [DONE] (its connection is then kept).
DRAIN_AFTER_DONE = 1.0
#: A delta event of a native Responses or Messages stream (`event: response.output_text.delta`,
#: `event: content_block_delta`): each holds at least one token.
NATIVE_DELTA = b"delta\ndata:"
#: Bytes of a stream's last events kept for its attempt span (tracing on): the answer's model,
#: id and finish reasons are read from them.
TRACED_TAIL = 4096
#: Status recorded for a request whose client went away first (nginx's convention).
CLIENT_CLOSED = 499
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


async def deliver(
    call: Call,
    resp: UpstreamResponse,
    lease: Lease,
    upstream_started: float,
    *,
    as_sse: bool = False,
) -> web.StreamResponse | GatewayError:
    """A whole (non-streamed) answer; `as_sse` replays it as a stream for a client that
    asked for one."""
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
    route, dialect = call.route, call.dialect
    parsed: dict[str, Any] | None = None
    if route != CHAT:  # a dialect's answer is read whole (its usage, its translation)
        try:
            loaded = jsonutil.loads(body)
        except ValueError:
            loaded = None
        if not isinstance(loaded, dict):
            return _target_failed(lease, UpstreamError("The upstream's answer is not JSON"))
        parsed = loaded
    lease.success()
    call.upstream_time += time.monotonic() - upstream_started
    ctx = call.ctx
    if route == NATIVE and dialect is not None and parsed is not None:
        ctx.usage = dialect.usage(parsed)
    else:
        ctx.usage = usage_from_body(body)
    ctx.status = resp.status
    attempt = call.attempt
    if attempt is not None:
        attempt.end(resp.status, usage=ctx.usage, answer=body)
        call.answer = body
    info = ResponseInfo(resp.status, body=body, usage=ctx.usage)
    try:
        await call.observe(info, may_reject=True)
    finally:
        await call.settle(ctx.usage, answered=True)
    if route != NATIVE:
        call.store(info.body)  # the canonical answer: each dialect renders it from the cache
    headers = client_headers(resp.headers, ctx.response_headers)
    headers.setdefault("Content-Type", _JSON_CT)
    call.done(resp.status)
    if route == TRANSLATED and dialect is not None and info.body is not None:
        return await render(call, info.body, ctx.usage, headers)
    if as_sse and info.body is not None:
        return await replay(call.request, ctx, info.body, headers)
    return web.Response(status=resp.status, body=info.body, headers=headers)


async def deliver_stream(
    call: Call, resp: UpstreamResponse, lease: Lease, upstream_started: float
) -> web.StreamResponse | GatewayError:
    """Stream the answer through (see the module docstring)."""
    ctx, rt, charge = call.ctx, call.rt, call.charge
    route, dialect = call.route, call.dialect
    content_type = resp.headers.get("content-type", "text/event-stream")
    if not content_type.startswith("text/event-stream"):
        if "json" in content_type:  # an upstream that ignores `stream`: replay its answer
            return await deliver(call, resp, lease, upstream_started, as_sse=True)
        resp.close()
        return _target_failed(
            lease, UpstreamError(f"The upstream answered a stream request with {content_type[:40]}")
        )
    native = route == NATIVE and dialect is not None
    attempt = call.attempt
    # The span's copy of the answer text (tracing.capture_content).
    captured = attempt is not None and _captures(call)
    tap = StreamTap(
        # A translated stream is read whole, usage included: its renderer needs it.
        strip_usage=route == CHAT and not ctx.client_wants_usage,
        # A native stream of another dialect is never cached (the cache keeps canonical
        # answers), but hooks that read answers (content filter, audit) still get its text.
        collect=(rt.wants_stream_text if native else rt.collect_stream) or captured,
        max_kept=rt.config.server.max_upstream_body,
        usage_of=dialect.stream_usage() if native and dialect is not None else None,
        done_markers=dialect.done_markers if native and dialect is not None else DONE_MARKERS,
    )
    # The client's shape of a translated stream (None: the upstream's bytes go as they came).
    renderer = dialect.stream(ctx.client_body or {}) if route == TRANSLATED and dialect else None
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
    tail = b""  # the last events read: the attempt span reads the answer's model, id, finish
    if attempt is not None:
        attempt.first_token()
        tail = first
    out = web.StreamResponse(
        status=200, headers={**client_headers(resp.headers, ctx.response_headers), **SSE_HEADERS}
    )
    ctx.status = 200
    # A native stream of another dialect has many events per token and no chat chunks to
    # count: it is neither cut at max_tokens nor extended here (its usage settles at the end).
    most = 0 if native else _max_stream_chunks(ctx)
    # Data events the quota reservation covers (0: no token quota holds this request): its
    # completion tokens and the role chunk. Past it, more is reserved or the stream is cut.
    covered = 0
    if charge.reservation is not None and charge.reservation.tokens and not native:
        covered = charge.estimate - charge.prompt_estimate + tap.preamble
    failure: GatewayError | None = None
    gone: BaseException | None = None  # the client went away (or cancelled the request)
    deltas = 0  # a native stream's delta events delivered (its estimate when it breaks)
    try:
        async with asyncio.timeout_at(when):
            await out.prepare(call.request)
            if renderer is not None:
                await out.write(renderer.start())
            data = first
            # [DONE] ends it: the client has everything (the openai SDK closes at once),
            # whether or not the upstream's end of body has arrived yet.
            while True:
                if most and tap.chunks > most:
                    await out.write(
                        _shaped(renderer, _without_last_events(data, tap.chunks - most))
                    )
                    tap.cut(tap.chunks - most)
                    failure = UpstreamError(
                        f"The upstream sent more than the request's max_tokens "
                        f"({most - MAX_TOKENS_SLACK}); the gateway cut the stream"
                    )
                    break
                while covered and tap.chunks > covered:
                    more = await call.extend()
                    if not more:
                        break
                    covered += more
                if covered and tap.chunks > covered:
                    await out.write(
                        _shaped(renderer, _without_last_events(data, tap.chunks - covered))
                    )
                    tap.cut(tap.chunks - covered)
                    failure = QuotaExceededError(
                        f"Tenant '{ctx.tenant}' ran out of token quota while this answer "
                        "was streaming; the gateway cut it."
                    )
                    break
                if data:
                    await out.write(data if renderer is None else _shaped(renderer, data))
                    if native:
                        deltas += data.count(NATIVE_DELTA)
                if tap.done:
                    break
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    rest = tap.flush()
                    if rest:
                        await out.write(rest if renderer is None else _shaped(renderer, rest))
                        if native:
                            deltas += rest.count(NATIVE_DELTA)
                    break
                data = tap.feed(chunk)
                if attempt is not None and data:
                    tail = (tail + data)[-TRACED_TAIL:]
        # A native stream of another dialect ends as its upstream ends it; a chat one must
        # have finished (its finish reason or [DONE] seen).
        if failure is None and not native and not tap.done and not tap.finished:
            failure = UpstreamError("The upstream closed the stream before it finished")
    except TimeoutError:
        failure = UpstreamTimeoutError(
            "The request deadline (server.request_timeout) passed; the gateway cut the stream"
        )
    except GatewayError as err:
        failure = err
    except asyncio.CancelledError as exc:
        if call.gw.drain_deadline.is_set():
            # Cancelled by the drain at shutdown: end the stream with the reason and its
            # proper end (the drain closes the connection after).
            failure = shutting_down()
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
        ctx.usage = tap.usage or _estimate(call, tap, deltas if native else None)
        if attempt is not None:
            attempt.end(200, usage=ctx.usage, answer=tail, error="the client went away")
        await call.settle(ctx.usage)
        await _after_stream(call, tap)
        _stream_done(call, upstream_started, ttft)
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
            call.log_upstream_failure(failure)
        ctx.status = failure.status
        if renderer is not None:
            event = renderer.fail(failure)
        elif native and dialect is not None:
            event = dialect.stream_error(failure)
        else:
            event = error_event(failure)
        with contextlib.suppress(ConnectionError):
            await out.write(event)
    else:
        lease.success()
        if renderer is not None:
            with contextlib.suppress(ConnectionError):
                await out.write(renderer.finish(tap.usage))
    ctx.usage = tap.usage or _estimate(call, tap, deltas if native else None)
    if attempt is not None:
        attempt.end(200, usage=ctx.usage, answer=tail, error=failure)
        call.error = failure
    await call.settle(ctx.usage)
    if failure is None and tap.done and call.cache_key is not None and tap.events and not native:
        call.store(assemble_stream(tap.events, ctx.endpoint, usage=tap.usage))
    await _after_stream(call, tap)
    _stream_done(call, upstream_started, ttft)
    if gone is not None:
        if isinstance(gone, asyncio.CancelledError):
            raise gone
        return out
    with contextlib.suppress(ConnectionError):
        await out.write_eof()
    if failure is None:
        await _drain(chunks, resp)
    return out


async def replay(
    request: web.BaseRequest, ctx: RequestContext, body: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    """Send a whole answer (cached, or from an upstream that ignored `stream`) as SSE."""
    for name in ("content-type", "Content-Type"):
        headers.pop(name, None)
    events = b"".join(replay_as_sse(body, ctx.endpoint, ctx.client_wants_usage))
    out = web.StreamResponse(status=200, headers={**headers, **SSE_HEADERS})
    await out.prepare(request)
    with contextlib.suppress(ConnectionError):
        await out.write(events)
        await out.write_eof()
    return out


async def render(
    call: Call, chat_answer: bytes, usage: Usage | None, headers: dict[str, str]
) -> web.StreamResponse:
    """A whole canonical (chat) answer in the client's dialect: one object, or as its stream
    when the client asked for one (an upstream that ignored `stream`, or a cached answer)."""
    ctx, dialect = call.ctx, call.dialect
    assert dialect is not None
    answer = jsonutil.loads(chat_answer)
    client_body = ctx.client_body or {}
    if not ctx.stream:
        headers["Content-Type"] = _JSON_CT
        body = jsonutil.dumps(dialect.answer(answer, client_body))
        return web.Response(status=200, body=body, headers=headers)
    renderer = dialect.stream(client_body)
    events = [renderer.start()]
    for frame in replay_as_sse(chat_answer, "chat/completions", True):
        payload = sse.data_of(frame)
        if payload is not None and payload[:1] == b"{":
            events.append(renderer.feed(jsonutil.loads(payload)))
    events.append(renderer.finish(usage))
    for name in ("content-type", "Content-Type"):
        headers.pop(name, None)
    out = web.StreamResponse(status=200, headers={**headers, **SSE_HEADERS})
    await out.prepare(call.request)
    with contextlib.suppress(ConnectionError):
        await out.write(b"".join(events))
        await out.write_eof()
    return out


async def replay_translated(call: Call, body: bytes, usage: Usage | None) -> web.StreamResponse:
    """A cached canonical answer, for a client of another dialect."""
    return await render(call, body, usage, call.ctx.response_headers)


def _shaped(renderer: Renderer | None, data: bytes) -> bytes:
    """Whole chat events from the upstream in the client's shape (as they are for chat)."""
    if renderer is None:
        return data
    out = b""
    for frame in sse.frames(data):
        payload = sse.data_of(frame)
        if payload is not None and payload[:1] == b"{":
            out += renderer.feed(jsonutil.loads(payload))
    return out


def shutting_down() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "The gateway is shutting down; this answer was cut at server.shutdown_timeout."
    )


def _target_failed(lease: Lease, err: GatewayError) -> GatewayError:
    """The target failed to deliver: charge it, and give the error to the failover loop."""
    lease.failure(err.message)
    return err


def _stream_done(call: Call, upstream_started: float, ttft: float) -> None:
    """Count a finished stream, including one the client abandoned (status 499)."""
    call.done(call.ctx.status, call.upstream_time + (time.monotonic() - upstream_started), ttft)


async def _after_stream(call: Call, tap: StreamTap) -> None:
    info = ResponseInfo(call.ctx.status, usage=call.ctx.usage)
    wanted, captured = call.rt.wants_stream_text, call.span is not None and _captures(call)
    if tap.events is not None and (wanted or captured):
        text = _stream_text(tap.events)
        if wanted:
            info.text = text
        if captured:
            call.answer = text
    await call.observe(info, may_reject=False)  # the answer is out: nothing can take it back


def _captures(call: Call) -> bool:
    """The request's span records the answer text (tracing.capture_content, sampled)."""
    tracing, span = call.gw.tracing, call.span
    return tracing is not None and tracing.capture_content and span is not None and span.recording


def _estimate(call: Call, tap: StreamTap, deltas: int | None = None) -> Usage | None:
    """A stream that ended without usage (client gone, upstream broke): count one token per
    content chunk delivered (`deltas`: per delta event of a native stream of another dialect,
    whose other events carry none), and the prompt by the quota estimator's rule."""
    if tap.chunks == 0:
        return None
    if deltas is not None:
        completion = deltas
    else:  # only the chunks that arrived: a stream cut short has no finish chunk nor [DONE]
        completion = max(0, tap.chunks - tap.preamble - tap.finished - tap.done)
    prompt = call.charge.prompt_estimate
    return Usage(prompt, completion, prompt + completion)


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
    """The answer text of a streamed answer in any dialect (for hooks that want it)."""
    parts: list[str] = []
    for event in events:
        payload = sse.data_of(event)
        if payload is None or payload[:1] != b"{":
            continue
        try:
            data: Any = jsonutil.loads(payload)
        except ValueError:
            continue
        if isinstance(data, dict):
            stream_texts(data, parts)
    return "".join(parts)
