"""Metrics at the library level: a known sequence of calls, then `render()` parsed with
prometheus-client's own text parser and checked to the exact count."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aigw.metrics import METRICS_DOC, OTHER, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return got[(name, tuple(sorted(labels.items())))]


def chat_requests(
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float], **labels: str
) -> float:
    return value(got, "aigw_requests_total", endpoint="chat/completions", **labels)


def known_workload(m: Metrics) -> None:
    for _ in range(3):
        m.in_flight(1)
        m.request_done("gpt", "openai/gpt", 200, duration=0.25, upstream_time=0.125, ttft=None)
        m.in_flight(-1)
    m.in_flight(1)
    m.request_done("gpt", "openai/gpt", 200, duration=1.5, upstream_time=1.4996, ttft=0.3)
    m.request_done("gpt", "local/llama", 502, duration=0.05, upstream_time=0.05, ttft=None)
    m.request_done("gpt", None, 429, duration=0.0004, upstream_time=0.0, ttft=None)
    m.tokens("team-a", "gpt", 10, 20)
    m.tokens("team-a", "gpt", 5, 0)
    m.tokens("team-b", "gpt", 1, 2)
    for kind in ("hit", "hit", "miss", "eviction"):
        m.cache_event(kind)  # type: ignore[arg-type]
    m.cache_event("eviction", 2)
    m.cache_size(7, 4096)
    m.rejected("rate_limit")
    m.rejected("rate_limit")
    m.rejected("quota")
    m.rejected("content_filter")
    m.target_state("openai/gpt", True, "closed")
    m.target_state("local/llama", False, "open")
    m.target_state("other/x", True, "half_open")


def test_known_workload_exact_counts() -> None:
    m = Metrics(enabled=True, tenant_label=True)
    known_workload(m)
    got = samples(m)
    assert (
        value(
            got,
            "aigw_requests_total",
            model="gpt",
            target="openai/gpt",
            status="200",
            endpoint="chat/completions",
        )
        == 4
    )
    assert (
        value(
            got,
            "aigw_requests_total",
            model="gpt",
            target="local/llama",
            status="502",
            endpoint="chat/completions",
        )
        == 1
    )
    assert (
        value(
            got,
            "aigw_requests_total",
            model="gpt",
            target="",
            status="429",
            endpoint="chat/completions",
        )
        == 1
    )
    assert value(got, "aigw_request_duration_seconds_count", model="gpt") == 6
    assert value(got, "aigw_request_duration_seconds_sum", model="gpt") == pytest.approx(
        0.75 + 1.5 + 0.05 + 0.0004
    )
    assert value(got, "aigw_request_duration_seconds_bucket", model="gpt", le="0.01") == 1
    assert value(got, "aigw_request_duration_seconds_bucket", model="gpt", le="0.25") == 5
    assert value(got, "aigw_request_duration_seconds_bucket", model="gpt", le="1.0") == 5
    assert value(got, "aigw_request_duration_seconds_bucket", model="gpt", le="2.5") == 6
    assert value(got, "aigw_request_duration_seconds_bucket", model="gpt", le="+Inf") == 6
    assert value(got, "aigw_time_to_first_token_seconds_count", model="gpt") == 1
    assert value(got, "aigw_time_to_first_token_seconds_sum", model="gpt") == pytest.approx(0.3)
    # Overheads: 3 x 125 ms, 0.4 ms, 0 ms, 0.4 ms.
    assert value(got, "aigw_gateway_overhead_seconds_count") == 6
    assert value(got, "aigw_gateway_overhead_seconds_sum") == pytest.approx(0.3758)
    assert value(got, "aigw_gateway_overhead_seconds_bucket", le="5e-05") == 1
    assert value(got, "aigw_gateway_overhead_seconds_bucket", le="0.0005") == 3
    assert value(got, "aigw_gateway_overhead_seconds_bucket", le="0.1") == 3
    assert value(got, "aigw_gateway_overhead_seconds_bucket", le="+Inf") == 6
    assert value(got, "aigw_tokens_total", tenant="team-a", model="gpt", kind="prompt") == 15
    assert value(got, "aigw_tokens_total", tenant="team-a", model="gpt", kind="completion") == 20
    assert value(got, "aigw_tokens_total", tenant="team-b", model="gpt", kind="completion") == 2
    assert value(got, "aigw_cache_hits_total") == 2
    assert value(got, "aigw_cache_misses_total") == 1
    assert value(got, "aigw_cache_evictions_total") == 3
    assert value(got, "aigw_cache_entries") == 7
    assert value(got, "aigw_cache_bytes") == 4096
    assert value(got, "aigw_rejections_total", reason="rate_limit") == 2
    assert value(got, "aigw_rejections_total", reason="quota") == 1
    assert value(got, "aigw_rejections_total", reason="content_filter") == 1
    assert value(got, "aigw_rejections_total", reason="auth") == 0
    assert value(got, "aigw_in_flight_requests") == 1
    assert value(got, "aigw_target_healthy", target="openai/gpt") == 1
    assert value(got, "aigw_target_healthy", target="local/llama") == 0
    assert value(got, "aigw_target_circuit_state", target="openai/gpt") == 0
    assert value(got, "aigw_target_circuit_state", target="other/x") == 1
    assert value(got, "aigw_target_circuit_state", target="local/llama") == 2


def test_every_exposed_family_is_documented() -> None:
    m = Metrics(enabled=True, tenant_label=True)
    known_workload(m)
    body, _ = m.render()
    documented = {name for name, _, _, _ in METRICS_DOC}
    exposed = set()
    for family in text_string_to_metric_families(body.decode()):
        exposed.add(family.name + "_total" if family.type == "counter" else family.name)
        doc = next(d for d in METRICS_DOC if d[0] in (family.name, family.name + "_total"))
        assert doc[1] == family.type
        assert doc[3] == family.documentation
    assert exposed == documented


def test_tenant_label_off_drops_the_label() -> None:
    m = Metrics(enabled=True, tenant_label=False)
    m.tokens("team-a", "gpt", 10, 20)
    m.tokens("team-b", "gpt", 1, 2)
    got = samples(m)
    assert value(got, "aigw_tokens_total", model="gpt", kind="prompt") == 11
    assert value(got, "aigw_tokens_total", model="gpt", kind="completion") == 22
    assert not any("tenant" in dict(labels) for _, labels in got)


def test_label_cardinality_is_bounded() -> None:
    m = Metrics(enabled=True, tenant_label=True, max_tenants=3, max_models=2)
    for i in range(50):
        m.tokens(f"tenant-{i}", "model-0", 1, 0)
        m.request_done(f"model-{i}", "t", 200, 0.1, 0.1, None)
    got = samples(m)
    tenants = {dict(labels)["tenant"] for name, labels in got if name == "aigw_tokens_total"}
    assert tenants == {"tenant-0", "tenant-1", "tenant-2", OTHER}
    assert value(got, "aigw_tokens_total", tenant=OTHER, model="model-0", kind="prompt") == 47
    models = {dict(labels)["model"] for name, labels in got if name == "aigw_requests_total"}
    assert models == {"model-0", "model-1", OTHER}
    assert (
        value(
            got,
            "aigw_requests_total",
            model=OTHER,
            target="t",
            status="200",
            endpoint="chat/completions",
        )
        == 48
    )


def test_unknown_kinds_are_programming_errors() -> None:
    m = Metrics(enabled=True, tenant_label=True)
    with pytest.raises(ValueError):
        m.rejected("nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        m.cache_event("nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        m.target_state("t", True, "broken")


def test_forget_target() -> None:
    m = Metrics(enabled=True, tenant_label=True)
    m.target_state("a/x", True, "closed")
    m.target_state("b/y", False, "open")
    m.forget_target("a/x")
    got = samples(m)
    assert ("aigw_target_healthy", (("target", "a/x"),)) not in got
    assert value(got, "aigw_target_healthy", target="b/y") == 0


def test_disabled_is_a_no_op() -> None:
    m = Metrics(enabled=False, tenant_label=True)
    known_workload(m)
    m.forget_target("openai/gpt")
    body, _ = m.render()
    assert body == b""


def test_registries_are_private() -> None:
    a = Metrics(enabled=True, tenant_label=True)
    b = Metrics(enabled=True, tenant_label=True)
    a.rejected("auth")
    assert value(samples(a), "aigw_rejections_total", reason="auth") == 1
    assert value(samples(b), "aigw_rejections_total", reason="auth") == 0
