"""The pass-through endpoints: images, speech, transcriptions, moderations.

No translation: the client's body goes to a target whose `apis` list the endpoint's API, the
model renamed for it, and the answer (JSON, text or audio bytes) comes back as the target sent
it. The same auth, rate limits, balancer, failover, metrics and audit as every request; usage is
recorded where the answer carries it (a transcription's tokens).

A multipart upload (a transcription) is streamed to the upstream as the client sends it, never
held whole (`aigw.multipart` reads only its head, to route it). Such a body can be sent once: a
target that fails before taking any of it is failed over, one that fails later is the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from aigw import jsonutil
from aigw.call import Call
from aigw.delivery import CLIENT_CLOSED
from aigw.errors import (
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    NoHealthyTargetError,
    UpstreamBusyError,
    UpstreamError,
    UpstreamTimeoutError,
)
from aigw.forward import status_error
from aigw.headers import client_headers
from aigw.multipart import FormHead
from aigw.providers.base import PASS_THROUGH_ENDPOINTS, StreamedBody
from aigw.streaming import usage_from_body

if TYPE_CHECKING:
    from aigw.health import Lease, TargetState
    from aigw.providers.base import UpstreamResponse

#: Answers read whole (and their usage looked for); anything else streams back as it comes.
_WHOLE = ("application/json", "text/")


class Upload:
    """A multipart body: the head read to route it, and the rest still with the client."""

    __slots__ = ("content_type", "form", "length", "rest")

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

    def body(self, model: str, max_bytes: int) -> StreamedBody:
        """The body for a target whose model is `model`, its length adjusted to the rename."""
        head = self.form.rename(model)
        length = self.length
        if length is not None:
            length += len(head) - len(self.form.head)
        return StreamedBody(self.rest, length=length, max_bytes=max_bytes, head=head)


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
            body = upload.body(target.model, limit)
        elif ctx.body.get("model") != target.model:
            body = jsonutil.dumps({**ctx.body, "model": target.model})
        else:
            body = raw
        started = time.monotonic()
        try:
            resp = await rt.providers[target.provider].forward(
                ctx.endpoint,
                body,
                content_type=content_type,
                timeout=left,
                client_headers=call.request.raw_headers,
            )
        except UpstreamBusyError as err:
            lease.neutral()
            last_error = err
            if _spent(body):
                raise
            continue
        except (UpstreamError, UpstreamTimeoutError) as err:
            call.upstream_time += time.monotonic() - started
            lease.failure(err.message)
            last_error = err
            if _spent(body):
                raise
            continue
        except BaseException:
            lease.neutral()  # the client's own body failed (413, a broken upload), or it left
            raise
        call.ctx.response_headers["x-aigw-provider"] = target.provider
        call.ctx.response_headers["x-aigw-model"] = target.model
        ctx.upstream_request_id = resp.headers.get("x-request-id")
        if resp.status >= 400:
            refused = await status_error(resp, lease, target.provider)
            call.upstream_time += time.monotonic() - started
            if refused.client_fault or _spent(body):
                raise refused
            last_error = refused
            continue
        return await _answer(call, resp, lease, started)
    raise last_error or NoHealthyTargetError(
        f"No healthy target for model '{ctx.model}': every target is cooling down.", 1.0
    )


def _spent(body: bytes | StreamedBody) -> bool:
    """A streamed body some of which is gone: it cannot be sent to another target."""
    return isinstance(body, StreamedBody) and not body.replayable


async def _answer(
    call: Call, resp: UpstreamResponse, lease: Lease, started: float
) -> web.StreamResponse:
    ctx = call.ctx
    headers = client_headers(resp.headers, ctx.response_headers)
    content_type = resp.headers.get("content-type", "application/octet-stream")
    if content_type.startswith(_WHOLE):
        try:
            body = await resp.read()
        except GatewayError as err:
            resp.close()
            lease.failure(err.message)
            raise
        except BaseException:
            lease.neutral()
            raise
        lease.success()
        call.upstream_time += time.monotonic() - started
        ctx.usage = usage_from_body(body) if content_type.startswith("application/json") else None
        ctx.status = resp.status
        await call.settle(ctx.usage)
        call.done(resp.status)
        return web.Response(status=resp.status, body=body, headers=headers)
    # Binary (speech): streamed on as it comes, within the request deadline.
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
            async for data in chunks:
                await out.write(data)
            await out.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        lease.neutral()
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
    await call.settle(None)
    call.done(resp.status, call.upstream_time + (time.monotonic() - started))
    return out
