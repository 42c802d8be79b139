"""OTLP/HTTP span export: finished spans encoded as an OTLP `ExportTraceServiceRequest` protobuf,
gzipped and POSTed to a collector's `/v1/traces`, in the batch processor's thread.

The protobuf is written here, field by field (opentelemetry-proto's `trace.proto`): the SDK's
exporter builds a message object per span, attribute and value, ~90-180 µs of CPU per span
(`bench/tracing_bench.py`), more than the rest of a traced request; this costs ~10-20. The
tests decode what it sends with `opentelemetry-proto` itself (tests/otlp_receiver.py).

Sending follows the OTLP/HTTP spec: 2xx is done; 429, 502, 503, 504 and connection failures are
retried with exponential backoff (or the collector's Retry-After) until `timeout` has passed since
the batch's first try; any other status fails at once. A failing collector is told about in at
most one log line a minute (`LostSpansLog`), never one per batch.

Only duck-typed reads of the SDK's `ReadableSpan` happen here: nothing of OpenTelemetry is
imported by this module.
"""

from __future__ import annotations

import gzip
import logging
import random
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from aigw.logutil import RateLimitedLog

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger("aigw.tracing")

#: How often (seconds) spans being lost may write a line to the log.
LOG_INTERVAL: Final = 60.0
#: Statuses (and connection failures) worth trying again, per the OTLP/HTTP spec.
RETRYABLE: Final = frozenset({429, 502, 503, 504})
#: The first retry's wait; doubled each time, with ±20% jitter.
FIRST_BACKOFF: Final = 1.0
#: Most of a collector's answer read (its body says nothing we act on).
MAX_ANSWER: Final = 64 * 1024

_DOUBLE = struct.Struct("<d").pack
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
# Span.flags: bits 0-7 are the W3C trace flags; these say whether the parent was remote.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_REMEMBERED: Final = frozenset({str, int, tuple})  # value types `_KeyValues` remembers
# Span.kind by the SDK's SpanKind value (INTERNAL=0...); OTLP counts from 1 (0 = unspecified).
_KINDS: Final = tuple(b"\x30" + bytes((value + 1,)) for value in range(5))


class Rendered(Protocol):
    """An attribute value finished in the export thread (captured content: redacted there)."""

    def render(self) -> str: ...


class LostSpansLog:
    """At most one line a minute on `aigw.tracing` about spans being lost (the collector fails,
    the queue is full), saying how many more lines there would have been; from any thread."""

    def __init__(self, endpoint: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._limited = RateLimitedLog(log, interval=LOG_INTERVAL, clock=clock)

    def log(self, reason: str) -> None:
        with self._lock:
            self._limited.log(
                "lost", "tracing: spans to %s are being lost: %s", self.endpoint, reason
            )


# --- protobuf ------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: `tag` is its key byte(s) (field number << 3 | 2)."""
    size = len(payload)
    return tag + (bytes((size,)) if size < 0x80 else _varint(size)) + payload


def _any_value(value: Any) -> bytes:
    """An `AnyValue` message."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8", "replace"))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, (tuple, list)):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    if hasattr(value, "render"):
        return _any_value(value.render())
    return _field(b"\x0a", str(value).encode("utf-8", "replace"))


class _KeyValues:
    """`KeyValue` fields, remembered for the values that repeat from span to span (models,
    providers, routes, tenants, statuses, small numbers): most of a span's attributes."""

    MAX_ENTRIES: Final = 4096
    MAX_SIZE: Final = 256  # bytes of one remembered field

    def __init__(self) -> None:
        #: key -> value -> the span's `attributes` field (9) holding that `KeyValue`. Only str,
        #: int and tuple values: True == 1 and 1.0 == 1 would share an entry.
        self.known: dict[str, dict[Any, bytes]] = {}
        self._entries = 0

    def encode(self, key: str, value: Any) -> bytes:
        """The field for a pair `known` does not hold (the caller looks there first)."""
        encoded = _field(
            b"\x4a",
            _field(b"\x0a", key.encode("utf-8", "replace")) + _field(b"\x12", _any_value(value)),
        )
        if len(encoded) <= self.MAX_SIZE and type(value) in (str, int, tuple):
            if self._entries >= self.MAX_ENTRIES:
                self.known.clear()  # an unbounded set of values (ids): start over
                self._entries = 0
            self.known.setdefault(key, {})[value] = encoded
            self._entries += 1
        return encoded


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    return b"".join(
        _field(
            tag,
            _field(b"\x0a", key.encode("utf-8", "replace")) + _field(b"\x12", _any_value(value)),
        )
        for key, value in attributes.items()
    )


class SpanEncoder:
    """Spans to the bytes of one `ExportTraceServiceRequest`; the resource and instrumentation
    scope (the same for every span of a tracer) are encoded once."""

    def __init__(
        self, resource: Mapping[str, Any], scope_name: str, scope_version: str | None
    ) -> None:
        self._resource = _field(b"\x0a", _attributes(b"\x0a", resource))  # ResourceSpans.resource
        scope = _field(b"\x0a", scope_name.encode())
        if scope_version:
            scope += _field(b"\x12", scope_version.encode())
        self._scope = _field(b"\x0a", scope)  # ScopeSpans.scope
        self._key_values = _KeyValues()
        self._names: dict[str, bytes] = {}  # span name -> its field (a few routes and models)

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        scope_spans = self._scope + b"".join(_field(b"\x12", self.span(s)) for s in spans)
        resource_spans = self._resource + _field(b"\x12", scope_spans)
        return _field(b"\x0a", resource_spans)

    def span(self, span: ReadableSpan) -> bytes:
        """One `Span` message."""
        context = span.context
        assert context is not None
        parent = span.parent
        out = bytearray(b"\x0a\x10")
        out += context.trace_id.to_bytes(16, "big")
        out += b"\x12\x08"
        out += context.span_id.to_bytes(8, "big")
        if context.trace_state:
            out += _field(b"\x1a", context.trace_state.to_header().encode())
        if parent is not None:
            out += b"\x22\x08"
            out += parent.span_id.to_bytes(8, "big")
        name = self._names.get(span.name)
        if name is None:
            name = _field(b"\x2a", span.name.encode("utf-8", "replace"))
            if len(self._names) >= _KeyValues.MAX_ENTRIES:
                self._names.clear()
            self._names[span.name] = name
        out += name
        out += _KINDS[span.kind.value]
        out += b"\x39"
        out += _FIXED64(span.start_time or 0)
        out += b"\x41"
        out += _FIXED64(span.end_time or 0)
        attributes = span.attributes
        if attributes:
            known = self._key_values.known
            encode = self._key_values.encode
            for key, value in attributes.items():
                values = known.get(key)
                found = None
                if values is not None and type(value) in _REMEMBERED:
                    found = values.get(value)
                out += found if found is not None else encode(key, value)
        for event in span.events:
            body = b"\x09" + _FIXED64(event.timestamp) + _field(b"\x12", event.name.encode())
            out += _field(b"\x5a", body + _attributes(b"\x1a", event.attributes))
        status = span.status
        code = status.status_code.value
        if code:
            body = _field(b"\x12", status.description.encode()) if status.description else b""
            out += _field(b"\x7a", body + b"\x18" + bytes((code,)))
        flags = context.trace_flags | _HAS_IS_REMOTE
        if parent is not None and parent.is_remote:
            flags |= _IS_REMOTE
        out += b"\x85\x01"
        out += _FIXED32(flags)
        return bytes(out)


# --- HTTP ----------------------------------------------------------------------------------


class OtlpHttpExporter:
    """The batch processor's exporter: encode, gzip, POST with retries, count, and never
    raise (a failure is counted and told to `LostSpansLog`)."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: float,
        encoder: SpanEncoder,
        lost: LostSpansLog,
        ca_file: str | None = None,
        user_agent: str = "aigw",
    ) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.url = url
        self.timeout = timeout
        self.encoder = encoder
        self.lost = lost
        self._ok, self._failure = SpanExportResult.SUCCESS, SpanExportResult.FAILURE
        self._headers = {
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "gzip",
            "User-Agent": user_agent,
            **headers,
        }
        handlers: list[urllib.request.BaseHandler] = []
        if url.startswith("https:"):
            handlers.append(
                urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file))
            )
        self._opener = urllib.request.build_opener(*handlers)  # proxies from the environment
        self._stop = threading.Event()
        self.exported = 0
        self.failed = 0
        #: monotonic time after which batches are dropped instead of sent (set by shutdown)
        self.deadline: float | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        if self._stop.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline):
            self.failed += len(spans)
            return self._failure
        try:
            body = gzip.compress(self.encoder.encode(spans), compresslevel=1)
            error = self._send(body)
        except Exception as exc:  # a bug here must not kill the export thread, nor flood the log
            log.debug("tracing: spans could not be exported", exc_info=True)
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self.exported += len(spans)
            return self._ok
        self.failed += len(spans)
        self.lost.log(error)
        return self._failure

    def _send(self, body: bytes) -> str | None:
        """POST until done or out of time; None, or why the batch is lost."""
        give_up = time.monotonic() + self.timeout
        backoff = FIRST_BACKOFF
        while True:
            left = give_up - time.monotonic()
            if self.deadline is not None:
                left = min(left, self.deadline - time.monotonic())
            if left <= 0:
                return f"no answer within {self.timeout:g}s"
            status, retry_after, reason = self._post(body, left)
            if status is not None and 200 <= status < 300:
                return None
            if status is not None and status not in RETRYABLE:
                return reason
            wait = retry_after if retry_after is not None else backoff * random.uniform(0.8, 1.2)
            backoff *= 2
            if wait >= give_up - time.monotonic():
                return reason
            if self._stop.wait(wait):
                return f"{reason} (stopping)"

    def _post(self, body: bytes, timeout: float) -> tuple[int | None, float | None, str]:
        """(status or None when no answer came, Retry-After seconds, what went wrong)."""
        request = urllib.request.Request(self.url, body, self._headers, method="POST")
        try:
            with self._opener.open(request, timeout=timeout) as answer:
                answer.read(MAX_ANSWER)
                return answer.status, None, ""
        except urllib.error.HTTPError as exc:
            with exc:
                exc.read(MAX_ANSWER)
                retry_after = _retry_after(exc.headers.get("Retry-After"))
            return exc.code, retry_after, f"the collector answered HTTP {exc.code}"
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
            return None, None, f"cannot reach the collector: {text}"
        except (OSError, ValueError) as exc:  # timeouts, resets, a malformed answer
            return None, None, f"cannot reach the collector: {type(exc).__name__}: {exc}"

    def shutdown(self) -> None:
        self._stop.set()  # stops waiting between retries

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
