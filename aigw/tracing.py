"""OpenTelemetry traces (the `otel` extra): a server span per request, a client span per upstream
attempt, with the GenAI semantic conventions, exported over OTLP/HTTP off the request path.

    tracing = build_tracing(config.tracing)        # None when disabled: nothing is imported
    span = tracing.start_request("POST", "/v1/chat/completions", request.headers)
    span.request(model, body, stream=True)         # once the body is parsed (and hooks ran)
    attempt = span.attempt(provider_config, "gpt-4o-mini")   # one per upstream try
    attempt.inject(upstream_headers)               # traceparent (+ tracestate) for the upstream
                                                   # (or attempt.header_lines(): raw head lines)
    attempt.first_token()                          # the first streamed content
    attempt.end(200, usage=usage, answer=body)     # or end(error=err) when the try failed
    span.end(200, tenant="team-a", cache="miss", usage=usage, answer=body)
    await tracing.close()                          # flush, bounded by a timeout

The spans:

    POST /v1/chat/completions       SERVER  http.request.method, url.path, http.route,
    │                                       http.response.status_code, gen_ai.operation.name,
    │                                       gen_ai.request.model (the gateway model),
    │                                       gen_ai.request.max_tokens, gen_ai.request.stream,
    │                                       gen_ai.usage.*, aigw.tenant, aigw.cache.hit,
    │                                       aigw.request_id, error.type; with capture_content
    │                                       gen_ai.input.messages, gen_ai.output.messages,
    │                                       gen_ai.system_instructions
    ├── chat gpt-4o-mini            CLIENT  gen_ai.operation.name, gen_ai.provider.name,
    │   (attempt 1, failed)                 gen_ai.request.model (the upstream model),
    │                                       server.address, server.port, aigw.provider,
    │                                       aigw.attempt, http.response.status_code, error.type
    └── chat gpt-4o-mini            CLIENT  ... + gen_ai.response.model, gen_ai.response.id,
        (attempt 2)                         gen_ai.response.finish_reasons, gen_ai.usage.*,
                                            gen_ai.response.time_to_first_chunk and the
                                            `gen_ai.first_token` event (streams)

A client's W3C `traceparent`/`tracestate` make the server span a child of the caller's span, and
every attempt sends its own `traceparent` upstream, so the upstream's spans hang under the try
that made them. Sampling is the SDK's `ParentBased(TraceIdRatioBased(sample_ratio))`: a caller's
sampled flag decides for its trace, `sample_ratio` for the traces aigw starts.

Status: an attempt that failed (no answer, or an HTTP error status) is ERROR; the server span is
ERROR for a 5xx or an exception, and keeps UNSET for a client's 4xx (HTTP semantic conventions),
with `error.type` set either way.

Why not the SDK's `Tracer`: its live `Span` validates every attribute under a lock as it is set,
~100 µs per request for these two spans on the bench VM. Here a span collects plain values while
the request runs and `end()` hands the SDK's batch processor one finished `ReadableSpan`, ~20 µs
for both (`bench/tracing_bench.py`). The sampler, the ids, the span types and the batch processor
are the SDK's; the OTLP/HTTP export is aigw/otlp.py's (the SDK exporter's encoding alone costs
~200 µs of the export thread per request, aigw/otlp.py's ~25).

Export: the batch processor's thread sends batches of up to 512 spans. At most `max_queue_size`
spans wait (those being sent included): past it a finished span is dropped at once, so a slow or
dead collector costs bounded memory and never blocks a request. The exporter retries within
`export_timeout`; spans being lost (a failing collector, a full queue) make at most one log line a
minute on `aigw.tracing`. `capture_content` texts are cut on the event loop (cheap slices) and
redacted with `aigw.redact.redact` in the export thread, as the audit log does in its writer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit

from aigw.config import OTEL_INSTALL_HINT, ProviderConfig, TracingConfig, missing_otel_module
from aigw.errors import ConfigError, ConfigProblem, GatewayError, UpstreamStatusError
from aigw.exchange import Usage
from aigw.genai import (
    OPERATIONS,
    Content,
    answer_finish_reasons,
    head_string,
    input_messages,
    output_messages,
    provider_name,
    request_settings,
    usage_attributes,
)
from aigw.otlp import LostSpansLog, OtlpHttpExporter, SpanEncoder

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import SpanContext

log = logging.getLogger("aigw.tracing")

#: The event on an attempt span when its first streamed content arrived.
FIRST_TOKEN_EVENT: Final = "gen_ai.first_token"
#: How long `shutdown()` waits for the last spans to reach the collector by default.
SHUTDOWN_TIMEOUT: Final = 5.0
#: Spans per export request (the SDK's default).
MAX_EXPORT_BATCH: Final = 512
#: How often (seconds) a failing collector may write a line to the log.
LOG_INTERVAL: Final = 60.0

# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; a later version may append
# fields after a "-", version 00 may not.
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def build_tracing(
    config: TracingConfig, *, clock: Callable[[], float] = time.monotonic
) -> Tracing | None:
    """The tracer for `config`, or None when tracing is disabled (then nothing of OpenTelemetry
    is imported, and the request path checks one attribute for None).

    Raises ConfigError when tracing is enabled but the `otel` extra is not installed (the config
    loader says so first; this covers a config built in code). `clock` times the log limit."""
    if not config.enabled:
        return None
    module = missing_otel_module()
    if module is not None:
        message = (
            "tracing is enabled but the OpenTelemetry packages are not installed "
            f"(no module {module})"
        )
        raise ConfigError([ConfigProblem("", None, "tracing.enabled", message, OTEL_INSTALL_HINT)])
    return Tracing(config, clock=clock)


@dataclass(frozen=True, slots=True)
class TracingStats:
    ended: int  # recorded spans that ended
    exported: int  # spans the collector took
    failed: int  # spans whose export failed (collector down, refused, timed out)
    dropped: int  # spans never sent: the export queue was full


class Tracing:
    """The tracer of one gateway: built once from the config (`build_tracing`), used from the
    event loop, closed at shutdown."""

    def __init__(
        self, config: TracingConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
            TraceState,
            set_span_in_context,
        )

        from aigw import __version__

        self.config = config
        self.capture_content = config.capture_content
        # What the request path needs, looked up once.
        self._readable_span = ReadableSpan
        self._span_context = SpanContext
        self._event = Event
        self._trace_state = TraceState
        self._non_recording = NonRecordingSpan
        self._in_context = set_span_in_context
        self._server, self._client = SpanKind.SERVER, SpanKind.CLIENT
        self._ok = Status(StatusCode.UNSET)
        self._status, self._error_code = Status, StatusCode.ERROR
        self._sampled, self._not_sampled = TraceFlags(TraceFlags.SAMPLED), TraceFlags(0)
        self._ids = RandomIdGenerator()
        self._ratio = TraceIdRatioBased(config.sample_ratio)
        self._sampler: Sampler = ParentBased(self._ratio)
        self._record_and_sample = Decision.RECORD_AND_SAMPLE
        self._resource = Resource.create(
            {"service.name": config.service_name, "service.version": __version__}
        )
        self._scope = InstrumentationScope("aigw", __version__)
        self._upstreams: dict[tuple[str, str, str], _Upstream] = {}
        self._queued = 0  # spans handed to the batch processor
        self._dropped = 0
        self._capacity = config.max_queue_size
        self._closed = False

        self._lost = LostSpansLog(config.export_url(), clock)
        self._exporter = OtlpHttpExporter(
            config.export_url(),
            headers=config.headers,
            timeout=config.export_timeout,
            encoder=SpanEncoder(self._resource.attributes, "aigw", __version__),
            lost=self._lost,
            ca_file=config.ca_file,
            user_agent=f"aigw/{__version__}",
        )
        self._processor: BatchSpanProcessor = BatchSpanProcessor(
            cast("SpanExporter", self._exporter),  # duck-typed: aigw/otlp.py imports no OTel
            max_queue_size=config.max_queue_size,
            max_export_batch_size=min(MAX_EXPORT_BATCH, config.max_queue_size),
        )

    # --- the request path ---

    def start_request(
        self,
        method: str,
        route: str,
        headers: Mapping[str, str],
        *,
        path: str | None = None,
        request_id: str = "",
    ) -> RequestSpan:
        """The server span of one request, started now. `route` is the path template (low
        cardinality: `/v1/models/{model}`, not the model; the span's name), `path` the path as
        sent when it differs; `headers` are the client's, read for `traceparent`/`tracestate`."""
        parent = _remote_parent(self, headers) if "traceparent" in headers else None
        name = f"{method} {route}"
        if parent is None:
            trace_id = self._ids.generate_trace_id()
            # ParentBased's rule for a root span is its TraceIdRatioBased's, applied here with
            # the sampler's own bound: the sampler call costs ~2 µs, this ~0.1.
            sampled = trace_id & self._ratio.TRACE_ID_LIMIT < self._ratio.bound
        else:
            trace_id = parent.trace_id
            context = self._in_context(self._non_recording(parent))
            decision = self._sampler.should_sample(context, trace_id, name, self._server)
            sampled = decision.decision is self._record_and_sample
        recording = sampled and not self._closed
        span_context = self._span_context(
            trace_id,
            self._ids.generate_span_id(),
            False,
            self._sampled if recording else self._not_sampled,
            parent.trace_state if parent is not None else None,
        )
        return RequestSpan(
            self, span_context, parent, name, method, route, path or route, request_id, recording
        )

    def upstream(self, provider: ProviderConfig) -> _Upstream:
        """What an attempt span says about a provider (worked out once per provider)."""
        key = (provider.name, provider.type, provider.base_url)
        found = self._upstreams.get(key)
        if found is None:
            if len(self._upstreams) >= 1024:  # reloads with ever-new providers: stay bounded
                self._upstreams.clear()
            found = self._upstreams[key] = _Upstream.of(provider)
        return found

    def _finish(self, span: ReadableSpan) -> None:
        if self._closed:
            return
        exporter = self._exporter
        # Spans queued or being sent; the processor's own queue never holds more. Checked here
        # because the processor logs a line for every span it drops (~10 µs each).
        if self._queued - exporter.exported - exporter.failed >= self._capacity:
            self._dropped += 1
            self._lost.log(f"the export queue is full ({self._capacity} spans)")
            return
        self._queued += 1
        self._processor.on_end(span)

    # --- lifecycle ---

    def stats(self) -> TracingStats:
        exporter = self._exporter
        return TracingStats(
            self._queued + self._dropped, exporter.exported, exporter.failed, self._dropped
        )

    def flush(self) -> bool:
        """Export everything queued now, in the calling thread (blocking: as long as the
        collector takes, `export_timeout` per batch at most). False once shut down."""
        return self._processor.force_flush()

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Send what is queued and stop, within `timeout` seconds whatever the collector does
        (a stuck export is left to finish or time out on its own daemon thread). Blocking: from
        the event loop use `close()`."""
        if self._closed:
            return
        self._closed = True
        self._exporter.deadline = time.monotonic() + timeout
        stopper = threading.Thread(target=self._stop, name="aigw-tracing-shutdown", daemon=True)
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            log.warning(
                "tracing: the collector at %s did not take the last spans within %.3gs; "
                "they are dropped",
                self.config.export_url(),
                timeout,
            )
            self._exporter.shutdown()  # no more retries for the export still running

    def _stop(self) -> None:
        self._processor.shutdown()  # type: ignore[no-untyped-call]  # unannotated in the SDK

    async def close(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """`shutdown()` off the event loop."""
        await asyncio.to_thread(self.shutdown, timeout)


class RequestSpan:
    """The server span of one request. Not recording (not sampled) it still hands out attempt
    contexts, so the upstream learns the trace and that it is not sampled."""

    __slots__ = (
        "_attempts",
        "_tracing",
        "attributes",
        "context",
        "ended",
        "inherited",
        "name",
        "operation",
        "parent",
        "recording",
        "start_ns",
    )

    def __init__(
        self,
        tracing: Tracing,
        context: SpanContext,
        parent: SpanContext | None,
        name: str,
        method: str,
        route: str,
        path: str,
        request_id: str,
        recording: bool,
    ) -> None:
        self._tracing = tracing
        self.context = context
        self.parent = parent
        self.name = name
        self.recording = recording
        self.ended = False
        self._attempts = 0
        #: what every attempt span repeats of the request (`request()`)
        self.inherited: dict[str, Any] = {}
        endpoint = route.removeprefix("/v1/")
        self.operation = OPERATIONS.get(endpoint, endpoint)
        self.start_ns = time.time_ns()
        self.attributes: dict[str, Any] = (
            {
                "http.request.method": method,
                "url.path": path,
                "http.route": route,
            }
            if recording
            else {}
        )
        if recording and request_id:
            self.attributes["aigw.request_id"] = request_id
        if recording and endpoint in OPERATIONS:
            self.attributes["gen_ai.operation.name"] = self.operation

    @property
    def trace_id(self) -> str:
        return f"{self.context.trace_id:032x}"

    def request(self, model: str, body: Mapping[str, Any], *, stream: bool = False) -> None:
        """What the client asked for, once the body is parsed: the gateway model, max_tokens,
        sampling settings, and (capture_content) the prompt."""
        if not self.recording:
            return
        attributes = self.attributes
        if model:
            attributes["gen_ai.request.model"] = model
        inherited = self.inherited = request_settings(body)
        if stream:
            inherited["gen_ai.request.stream"] = True
        attributes.update(inherited)
        if self._tracing.capture_content:
            system, messages = input_messages(body)
            if system:
                attributes["gen_ai.system_instructions"] = Content(system)
            if messages:
                attributes["gen_ai.input.messages"] = Content(messages)

    def attempt(self, provider: ProviderConfig, model: str) -> AttemptSpan:
        """A client span for one try at an upstream (`model`: the upstream's model name),
        started now. A failover makes several, in order."""
        self._attempts += 1
        return AttemptSpan(self, self._tracing.upstream(provider), model, self._attempts)

    def end(
        self,
        status: int,
        *,
        tenant: str | None = None,
        cache: str | None = None,
        usage: Usage | None = None,
        answer: bytes | str | None = None,
        error: BaseException | str | None = None,
    ) -> None:
        """End the request: the status the client got, its tenant, the cache's verdict ("hit",
        "miss", None when off), the tokens counted, the answer (the JSON body, or a stream's
        text; read only with capture_content) and the error that ended it. Once; later calls
        are ignored."""
        if self.ended:
            return
        self.ended = True
        if not self.recording:
            return
        tracing = self._tracing
        attributes = self.attributes
        if status:
            attributes["http.response.status_code"] = status
        if tenant:
            attributes["aigw.tenant"] = tenant
        if cache is not None:
            attributes["aigw.cache.hit"] = cache == "hit"
        if usage is not None:
            usage_attributes(usage, attributes)
        if answer is not None and tracing.capture_content:
            messages = output_messages(answer)
            if messages:
                attributes["gen_ai.output.messages"] = Content(messages)
        span_status = tracing._ok
        if error is not None or status >= 400:
            attributes["error.type"] = _error_type(error, status)
            if status >= 500 or (error is not None and not _client_fault(error, status)):
                span_status = tracing._status(tracing._error_code, _error_message(error, status))
        tracing._finish(
            tracing._readable_span(  # positional: ~0.5 µs less than by keyword
                self.name,
                self.context,
                self.parent,
                tracing._resource,
                attributes,
                (),  # events
                (),  # links
                tracing._server,
                None,  # instrumentation_info (deprecated)
                span_status,
                self.start_ns,
                time.time_ns(),
                tracing._scope,
            )
        )


class AttemptSpan:
    """The client span of one try at an upstream."""

    __slots__ = (
        "_request",
        "attributes",
        "context",
        "ended",
        "events",
        "name",
        "recording",
        "start_ns",
    )

    def __init__(self, request: RequestSpan, upstream: _Upstream, model: str, number: int) -> None:
        tracing = request._tracing
        parent = request.context
        self._request = request
        self.recording = request.recording and not request.ended
        self.context: SpanContext = tracing._span_context(
            parent.trace_id,
            tracing._ids.generate_span_id(),
            False,
            parent.trace_flags,
            parent.trace_state,
        )
        self.name = f"{request.operation} {model}" if model else request.operation
        self.ended = False
        self.events: list[Any] = []
        self.start_ns = time.time_ns()
        if not self.recording:
            self.attributes: dict[str, Any] = {}
            return
        attributes = {**upstream.attributes, **request.inherited, "aigw.attempt": number}
        operation = request.attributes.get("gen_ai.operation.name")
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        if model:
            attributes["gen_ai.request.model"] = model
        self.attributes = attributes

    def inject(self, headers: dict[str, str]) -> None:
        """Add W3C `traceparent` (this attempt as the parent) and `tracestate` (the client's,
        as received) to the upstream request's headers."""
        context = self.context
        headers["traceparent"] = (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        )
        if context.trace_state:
            headers["tracestate"] = context.trace_state.to_header()

    def header_lines(self) -> bytes:
        """The same headers as raw HTTP/1.1 header lines (`name: value\\r\\n`), for a client
        that writes its request head itself (aigw/providers/http.py's `extra_headers`)."""
        headers: dict[str, str] = {}
        self.inject(headers)
        return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("ascii")

    def first_token(self) -> None:
        """The first streamed content arrived (once; later calls are ignored)."""
        if not self.recording or self.events or self.ended:
            return
        now = time.time_ns()
        self.events.append(self._request._tracing._event(FIRST_TOKEN_EVENT, None, now))
        self.attributes["gen_ai.response.time_to_first_chunk"] = (now - self.start_ns) / 1e9

    def end(
        self,
        status: int | None = None,
        *,
        usage: Usage | None = None,
        answer: bytes | None = None,
        response_model: str | None = None,
        finish_reasons: Sequence[str] | None = None,
        error: BaseException | str | None = None,
    ) -> None:
        """End the try: the upstream's HTTP status (None when none came), the tokens it
        reported, and what ended it. `answer` is the JSON answer (or, for a stream, the bytes
        of its last events): its model, id and finish reasons are read from it unless given.
        Once; later calls are ignored."""
        if self.ended:
            return
        self.ended = True
        if not self.recording:
            return
        tracing = self._request._tracing
        attributes = self.attributes
        if status is not None:
            attributes["http.response.status_code"] = status
        if usage is not None:
            usage_attributes(usage, attributes)
        if answer is not None:
            if response_model is None:
                response_model = head_string(answer, b'"model"')
            response_id = head_string(answer, b'"id"')
            if response_id is not None:
                attributes["gen_ai.response.id"] = response_id
            if finish_reasons is None:
                finish_reasons = answer_finish_reasons(answer)
        if response_model:
            attributes["gen_ai.response.model"] = response_model
        if finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = tuple(finish_reasons)
        span_status = tracing._ok
        if error is not None or (status is not None and status >= 400):
            code = status or 0
            attributes["error.type"] = _error_type(error, code)
            span_status = tracing._status(tracing._error_code, _error_message(error, code))
        tracing._finish(
            tracing._readable_span(  # positional, as in RequestSpan.end
                self.name,
                self.context,
                self._request.context,
                tracing._resource,
                attributes,
                self.events,
                (),  # links
                tracing._client,
                None,  # instrumentation_info (deprecated)
                span_status,
                self.start_ns,
                time.time_ns(),
                tracing._scope,
            )
        )


# --- what the spans say ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Upstream:
    """The attributes every attempt at one provider starts with."""

    attributes: Mapping[str, Any]

    @classmethod
    def of(cls, provider: ProviderConfig) -> _Upstream:
        attributes: dict[str, Any] = {
            "gen_ai.provider.name": provider_name(provider),
            "aigw.provider": provider.name,
        }
        if provider.type != "mock" and provider.base_url:
            try:
                url = urlsplit(provider.base_url)
                host, port = url.hostname, url.port
            except ValueError:
                host, port = None, None
            if host:
                attributes["server.address"] = host
                attributes["server.port"] = port or (443 if url.scheme == "https" else 80)
        return cls(attributes)


def _error_type(error: BaseException | str | None, status: int) -> str:
    """A low-cardinality `error.type`: the gateway's error code, the upstream's status, or the
    exception's class name."""
    if isinstance(error, UpstreamStatusError) or (error is None or isinstance(error, str)):
        return str(status) if status >= 400 else "error"
    if isinstance(error, GatewayError):
        return error.code or type(error).__name__
    return type(error).__qualname__


def _error_message(error: BaseException | str | None, status: int) -> str:
    """The status description: what the client was told (never an internal exception's
    text, which could hold anything)."""
    if isinstance(error, GatewayError):
        text = error.message
    elif isinstance(error, str):
        text = error
    elif error is not None:
        text = type(error).__qualname__
    else:
        text = f"HTTP {status}"
    return text if len(text) <= 1024 else text[:1021] + "..."


def _client_fault(error: BaseException | str, status: int) -> bool:
    """A client's own mistake (HTTP 4xx): not an error of the gateway's server span."""
    if isinstance(error, GatewayError):
        return error.status < 500
    return 400 <= status < 500


def _remote_parent(tracing: Tracing, headers: Mapping[str, str]) -> SpanContext | None:
    """The caller's span from a valid W3C `traceparent` (and its `tracestate`), else None."""
    m = _TRACEPARENT_RE.fullmatch(headers.get("traceparent", "").strip(" \t"))
    if m is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = None
    if "tracestate" in headers:
        getall = getattr(headers, "getall", None)
        values = list(getall("tracestate")) if getall is not None else [headers["tracestate"]]
        state = tracing._trace_state.from_header(values) or None
    flags = tracing._sampled if int(flags_hex, 16) & 1 else tracing._not_sampled
    return tracing._span_context(trace_id, span_id, True, flags, state)
