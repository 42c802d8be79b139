"""aigw/otlp.py: the OTLP protobuf it writes, read back with opentelemetry-proto; and its
OTLP/HTTP sending (retries, a rejected batch, the timeout, TLS with a CA file, stopping) against
the real receiver of tests/otlp_receiver.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from aigw.otlp import LostSpansLog, OtlpHttpExporter, SpanEncoder
from tests.clock import FakeClock
from tests.otlp_receiver import OtlpReceiver, decode
from tests.test_transport import make_certs

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
RESOURCE = {"service.name": "aigw", "service.version": "0.1.0", "host.cores": 2}


def span(
    name: str = "POST /v1/chat/completions",
    *,
    span_id: int = 0x1111,
    parent: SpanContext | None = None,
    attributes: dict[str, Any] | None = None,
    events: tuple[Event, ...] = (),
    status: Status | None = None,
    kind: SpanKind = SpanKind.SERVER,
    state: TraceState | None = None,
) -> ReadableSpan:
    return ReadableSpan(
        name=name,
        context=SpanContext(TRACE_ID, span_id, False, TraceFlags(1), state),
        parent=parent,
        resource=Resource(RESOURCE),
        attributes=attributes or {},
        events=events,
        kind=kind,
        status=status or Status(StatusCode.UNSET),
        start_time=1_700_000_000_000_000_001,
        end_time=1_700_000_000_500_000_000,
        instrumentation_scope=InstrumentationScope("aigw", "0.1.0"),
    )


def encoder() -> SpanEncoder:
    return SpanEncoder(RESOURCE, "aigw", "0.1.0")


def test_spans_decode_with_opentelemetry_proto() -> None:
    remote = SpanContext(TRACE_ID, 0xB7AD6B7169203331, True, TraceFlags(1))
    attributes = {
        "text": "héllo ✓ 世界",
        "long": "x" * 300,  # a length that takes two varint bytes
        "negative": -5,
        "big": 2**62,
        "ratio": 0.25,
        "flag": True,
        "one": 1,
        "reasons": ("stop", "length"),
        "none": (),
    }
    server = span(
        parent=remote,
        attributes=attributes,
        state=TraceState([("congo", "t61rcWkgMzE")]),
        status=Status(StatusCode.ERROR, "every target failed"),
    )
    client = span(
        "chat gpt-4o",
        span_id=0x2222,
        parent=SpanContext(TRACE_ID, 0x1111, False, TraceFlags(1)),
        kind=SpanKind.CLIENT,
        # The same keys with values that are equal in Python (True == 1): not mixed up.
        attributes={"flag": 1, "one": True},
        events=(Event("gen_ai.first_token", {"chunk": 1}, 1_700_000_000_100_000_000),),
    )
    request = ExportTraceServiceRequest.FromString(encoder().encode([server, client, server]))

    [resource_spans] = request.resource_spans
    [scope_spans] = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("aigw", "0.1.0")
    got_server, got_client, again = scope_spans.spans
    assert again == got_server
    assert got_server.trace_id.hex() == f"{TRACE_ID:032x}"
    assert got_server.span_id.hex() == "0000000000001111"
    assert got_server.parent_span_id.hex() == "b7ad6b7169203331"
    assert got_server.trace_state == "congo=t61rcWkgMzE"
    assert got_server.kind == got_server.SPAN_KIND_SERVER
    assert got_server.start_time_unix_nano == 1_700_000_000_000_000_001
    assert got_server.end_time_unix_nano == 1_700_000_000_500_000_000
    assert got_server.flags == 0x301  # sampled, with a remote parent
    assert got_server.status.code == got_server.status.STATUS_CODE_ERROR
    assert got_server.status.message == "every target failed"

    [decoded_server, decoded_client, _] = decode(request.SerializeToString())
    assert decoded_server.resource == RESOURCE
    assert decoded_server.attributes == {**attributes, "reasons": ("stop", "length")}
    assert decoded_client.attributes == {"flag": 1, "one": True}
    assert isinstance(decoded_client.attributes["one"], bool)
    assert not isinstance(decoded_client.attributes["flag"], bool)
    assert decoded_client.kind == "CLIENT"
    assert decoded_client.parent_span_id == "0000000000001111"
    assert got_client.flags == 0x101  # sampled, the parent is local
    assert got_client.status.code == got_client.status.STATUS_CODE_UNSET
    [event] = decoded_client.events
    assert (event.name, event.time_ns, event.attributes) == (
        "gen_ai.first_token",
        1_700_000_000_100_000_000,
        {"chunk": 1},
    )


def test_remembered_fields_stay_right_past_their_limit() -> None:
    """Values that repeat are remembered encoded, up to a bound: ever-new values (request ids,
    span names) start the memory over, and every span still says what it should."""
    target = encoder()
    spans = [
        span(f"GET /v1/models/m{i}", span_id=i + 1, attributes={"id": f"req-{i}", "n": i % 7})
        for i in range(10_000)
    ]
    decoded = decode(b"".join(target.encode(spans[i : i + 500]) for i in range(0, 10_000, 500)))
    assert [(s.name, s.attributes) for s in decoded] == [
        (f"GET /v1/models/m{i}", {"id": f"req-{i}", "n": i % 7}) for i in range(10_000)
    ]


class Rendered:
    def __init__(self, text: str) -> None:
        self.text = text
        self.rendered = 0

    def render(self) -> str:
        self.rendered += 1
        return self.text


def test_values_with_render_are_rendered_at_encoding() -> None:
    content = Rendered('[{"role":"user"}]')
    [decoded] = decode(encoder().encode([span(attributes={"gen_ai.input.messages": content})]))
    assert decoded.attributes == {"gen_ai.input.messages": '[{"role":"user"}]'}
    assert content.rendered == 1


# --- sending -----------------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    found = await OtlpReceiver().start()
    yield found
    await found.stop()


def exporter(url: str, *, timeout: float = 10.0, **kwargs: Any) -> OtlpHttpExporter:
    return OtlpHttpExporter(
        url + "/v1/traces",
        headers={"x-api-key": "k"},
        timeout=timeout,
        encoder=encoder(),
        lost=LostSpansLog(url, FakeClock()),
        **kwargs,
    )


async def export(target: OtlpHttpExporter, count: int = 3) -> SpanExportResult:
    spans = [span(span_id=i + 1) for i in range(count)]
    result: SpanExportResult = await asyncio.to_thread(target.export, spans)
    return result


async def test_retryable_answers_are_retried(receiver: OtlpReceiver) -> None:
    receiver.script = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"})]
    target = exporter(receiver.endpoint)
    assert await export(target) is SpanExportResult.SUCCESS
    assert receiver.exports == 3
    assert len(receiver.spans) == 3
    assert (target.exported, target.failed) == (3, 0)
    headers = receiver.headers[0]
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["Content-Encoding"] == "gzip"
    assert headers["X-Api-Key"] == "k"


async def test_a_rejected_batch_is_not_retried(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [(400, {})]
    target = exporter(receiver.endpoint)
    assert await export(target) is SpanExportResult.FAILURE
    assert receiver.exports == 1
    assert (target.exported, target.failed) == (0, 3)
    assert (
        f"tracing: spans to {receiver.endpoint} are being lost: the collector answered HTTP 400"
        in (caplog.text)
    )


async def test_retries_stop_at_the_export_timeout(receiver: OtlpReceiver) -> None:
    """The next try would come after the first backoff (~1s), past the timeout: given up."""
    receiver.status = 503
    target = exporter(receiver.endpoint, timeout=0.3)
    assert await export(target) is SpanExportResult.FAILURE
    assert receiver.exports == 1


async def test_stopping_ends_the_wait_between_retries(receiver: OtlpReceiver) -> None:
    receiver.script = [(503, {"Retry-After": "3600"})]
    target = exporter(receiver.endpoint, timeout=7200)
    task = asyncio.create_task(export(target))
    await asyncio.wait_for(receiver.arrived.wait(), 30)
    target.shutdown()  # what Tracing.shutdown does when the collector is slow
    assert await asyncio.wait_for(task, 30) is SpanExportResult.FAILURE
    assert receiver.exports == 1


class Broken:
    def render(self) -> str:
        raise RuntimeError("redaction bug")


async def test_a_failure_inside_the_exporter_loses_the_batch_not_the_thread(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    target = exporter(receiver.endpoint)
    broken = [span(attributes={"gen_ai.input.messages": Broken()})]
    for _ in range(3):
        assert await asyncio.to_thread(target.export, broken) is SpanExportResult.FAILURE
    assert await export(target) is SpanExportResult.SUCCESS  # the next batch goes out
    assert (target.exported, target.failed) == (3, 3)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [
        f"tracing: spans to {receiver.endpoint} are being lost: RuntimeError: redaction bug"
    ]


async def test_a_refused_connection_is_a_lost_batch(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    caplog.set_level(logging.WARNING, "aigw.tracing")
    target = exporter(f"http://127.0.0.1:{port}", timeout=0.2)
    assert await export(target) is SpanExportResult.FAILURE
    assert "cannot reach the collector: Connection refused" in caplog.text


async def test_https_collector_verified_with_the_ca_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certs = make_certs(tmp_path)
    receiver = await OtlpReceiver().start(ssl_context=certs.server_ctx)
    try:
        assert receiver.endpoint.startswith("https://")
        trusted = exporter(receiver.endpoint, ca_file=str(certs.ca_file))
        assert await export(trusted) is SpanExportResult.SUCCESS
        assert len(receiver.spans) == 3

        stranger = exporter(receiver.endpoint, ca_file=str(certs.other_ca_file), timeout=0.2)
        assert await export(stranger) is SpanExportResult.FAILURE
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    finally:
        await receiver.stop()


def test_the_log_says_it_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    lost = LostSpansLog("http://collector:4318/v1/traces", clock)
    caplog.set_level(logging.WARNING, "aigw.tracing")
    say: Callable[[str], None] = lost.log
    for _ in range(100):
        say("the collector answered HTTP 503")
    clock.advance(60)
    say("cannot reach the collector: Connection refused")
    assert [r.getMessage() for r in caplog.records] == [
        "tracing: spans to http://collector:4318/v1/traces are being lost: the collector "
        "answered HTTP 503",
        "tracing: spans to http://collector:4318/v1/traces are being lost: cannot reach the "
        "collector: Connection refused (99 more like it in the last 60s)",
    ]
