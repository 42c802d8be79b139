"""Prometheus metrics, in a registry private to one Gateway (never the process-global one).

The hot path does not touch prometheus-client: counts live in plain Python cells (ints, floats
and bucket lists) that the event loop updates without locks, and a custom collector turns them
into metric families only when `/metrics` is scraped. A request costs a few dict lookups, a
`bisect` per histogram and some additions; when metrics are disabled every method returns at
once. All methods, `render()` included, are called from the event loop thread.

Label cardinality is bounded: status is the numeric code, and each of tenant, model and target
keeps at most a fixed number of distinct values; later newcomers are folded into `other`.
`METRICS_DOC` is the one table of metric names: the collector reads names and help from it, and
the README lists it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable, Iterator, Sequence
from typing import Final, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from aigw.pricing import NANOS_PER_USD

OTHER: Final = "other"
MAX_TENANTS: Final = 1000
MAX_MODELS: Final = 256
MAX_TARGETS: Final = 256
#: Most raw label combinations remembered per metric for the fast path; beyond, the slow path.
_MAX_CACHED: Final = 10_000

DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
OVERHEAD_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip

CacheEvent = Literal["hit", "miss", "eviction"]
RejectionReason = Literal["rate_limit", "quota", "content_filter", "auth", "invalid"]
REJECTION_REASONS: tuple[str, ...] = ("rate_limit", "quota", "content_filter", "auth", "invalid")
#: Value of aigw_target_circuit_state per circuit state name.
CIRCUIT_STATES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}

#: (exposed name, type, labels, help). aigw_tokens_total and aigw_cost_usd_total lose `tenant`
#: when the tenant label is turned off.
METRICS_DOC: list[tuple[str, str, tuple[str, ...], str]] = [
    ("aigw_requests_total", "counter", ("model", "target", "status", "endpoint"),
     "Finished requests by gateway model, answering target, HTTP status and the API called "
     "(chat/completions, responses, messages, images/generations, ...)."),
    ("aigw_request_duration_seconds", "histogram", ("model",),
     "Whole request time, from arrival to the last byte sent."),
    ("aigw_time_to_first_token_seconds", "histogram", ("model",),
     "Time from arrival to the first streamed byte (streams only)."),
    ("aigw_gateway_overhead_seconds", "histogram", (),
     "Request time spent in the gateway: total minus time waiting on the upstream."),
    ("aigw_tokens_total", "counter", ("tenant", "model", "kind"),
     "Tokens used, kind prompt, completion or cached (prompt tokens read from the provider's "
     "cache: also counted in prompt)."),
    ("aigw_cost_usd_total", "counter", ("tenant", "model"),
     "US dollars spent, priced by the upstream model that answered (`prices:`); `model` is "
     "the gateway model."),
    ("aigw_unpriced_requests_total", "counter", ("model",),
     "Requests with usage whose upstream model has no price (they cost 0); `model` is the "
     "upstream model."),
    ("aigw_cache_hits_total", "counter", (), "Response cache hits."),
    ("aigw_cache_misses_total", "counter", (), "Response cache misses."),
    ("aigw_cache_evictions_total", "counter", (), "Entries evicted to respect the cache limits."),
    ("aigw_cache_entries", "gauge", (), "Entries in the response cache."),
    ("aigw_cache_bytes", "gauge", (), "Bytes charged to the response cache's byte budget."),
    ("aigw_rejections_total", "counter", ("reason",),
     "Requests refused before the upstream: rate_limit, quota, content_filter, auth, invalid."),
    ("aigw_quota_overrun_tokens_total", "counter", ("tenant",),
     "Tokens recorded beyond what requests reserved against a token quota (an upstream that "
     "ignored max_tokens); streams are cut when the quota cannot cover them."),
    ("aigw_in_flight_requests", "gauge", (), "Requests being handled now."),
    ("aigw_target_healthy", "gauge", ("target",), "1 when the target is healthy, else 0."),
    ("aigw_target_circuit_state", "gauge", ("target",),
     "Circuit breaker of the target: 0 closed, 1 half_open, 2 open."),
]  # fmt: skip
_HELP = {name: help_ for name, _, _, help_ in METRICS_DOC}


class LabelFolder:
    """Keeps the first `limit` distinct values of a label and folds the rest into `other`."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        return OTHER


class _Hist:
    """A histogram's cells: per-bucket counts (not cumulative; the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "les", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.les = [_le(b) for b in bounds]
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. Prometheus' `le` bucket.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def exposition(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for le, count in zip(self.les, self.counts, strict=False):
            total += count
            out.append((le, total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


def _le(bound: float) -> str:
    """A bucket bound as prometheus-client's own histograms write it (`5e-05`, `0.25`)."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def _status_label(status: int) -> str:
    return str(status) if 0 <= status <= 999 else OTHER


class Metrics:
    def __init__(
        self,
        enabled: bool,
        tenant_label: bool,
        *,
        max_tenants: int = MAX_TENANTS,
        max_models: int = MAX_MODELS,
        max_targets: int = MAX_TARGETS,
    ) -> None:
        self.enabled = enabled
        self.tenant_label = tenant_label
        self._tenant = LabelFolder(max_tenants)
        self._model = LabelFolder(max_models)
        self._target = LabelFolder(max_targets)
        # Cells by folded labels (what is exposed) ...
        self._requests: dict[tuple[str, str, str, str], list[int]] = {}
        self._durations: dict[str, tuple[_Hist, _Hist]] = {}
        self._tokens: dict[tuple[str, ...], tuple[list[int], list[int], list[int]]] = {}
        self._costs: dict[tuple[str, ...], list[int]] = {}  # nano-dollars
        self._unpriced: dict[str, int] = {}
        self._targets: dict[str, list[int]] = {}
        # ... and the same cells by raw label values, so the hot path skips folding.
        self._requests_fast: dict[Hashable, list[int]] = {}
        self._durations_fast: dict[str, tuple[_Hist, _Hist]] = {}
        self._tokens_fast: dict[Hashable, tuple[list[int], list[int], list[int]]] = {}
        self._costs_fast: dict[Hashable, list[int]] = {}
        self._overhead = _Hist(OVERHEAD_BUCKETS)
        self._cache_hits = 0
        self._cache_misses = 0
        self._cache_evictions = 0
        self._cache_entries = 0
        self._cache_bytes = 0
        self._rejections = dict.fromkeys(REJECTION_REASONS, 0)
        self._overruns: dict[str, int] = {}  # folded tenant -> tokens past the reservation
        self._in_flight = 0
        self.registry = CollectorRegistry(auto_describe=False)
        if enabled:
            self.registry.register(_Collector(self))

    # --- per request ---------------------------------------------------------------------

    def request_done(
        self,
        model: str,
        target: str | None,
        status: int,
        duration: float,
        upstream_time: float,
        ttft: float | None,
        endpoint: str = "chat/completions",
    ) -> None:
        """One finished request (any status). `upstream_time` is the time spent waiting on
        upstreams (0 for cache hits and rejections); `ttft` is set for streams only; `endpoint`
        is the API the client called (a fixed set: the gateway's routes)."""
        if not self.enabled:
            return
        key = (model, target, status, endpoint)
        cell = self._requests_fast.get(key)
        if cell is None:
            folded = (
                self._model(model),
                self._target(target or ""),
                _status_label(status),
                endpoint,
            )
            cell = self._requests.setdefault(folded, [0])
            if len(self._requests_fast) < _MAX_CACHED:
                self._requests_fast[key] = cell
        cell[0] += 1
        hists = self._durations_fast.get(model)
        if hists is None:
            folded_model = self._model(model)
            hists = self._durations.get(folded_model)
            if hists is None:
                hists = (_Hist(DURATION_BUCKETS), _Hist(DURATION_BUCKETS))
                self._durations[folded_model] = hists
            if len(self._durations_fast) < _MAX_CACHED:
                self._durations_fast[model] = hists
        hists[0].observe(duration)
        if ttft is not None:
            hists[1].observe(ttft)
        overhead = duration - upstream_time
        self._overhead.observe(overhead if overhead > 0.0 else 0.0)

    def tokens(
        self, tenant: str, model: str, prompt: int, completion: int, cached: int = 0
    ) -> None:
        """Tokens of one answer; `cached` of the prompt tokens were read from the provider's
        cache (counted in `prompt` too, and in a kind of their own)."""
        if not self.enabled:
            return
        key = (tenant, model)
        cells = self._tokens_fast.get(key)
        if cells is None:
            cells = self._tokens.setdefault(self._tenant_model(tenant, model), ([0], [0], [0]))
            if len(self._tokens_fast) < _MAX_CACHED:
                self._tokens_fast[key] = cells
        if prompt > 0:
            cells[0][0] += prompt
        if completion > 0:
            cells[1][0] += completion
        if cached > 0:
            cells[2][0] += cached

    def cost(self, tenant: str, model: str, nanos: int) -> None:
        """`nanos` nano-dollars spent by `tenant` on gateway `model` (exported in USD)."""
        if not self.enabled or nanos <= 0:
            return
        key = (tenant, model)
        cell = self._costs_fast.get(key)
        if cell is None:
            cell = self._costs.setdefault(self._tenant_model(tenant, model), [0])
            if len(self._costs_fast) < _MAX_CACHED:
                self._costs_fast[key] = cell
        cell[0] += nanos

    def unpriced(self, upstream_model: str) -> None:
        """A request with usage on an upstream model that has no price."""
        if not self.enabled:
            return
        label = self._model(upstream_model)
        self._unpriced[label] = self._unpriced.get(label, 0) + 1

    def _tenant_model(self, tenant: str, model: str) -> tuple[str, ...]:
        folded: tuple[str, ...] = (self._model(model),)
        if self.tenant_label:
            folded = (self._tenant(tenant), *folded)
        return folded

    def cache_event(self, kind: CacheEvent, count: int = 1) -> None:
        if not self.enabled:
            return
        if kind == "hit":
            self._cache_hits += count
        elif kind == "miss":
            self._cache_misses += count
        elif kind == "eviction":
            self._cache_evictions += count
        else:
            raise ValueError(f"unknown cache event {kind!r}")

    def cache_size(self, entries: int, size_bytes: int) -> None:
        if not self.enabled:
            return
        self._cache_entries = entries
        self._cache_bytes = size_bytes

    def rejected(self, kind: RejectionReason) -> None:
        if not self.enabled:
            return
        if kind not in self._rejections:
            raise ValueError(f"unknown rejection reason {kind!r}")
        self._rejections[kind] += 1

    def quota_overrun(self, tenant: str, tokens: int) -> None:
        """`tokens` were recorded past what the request had reserved."""
        if not self.enabled or tokens <= 0:
            return
        label = self._tenant(tenant) if self.tenant_label else ""
        self._overruns[label] = self._overruns.get(label, 0) + tokens

    def in_flight(self, delta: int) -> None:
        if not self.enabled:
            return
        self._in_flight += delta

    # --- targets -------------------------------------------------------------------------

    def target_state(self, target: str, healthy: bool, circuit: str) -> None:
        if not self.enabled:
            return
        value = CIRCUIT_STATES.get(circuit)
        if value is None:
            raise ValueError(f"unknown circuit state {circuit!r}")
        self._targets[self._target(target)] = [1 if healthy else 0, value]

    def forget_target(self, target: str) -> None:
        """Drop a target's gauges (it left the config on reload)."""
        if self.enabled and target in self._target.seen:  # `other` is shared: keep it
            self._targets.pop(target, None)

    # --- exposition ----------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The text exposition (body, content type); an empty body when disabled."""
        if not self.enabled:
            return b"", CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def collect(self) -> Iterator[Metric]:
        """The metric families, in METRICS_DOC order."""
        requests = CounterMetricFamily(
            "aigw_requests",
            _HELP["aigw_requests_total"],
            labels=("model", "target", "status", "endpoint"),
        )
        for labels, cell in self._requests.items():
            requests.add_metric(labels, cell[0])
        yield requests
        yield self._histograms("aigw_request_duration_seconds", 0)
        yield self._histograms("aigw_time_to_first_token_seconds", 1)
        overhead = HistogramMetricFamily(
            "aigw_gateway_overhead_seconds", _HELP["aigw_gateway_overhead_seconds"]
        )
        overhead.add_metric((), self._overhead.exposition(), self._overhead.sum)
        yield overhead
        token_labels = ("tenant", "model", "kind") if self.tenant_label else ("model", "kind")
        tokens = CounterMetricFamily("aigw_tokens", _HELP["aigw_tokens_total"], labels=token_labels)
        for token_key, (prompt, completion, cached) in self._tokens.items():
            tokens.add_metric((*token_key, "prompt"), prompt[0])
            tokens.add_metric((*token_key, "completion"), completion[0])
            tokens.add_metric((*token_key, "cached"), cached[0])
        yield tokens
        cost_labels = ("tenant", "model") if self.tenant_label else ("model",)
        costs = CounterMetricFamily(
            "aigw_cost_usd", _HELP["aigw_cost_usd_total"], labels=cost_labels
        )
        for cost_key, cell in self._costs.items():
            costs.add_metric(cost_key, cell[0] / NANOS_PER_USD)
        yield costs
        unpriced = CounterMetricFamily(
            "aigw_unpriced_requests", _HELP["aigw_unpriced_requests_total"], labels=("model",)
        )
        for model, count in self._unpriced.items():
            unpriced.add_metric((model,), count)
        yield unpriced
        yield _single(CounterMetricFamily, "aigw_cache_hits", self._cache_hits)
        yield _single(CounterMetricFamily, "aigw_cache_misses", self._cache_misses)
        yield _single(CounterMetricFamily, "aigw_cache_evictions", self._cache_evictions)
        yield _single(GaugeMetricFamily, "aigw_cache_entries", self._cache_entries)
        yield _single(GaugeMetricFamily, "aigw_cache_bytes", self._cache_bytes)
        rejections = CounterMetricFamily(
            "aigw_rejections", _HELP["aigw_rejections_total"], labels=("reason",)
        )
        for reason, count in self._rejections.items():
            rejections.add_metric((reason,), count)
        yield rejections
        overruns = CounterMetricFamily(
            "aigw_quota_overrun_tokens",
            _HELP["aigw_quota_overrun_tokens_total"],
            labels=("tenant",),
        )
        for tenant, count in self._overruns.items():
            overruns.add_metric((tenant,), count)
        yield overruns
        yield _single(GaugeMetricFamily, "aigw_in_flight_requests", self._in_flight)
        healthy = GaugeMetricFamily(
            "aigw_target_healthy", _HELP["aigw_target_healthy"], labels=("target",)
        )
        circuit = GaugeMetricFamily(
            "aigw_target_circuit_state", _HELP["aigw_target_circuit_state"], labels=("target",)
        )
        for target, (is_healthy, state) in self._targets.items():
            healthy.add_metric((target,), is_healthy)
            circuit.add_metric((target,), state)
        yield healthy
        yield circuit

    def _histograms(self, name: str, which: int) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, _HELP[name], labels=("model",))
        for model, pair in self._durations.items():
            hist = pair[which]
            family.add_metric((model,), hist.exposition(), hist.sum)
        return family


def _single(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, value: float
) -> Metric:
    doc = _HELP.get(name) or _HELP[name + "_total"]
    return kind(name, doc, value=value)


class _Collector:
    """Registered in the private registry; reads the cells at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect()

    def describe(self) -> Sequence[Metric]:
        return ()


def reference_markdown() -> str:
    """The README's metrics table, generated from METRICS_DOC."""
    rows = ["| metric | type | labels | description |", "|---|---|---|---|"]
    for name, kind, labels, help_text in METRICS_DOC:
        label_text = ", ".join(f"`{label}`" for label in labels) or "-"
        rows.append(f"| `{name}` | {kind} | {label_text} | {help_text} |")
    return "\n".join(rows)
