"""What tracing costs one request, in µs of one core (aigw/tracing.py; the issue's budget: off
costs nothing measurable, on at sample_ratio 1.0 at most 25 µs).

    python bench/tracing_bench.py            # ~30 s
    python bench/tracing_bench.py --reps 9 --cpu 1

Each item is the set of calls the proxy makes for one request with one upstream attempt: the
server span (started from the client's headers, the request's model and settings, ended with
status, tenant, cache and usage) and the attempt's client span (started, its traceparent injected
into the upstream headers, ended with status, usage and the JSON answer it reads model, id and
finish reasons from). Timed in CPU time of the thread (`time.thread_time_ns`, so a busy machine's
other processes do not count) in a tight loop, `--reps` repetitions after a warm-up; the table
shows the median and the best repetition.

The exporter behind the batch processor drops the spans, so the request path is measured
alone; what the export thread then spends per request (aigw/otlp.py's protobuf encoding and the
gzip of a 512-span batch; the POST is one per batch) is the item "export thread", measured apart.
For comparison: "SDK tracer" makes the same two spans with the SDK's own `Tracer`, and "SDK OTLP
encoder" encodes them with the SDK exporter's encoder (when opentelemetry-exporter-otlp-proto-common
is installed), what aigw/tracing.py and aigw/otlp.py avoid.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aigw.config import ProviderConfig, TracingConfig
from aigw.exchange import Usage
from aigw.tracing import Tracing, build_tracing

ROUTE = "/v1/chat/completions"
HEADERS = CIMultiDictProxy(
    CIMultiDict(
        {
            "Host": "127.0.0.1:8080",
            "Content-Type": "application/json",
            "Authorization": "Bearer sk-tenant",
            "User-Agent": "OpenAI/Python 1.40.0",
            "Content-Length": "184",
        }
    )
)
TRACED_HEADERS = CIMultiDictProxy(
    CIMultiDict(
        {**HEADERS, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    )
)
BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "max_tokens": 64,
    "temperature": 0.2,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in one short sentence."},
    ],
}
ANSWER = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello there! How can I help you today?"},"logprobs":null,'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":6,'
    b'"total_tokens":30}}'
)
USAGE = Usage(24, 6, 30)
PROVIDER = ProviderConfig(name="openai", type="openai", base_url="https://api.openai.com/v1")


def keep_spans(tracing: Tracing, into: list[Any] | None = None) -> None:
    """Spans the tracer exports are dropped (or kept in `into`): no network in the loop."""

    def export(spans: Any) -> None:
        tracing._exporter.exported += len(spans)  # the tracer's queue gauge
        if into is not None:
            into.extend(spans)

    tracing._exporter.export = export  # type: ignore[method-assign]


def traced(ratio: float, *, capture: bool = False) -> tuple[Tracing, Callable[[], None]]:
    tracing = build_tracing(
        TracingConfig(
            enabled=True,
            endpoint="http://127.0.0.1:9",
            sample_ratio=ratio,
            capture_content=capture,
        )
    )
    assert tracing is not None
    keep_spans(tracing)

    def one(headers: Any = HEADERS) -> None:
        span = tracing.start_request("POST", ROUTE, headers, request_id="req-0123456789")
        span.request("gpt-4o-mini", BODY)
        attempt = span.attempt(PROVIDER, "gpt-4o-mini")
        upstream_headers: dict[str, str] = {}
        attempt.inject(upstream_headers)
        attempt.end(200, usage=USAGE, answer=ANSWER)
        span.end(200, tenant="team-a", cache="miss", usage=USAGE, answer=ANSWER)

    return tracing, one


def disabled() -> Callable[[], None]:
    tracing: Tracing | None = build_tracing(TracingConfig())

    def one() -> None:
        # What the proxy does with tracing off: one check of an attribute for None.
        if tracing is not None:
            raise AssertionError

    return one


def batch_of_512() -> tuple[Tracing, list[Any]]:
    """The spans of 256 requests, as the export thread gets them."""
    tracing, one = traced(1.0)
    batch: list[Any] = []
    keep_spans(tracing, batch)
    for _ in range(256):
        one()
    tracing.flush()
    tracing.shutdown(1.0)
    return tracing, batch[:512]


def per_batch(encode: Callable[[list[Any]], bytes], spans: list[Any]) -> Callable[[], None]:
    state = {"i": 0}

    def per_request() -> None:
        # One batch every 256 requests: the loop measures the cost per request.
        state["i"] += 1
        if state["i"] % 256 == 0:
            encode(spans)

    return per_request


def export_thread() -> Callable[[], None]:
    """The export thread's work per request: two spans' share of encoding a 512-span batch to
    OTLP protobuf and gzipping it, as aigw/otlp.py does before the POST."""
    tracing, spans = batch_of_512()
    encoder = tracing._exporter.encoder
    return per_batch(lambda s: gzip.compress(encoder.encode(s), compresslevel=1), spans)


def sdk_encoder() -> Callable[[], None] | None:
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    except ImportError:
        return None
    _, spans = batch_of_512()
    return per_batch(lambda s: gzip.compress(encode_spans(s).SerializePartialToString()), spans)


def sdk_tracer() -> Callable[[], None]:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(1.0)),
        resource=Resource.create({"service.name": "aigw"}),
        shutdown_on_exit=False,
    )

    class Dropping:
        def export(self, spans: Any) -> None:
            pass

        def shutdown(self) -> None:
            pass

    provider.add_span_processor(BatchSpanProcessor(Dropping()))  # type: ignore[arg-type]
    tracer = provider.get_tracer("aigw")
    propagator = TraceContextTextMapPropagator()

    def one() -> None:
        parent = propagator.extract(HEADERS)
        span = tracer.start_span(
            f"POST {ROUTE}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": ROUTE, "http.route": ROUTE},
        )
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.request.max_tokens": 64,
                "gen_ai.request.temperature": 0.2,
            }
        )
        attempt = tracer.start_span(
            "chat gpt-4o-mini",
            context=trace.set_span_in_context(span),
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "server.address": "api.openai.com",
                "server.port": 443,
                "aigw.provider": "openai",
                "aigw.attempt": 1,
            },
        )
        upstream_headers: dict[str, str] = {}
        propagator.inject(upstream_headers, trace.set_span_in_context(attempt))
        attempt.set_attributes(
            {
                "http.response.status_code": 200,
                "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                "gen_ai.response.id": "chatcmpl-bench",
                "gen_ai.response.finish_reasons": ("stop",),
                "gen_ai.usage.input_tokens": 24,
                "gen_ai.usage.output_tokens": 6,
            }
        )
        attempt.end()
        span.set_attributes(
            {
                "http.response.status_code": 200,
                "aigw.tenant": "team-a",
                "aigw.cache.hit": False,
                "gen_ai.usage.input_tokens": 24,
                "gen_ai.usage.output_tokens": 6,
            }
        )
        span.end()

    return one


def loop_us(fn: Callable[[], None], n: int) -> float:
    """µs of this thread's CPU per call: a busy machine's other processes do not count, the
    export thread's work is its own item."""
    t0 = time.thread_time_ns()
    for _ in range(n):
        fn()
    return (time.thread_time_ns() - t0) / n / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="repetitions per item")
    parser.add_argument("--loops", type=int, default=20_000, help="requests per repetition")
    parser.add_argument("--cpu", type=int, default=0, help="core to pin to")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})

    on, on_one = traced(1.0)
    off_ratio, zero_one = traced(0.0)
    capture, capture_one = traced(1.0, capture=True)
    items: list[tuple[str, Callable[[], None]]] = [
        ("tracing disabled (None check)", disabled()),
        ("sample_ratio 0.0", zero_one),
        ("sample_ratio 1.0", on_one),
        ("sample_ratio 1.0, client traceparent", lambda: on_one(TRACED_HEADERS)),
        ("sample_ratio 1.0, capture_content", capture_one),
        ("export thread, per request (ratio 1.0)", export_thread()),
        ("SDK tracer, same two spans", sdk_tracer()),
    ]
    sdk = sdk_encoder()
    if sdk is not None:
        items.append(("SDK OTLP encoder, per request", sdk))
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    print(f"{'item':42} {'median µs':>10} {'best µs':>8}")
    for name, fn in items:
        loop_us(fn, args.loops // 4)  # warm-up
        runs = [loop_us(fn, args.loops) for _ in range(args.reps)]
        print(f"{name:42} {statistics.median(runs):10.2f} {min(runs):8.2f}")
    busy = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    print(f"\nthis process had {busy:.0%} of its core (less: other processes took the rest)")
    for tracing in (on, off_ratio, capture):
        tracing.shutdown(1.0)


if __name__ == "__main__":
    main()
