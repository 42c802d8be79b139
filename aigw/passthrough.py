"""The pass-through endpoints: images, speech, transcriptions, moderations.

No translation: the client's body goes to a target whose `apis` list the endpoint's API, the
model renamed for it, and the answer (JSON, text or audio bytes) comes back as the target sent
it. The same auth, rate limits, balancer, failover, metrics and audit as every request; usage is
recorded where the answer carries it (a transcription's tokens).

A multipart upload (a transcription) is streamed to the upstream as the client sends it, never
held whole (`aigw.multipart` reads only its head, to route it). Its first `REPLAY_LIMIT` bytes
are kept while it is sent: a target that refuses it (or fails) having taken no more than that is
failed over, the next one getting the kept bytes again before the rest; past it, the upload is
spent and the target's answer is the client's.

Usage is read in either shape an answer carries it: chat's (`prompt_tokens`) or the one images,
audio and the Responses API use (`input_tokens`), from a JSON answer or from the events of a
streamed one (speech with `stream_format: sse`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from aigw import jsonutil, sse
from aigw.call import Call
from aigw.delivery import CLIENT_CLOSED
from aigw.dialects import responses
from aigw.errors import (
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    NoHealthyTargetError,
    UpstreamBusyError,
    UpstreamError,
    UpstreamTimeoutError,
)
from aigw.exchange import Usage
from aigw.forward import status_error
from aigw.headers import client_headers
from aigw.multipart import FormHead
from aigw.providers.base import PASS_THROUGH_ENDPOINTS, StreamedBody

if TYPE_CHECKING:
    from aigw.health import Lease, TargetState
    from aigw.providers.base import UpstreamResponse

#: Answers read whole (and their usage looked for); anything else streams back as it comes.
_WHOLE = ("application/json", "text/")
_EVENT_STREAM = "text/event-stream"  # text, but streamed
#: The most of an upload kept for another target after one refused it (see the docstring).
REPLAY_LIMIT = 1024 * 1024


class Upload:
    """A multipart body: the head read to route it, and the rest still with the client; what
    was taken of the rest is kept up to `REPLAY_LIMIT` bytes, for another target."""

    __slots__ = ("_kept", "_kept_size", "content_type", "form", "length", "replayable", "rest")

    def __init__(
        self,
        form: FormHead,
        rest: AsyncIterator[bytes],
        *,
        content_type: str,
        length: int | None,
    ) -> None:
        self.form = form
        self.rest = rest
        self.content_type = content_type
        self.length = length
        self._kept: list[bytes] = []
        self._kept_size = 0
        #: whether every byte taken from the client is still kept (another target may have it)
        self.replayable = True

    def body(self, model: str, max_bytes: int) -> StreamedBody:
        """The body for a target whose model is `model` (its length adjusted to the rename):
        the head, what an earlier attempt took, then the rest as the client sends it."""
        head = self.form.rename(model)
        length = self.length
        if length is not None:
            length += len(head) - len(self.form.head)
        head += b"".join(self._kept)
        return StreamedBody(self._taken(), length=length, max_bytes=max_bytes, head=head)

    async def _taken(self) -> AsyncIterator[bytes]:
        async for data in self.rest:
            if self.replayable:
                self._kept_size += len(data)
                if self._kept_size <= REPLAY_LIMIT:
                    self._kept.append(data)
                    # A client's buffered body is read without a pause: give the target's
                    # answer (a refusal, say) its turn while the upload may still go elsewhere.
                    await asyncio.sleep(0)
                else:  # too much to keep: this attempt is the last
                    self.replayable = False
                    self._kept = []
            yield data


async def pass_through(call: Call, raw: bytes, upload: Upload | None) -> web.StreamResponse:
    """Try targets that answer the endpoint's API, then hand the answer back."""
    ctx, rt = call.ctx, call.rt
    api = PASS_THROUGH_ENDPOINTS[ctx.endpoint]
    balancer = rt.balancers.get(ctx.model)
    if balancer is None:
        raise ModelNotFoundError(ctx.model)
    unfit = rt.unfit(balancer, frozenset({api}))
    if len(unfit) == len(balancer.targets):
        raise InvalidRequestError(
            f"No target of model '{ctx.model}' answers the {api} API (see providers.NAME.apis)",
            param="model",
        )
    tried: list[TargetState] = list(unfit)
    deadline = ctx.started + rt.config.server.request_timeout
    limit = rt.config.server.max_body_size
    content_type = (
        upload.content_type
        if upload is not None
        else call.request.headers.get("Content-Type", "application/json")
    )
    last_error: GatewayError | None = None
    for _ in range(balancer.retries + 1):
        lease = balancer.acquire(tried)
        if lease is None:
            break
        target = lease.target
        tried.append(target)
        ctx.provider, ctx.target = target.provider, target.id
        left = deadline - time.monotonic()
        if left <= 0:
            lease.neutral()
            raise UpstreamTimeoutError("The request deadline passed before an upstream answered")
        body: bytes | StreamedBody
        if upload is not None:
            try:
                body = upload.body(target.model, limit)
            except BaseException:
                lease.neutral()  # the client's body is at fault (its declared length)
                raise
        elif ctx.body.get("model") != target.model:
            body = jsonutil.dumps({**ctx.body, "model": target.model})
        else:
            body = raw
        trace = call.start_attempt(target.provider, target.model) if call.span else b""
        started = time.monotonic()
        try:
            resp = await rt.providers[target.provider].forward(
                ctx.endpoint,
                body,
                content_type=content_type,
                timeout=left,
                client_headers=call.request.raw_headers,
                trace_headers=trace,
            )
        except UpstreamBusyError as err:
            lease.neutral()
            call.end_attempt(error=err)
            last_error = err
            if _spent(upload):
                raise
            continue
        except (UpstreamError, UpstreamTimeoutError) as err:
            call.upstream_time += time.monotonic() - started
            lease.failure(err.message)
            call.end_attempt(error=err)
            last_error = err
            if _spent(upload):
                raise
            continue
        except BaseException as exc:
            lease.neutral()  # the client's own body failed (413, a broken upload), or it left
            call.end_attempt(error=exc if isinstance(exc, GatewayError) else "cancelled")
            raise
        call.ctx.response_headers["x-aigw-provider"] = target.provider
        call.ctx.response_headers["x-aigw-model"] = target.model
        ctx.upstream_request_id = resp.headers.get("x-request-id")
        if resp.status >= 400:
            refused = await status_error(resp, lease, target.provider)
            call.upstream_time += time.monotonic() - started
            call.end_attempt(resp.status, refused)
            if refused.client_fault or _spent(upload):
                raise refused
            last_error = refused
            continue
        return await _answer(call, resp, lease, started)
    raise last_error or NoHealthyTargetError(
        f"No healthy target for model '{ctx.model}': every target is cooling down.", 1.0
    )


def _spent(upload: Upload | None) -> bool:
    """An upload some of which is gone: it cannot be sent to another target."""
    return upload is not None and not upload.replayable


async def _answer(
    call: Call, resp: UpstreamResponse, lease: Lease, started: float
) -> web.StreamResponse:
    ctx = call.ctx
    headers = client_headers(resp.headers, ctx.response_headers)
    content_type = resp.headers.get("content-type", "application/octet-stream")
    if content_type.startswith(_WHOLE) and not content_type.startswith(_EVENT_STREAM):
        try:
            body = await resp.read()
        except GatewayError as err:
            resp.close()
            lease.failure(err.message)
            call.end_attempt(resp.status, err)
            raise
        except BaseException:
            lease.neutral()
            call.end_attempt(resp.status, "cancelled")
            raise
        lease.success()
        call.upstream_time += time.monotonic() - started
        ctx.usage = _usage_of_json(body) if content_type.startswith("application/json") else None
        ctx.status = resp.status
        if call.attempt is not None:
            call.attempt.end(resp.status, usage=ctx.usage)
        await call.settle(ctx.usage)
        call.done(resp.status)
        return web.Response(status=resp.status, body=body, headers=headers)
    # Binary (speech) and events: streamed on as it comes, within the request deadline.
    events = _StreamUsage() if content_type.startswith(_EVENT_STREAM) else None
    length = resp.body_length()
    if length is not None:
        headers["Content-Length"] = str(length)
    out = web.StreamResponse(status=resp.status, headers=headers)
    ctx.status = resp.status
    chunks = resp.iter_chunks()
    loop = asyncio.get_running_loop()
    deadline = ctx.started + call.rt.config.server.request_timeout
    try:
        async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
            await out.prepare(call.request)
            lease.first_byte()
            if call.attempt is not None:
                call.attempt.first_token()
            async for data in chunks:
                await out.write(data)
                if events is not None:
                    events.feed(data)
            await out.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        lease.neutral()
        call.end_attempt(resp.status, "the client went away")
        ctx.status = CLIENT_CLOSED
        await call.settle(None)
        call.done(CLIENT_CLOSED, call.upstream_time + (time.monotonic() - started))
        raise
    except (TimeoutError, GatewayError) as err:
        # Past the first byte: the answer is cut (a binary body has no in-band error).
        if isinstance(err, GatewayError):
            lease.failure(err.message)
        else:
            lease.neutral()
        call.end_attempt(resp.status, err if isinstance(err, GatewayError) else "timed out")
        call.error = err if isinstance(err, GatewayError) else None
        ctx.status = 502
        await call.settle(None)
        call.done(502, call.upstream_time + (time.monotonic() - started))
        with contextlib.suppress(Exception):
            out.force_close()
        return out
    finally:
        await chunks.aclose()
        resp.close()
    lease.success()
    ctx.usage = events.usage if events is not None else None
    if call.attempt is not None:
        call.attempt.end(resp.status, usage=ctx.usage)
    await call.settle(ctx.usage)
    call.done(resp.status, call.upstream_time + (time.monotonic() - started))
    return out


def _usage(data: object) -> Usage | None:
    """The usage of an answer object in either shape (see the module docstring)."""
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if isinstance(usage, dict) and "input_tokens" in usage:
        return responses.usage(usage)
    return Usage.from_json(usage)


def _usage_of_json(body: bytes) -> Usage | None:
    """The usage of a JSON answer (maybe megabytes of base64 images): where OpenAI puts it,
    last, from its key to the object's closing brace; else from the whole answer parsed."""
    idx = body.rfind(b'"usage"')
    if idx < 0:
        return None
    colon, end = body.find(b":", idx), body.rfind(b"}")
    try:
        found = _usage({"usage": jsonutil.loads(body[colon + 1 : end])})
    except ValueError:
        found = None
    if found is not None:
        return found
    try:
        return _usage(jsonutil.loads(body))
    except ValueError:
        return None


class _StreamUsage:
    """The usage in the events of a streamed answer, as they pass (the bytes go on as they came:
    only a copy of the event that carries a usage is parsed)."""

    __slots__ = ("_framer", "usage")

    def __init__(self) -> None:
        self._framer: sse.Framer | None = sse.Framer()
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> None:
        framer = self._framer
        if framer is None:
            return
        try:
            complete = framer.feed(data)
        except sse.EventTooLarge:  # not ours to refuse: the usage is just not read
            self._framer = None
            return
        if b'"usage"' not in complete:
            return
        for frame in sse.frames(complete):
            payload = sse.data_of(frame)
            if payload is not None and b'"usage"' in payload:
                try:
                    found = _usage(jsonutil.loads(payload))
                except ValueError:
                    continue
                if found is not None:
                    self.usage = found
