"""A real OTLP/HTTP trace receiver for tests: an aiohttp server on 127.0.0.1 that decodes
`POST /v1/traces` (protobuf, gzip or deflate as sent) with `opentelemetry-proto` into plain span
records. It can answer an error status, or hold every export unanswered until released (a
collector that accepts and never answers)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

_KINDS = {
    Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
_STATUS = {
    Status.STATUS_CODE_UNSET: "UNSET",
    Status.STATUS_CODE_OK: "OK",
    Status.STATUS_CODE_ERROR: "ERROR",
}


@dataclass
class EventRecord:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass
class SpanRecord:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str | None
    name: str
    kind: str  # "SERVER", "CLIENT", ...
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[EventRecord]
    status: str  # "UNSET", "OK", "ERROR"
    status_message: str
    resource: dict[str, Any]
    scope: str
    trace_state: str


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind is not None else None


def _attributes(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        assert isinstance(item, KeyValue)
        out[item.key] = _value(item.value)
    return out


def decode(body: bytes, encoding: str = "") -> list[SpanRecord]:
    """The spans of one OTLP/HTTP protobuf export request (`encoding`: its Content-Encoding,
    when the body is still compressed; aiohttp's server decompresses request bodies itself)."""
    if encoding == "gzip" and body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    elif encoding == "deflate" and body[:1] == b"\x78":
        body = zlib.decompress(body)
    request = ExportTraceServiceRequest.FromString(body)
    spans: list[SpanRecord] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=_KINDS[span.kind],
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        events=[
                            EventRecord(e.name, e.time_unix_nano, _attributes(e.attributes))
                            for e in span.events
                        ],
                        status=_STATUS[span.status.code],
                        status_message=span.status.message,
                        resource=resource,
                        scope=scope_spans.scope.name,
                        trace_state=span.trace_state,
                    )
                )
    return spans


@dataclass
class OtlpReceiver:
    """Start with `await OtlpReceiver().start()`; `endpoint` is its base URL."""

    status: int = 200  # answer every export with this status
    #: answers for the next exports, in order, before `status`: (status, headers)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    #: while set to an unset Event, exports are accepted and left unanswered until it is set
    hold: asyncio.Event | None = None
    spans: list[SpanRecord] = field(default_factory=list)
    headers: list[CIMultiDict[str]] = field(default_factory=list)  # of each export request
    exports: int = 0  # export requests received (answered or held)
    #: set when an export request arrives (held or not)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    scheme: str = "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> OtlpReceiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, ssl_context=ssl_context).start()
        self.scheme = "https" if ssl_context is not None else "http"
        return self

    async def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        self.exports += 1
        self.arrived.set()
        body = await request.read()
        self.headers.append(request.headers.copy())
        if self.hold is not None:
            await self.hold.wait()
        status, headers = self.script.pop(0) if self.script else (self.status, {})
        if status != 200:
            return web.Response(status=status, text="refused", headers=headers)
        self.spans.extend(decode(body, request.headers.get("Content-Encoding", "")))
        self._changed.set()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[SpanRecord]:
        """The spans received, once there are at least `count` (bounded by `timeout`)."""
        async with asyncio.timeout(timeout):
            while len(self.spans) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.spans


def by_name(spans: list[SpanRecord]) -> dict[str, list[SpanRecord]]:
    out: dict[str, list[SpanRecord]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out
