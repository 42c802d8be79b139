"""Config: frozen dataclasses for every section of the YAML file, and `load_config()`.

The dataclasses are the one table of settings: their defaults are the defaults, their field
metadata (`doc`, `unit`, `choices`, `min`, `secret`, ...; see `_doc`) drives the loader's
validation and the README reference (`describe_settings()`). There is no second schema.

Size: one concept, the config file: its table of settings, the one pass that reads YAML into it
(collecting every problem with its line and key path), the rules across fields and the
reference generated from it. Split, each part would reach into the others' private helpers.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import types
import typing
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

# --- units -------------------------------------------------------------------------------
# Re-exported: the config module is where people look for the names of choices.
from aigw.choices import (
    APIS as APIS,
)
from aigw.choices import (
    BACKENDS as BACKENDS,
)
from aigw.choices import (
    BUILTIN_HOOKS as BUILTIN_HOOKS,
)
from aigw.choices import (
    DEFAULT_APIS as DEFAULT_APIS,
)
from aigw.choices import (
    PERIODS as PERIODS,
)
from aigw.choices import (
    PROVIDER_TYPES as PROVIDER_TYPES,
)
from aigw.choices import (
    STRATEGIES as STRATEGIES,
)
from aigw.choices import (
    BackendName as BackendName,
)
from aigw.choices import (
    PeriodName as PeriodName,
)
from aigw.choices import (
    ProviderType as ProviderType,
)
from aigw.choices import (
    StrategyName as StrategyName,
)
from aigw.errors import ConfigError, ConfigProblem, ConfigWarning
from aigw.headers import never_forwarded
from aigw.pricing import MAX_BUDGET_USD, MAX_DECIMALS, MAX_PRICE_USD
from aigw.tenants import is_valid_tenant


def _doc(doc: str, **meta: Any) -> dict[str, Any]:
    """Field metadata read by the loader and the docs.

    Keys: `doc` (required for every setting), `unit` ("duration" | "size"), `choices`, `min`,
    `max`, `secret` (only from `${ENV}`), `secret_alt` (field to suggest instead of a secret),
    `secret_url` (may hold a password: never echoed), `path` (`~` is expanded), `tenant_name`
    (value is a tenant name), `tenant_keys` (mapping keys are tenant names), `inherit` (entries
    inherit missing keys from the enclosing section), `internal` (not settable from YAML),
    `key_name` (what the keys of a mapping are, in the docs: `<model>`), `tenant_quota` (the
    `quota.tenants` mapping: an integer or a `TenantQuota` per tenant; see
    `_Loader.tenant_quotas`).
    """
    meta["doc"] = doc
    return meta


_INTERNAL: dict[str, Any] = {"internal": True}

#: The largest token quota aigw accepts (config, `aigw quota set`, the admin socket): far beyond
#: any real budget, and well inside what every state store can count (SQLite: 2**63).
MAX_QUOTA_TOKENS = 10**15


class Secret:
    """A secret string (provider key, tenant key). Its repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


# --- sections ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    host: str = field(
        default="127.0.0.1", metadata=_doc("Address the OpenAI-compatible HTTP API listens on.")
    )
    port: int = field(default=8080, metadata=_doc("TCP port of the HTTP API.", min=0, max=65535))
    admin_socket: str | None = field(
        default=None,
        metadata=_doc(
            "Path of the admin Unix socket; default `<user_runtime_dir>/aigw/admin.sock`.",
            path=True,
        ),
    )
    max_body_size: int = field(
        default=8 * 1024 * 1024,
        metadata=_doc("Largest request body accepted (413 above).", unit="size", min=1),
    )
    max_upstream_body: int = field(
        default=64 * 1024 * 1024,
        metadata=_doc(
            "Largest upstream answer read whole (JSON answers, error bodies), counted decoded "
            "(gzip too); 502 above. Streams are not capped in total (they pass through and "
            "memory stays flat); one SSE event may not exceed 8MiB.",
            unit="size",
            min=1,
        ),
    )
    shutdown_timeout: float = field(
        default=30.0,
        metadata=_doc("How long a graceful stop waits for in-flight requests.", unit="duration"),
    )
    request_timeout: float = field(
        default=600.0,
        metadata=_doc(
            "Deadline for one client request, failover included.", unit="duration", min=0.001
        ),
    )
    access_log: bool = field(
        default=False, metadata=_doc("Log one line per request (never bodies or keys).")
    )
    header_timeout: float = field(
        default=10.0,
        metadata=_doc(
            "Longest a client may take to send a request's headers, from their first byte "
            "(from connecting, for a connection's first request); the connection is closed after.",
            unit="duration",
            min=0.001,
        ),
    )
    keepalive_timeout: float = field(
        default=75.0,
        metadata=_doc(
            "An idle keep-alive connection is closed after this long.", unit="duration", min=0.001
        ),
    )
    max_connections: int | None = field(
        default=None,
        metadata=_doc(
            "Most client connections at once; default: what the open-file limit allows after a "
            "reserve for upstreams and the admin socket. Beyond it the connections idle longest "
            "are closed, or the new one is answered 503.",
            min=1,
        ),
    )


@dataclass(frozen=True)
class StateConfig:
    backend: str = field(
        default="sqlite", metadata=_doc("Where quota usage and overrides live.", choices=BACKENDS)
    )
    path: str | None = field(
        default=None,
        metadata=_doc("SQLite file; default `<user_data_dir>/aigw/state.db`.", path=True),
    )
    url: str | None = field(
        default=None,
        repr=False,  # may hold a password
        metadata=_doc("Redis URL (`redis://host:port/db`), for backend: redis.", secret_url=True),
    )
    flush_interval: float = field(
        default=1.0,
        metadata=_doc(
            "How often buffered usage is written to the store.", unit="duration", min=0.001
        ),
    )
    on_failure: str = field(
        default="fail_open",
        metadata=_doc(
            "When the shared store is unreachable: fail_open serves "
            "and reconciles later, fail_closed answers 503.",
            choices=("fail_open", "fail_closed"),
        ),
    )


@dataclass(frozen=True)
class AuthKey:
    tenant: str = field(
        default="", metadata=_doc("Tenant this key authenticates as.", tenant_name=True)
    )
    key: Secret | None = field(
        default=None,
        metadata=_doc("The key itself, from `${ENV}` only.", secret=True, secret_alt="key_sha256"),
    )
    key_sha256: str | None = field(
        default=None, metadata=_doc("Hex SHA-256 of the key, so no secret sits in the file.")
    )

    def digest(self) -> bytes:
        """SHA-256 digest of the key, whichever way it was given."""
        import hashlib

        if self.key is not None:
            return hashlib.sha256(self.key.reveal().encode()).digest()
        assert self.key_sha256 is not None
        return bytes.fromhex(self.key_sha256)


@dataclass(frozen=True)
class AuthConfig:
    keys: tuple[AuthKey, ...] = field(
        default=(), metadata=_doc("Tenant API keys; none = laptop mode (X-Aigw-Tenant).")
    )


@dataclass(frozen=True)
class MockOptions:
    latency: float = field(
        default=0.0, metadata=_doc("Delay before the first byte.", unit="duration")
    )
    chunk_delay: float = field(
        default=0.0, metadata=_doc("Delay between streamed chunks.", unit="duration")
    )
    failure_rate: float = field(
        default=0.0, metadata=_doc("Fraction of requests answered with HTTP 500.", min=0, max=1)
    )
    answer: str | None = field(
        default=None, metadata=_doc("Fixed answer; default echoes the last user message.")
    )
    seed: int | None = field(
        default=None, metadata=_doc("Seed for the failure draw (deterministic tests).")
    )


@dataclass(frozen=True)
class ProviderConfig:
    name: str = field(default="", metadata=_INTERNAL)  # the key under providers:/models:
    type: str = field(default="openai", metadata=_doc("Provider kind.", choices=PROVIDER_TYPES))
    base_url: str = field(
        default="", metadata=_doc("Base URL of an OpenAI-compatible API, ending in /v1.")
    )
    api_key: Secret | None = field(
        default=None,
        metadata=_doc("Sent as `Authorization: Bearer`, from `${ENV}` only.", secret=True),
    )
    headers: dict[str, str] = field(
        default_factory=dict,
        repr=False,  # values may carry credentials from ${ENV}
        metadata=_doc("Extra headers sent upstream (values may use `${ENV}`)."),
    )
    apis: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "The APIs this upstream speaks natively; default by type (openai: chat, "
            "completions, embeddings; mock: all). Requests in another dialect are translated "
            "through chat; a target that can serve neither is skipped.",
            choices=APIS,
        ),
    )
    forward_headers: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Client request headers forwarded upstream, besides the default ones "
            "(`OpenAI-Organization`, `OpenAI-Project`, `OpenAI-Beta`, `User-Agent`, "
            "`X-Stainless-*`, `HTTP-Referer`, `X-Title`); credentials, cookies, `X-Aigw-*` and "
            "hop-by-hop headers never are."
        ),
    )
    timeout: float = field(
        default=300.0,
        metadata=_doc("Read timeout: longest wait for the next byte.", unit="duration", min=0.001),
    )
    connect_timeout: float = field(
        default=10.0, metadata=_doc("TCP/TLS connect timeout.", unit="duration", min=0.001)
    )
    max_connections: int = field(
        default=100, metadata=_doc("Pooled keep-alive connections to this upstream.", min=1)
    )
    ca_file: str | None = field(
        default=None,
        metadata=_doc("Extra CA bundle (PEM) trusted for this upstream's TLS.", path=True),
    )
    mock: MockOptions = field(
        default_factory=MockOptions,
        metadata=_doc("Options of the built-in mock provider (type: mock)."),
    )

    def speaks(self) -> frozenset[str]:
        """The APIs this provider answers natively (`apis`, else its type's default)."""
        return frozenset(self.apis or DEFAULT_APIS.get(self.type, ()))


@dataclass(frozen=True)
class TargetConfig:
    provider: str = field(default="", metadata=_doc("Name of a provider under `providers:`."))
    model: str = field(
        default="", metadata=_doc("Model name sent upstream; default: the gateway model's name.")
    )
    weight: int = field(default=1, metadata=_doc("Relative share for weighted strategies.", min=1))


@dataclass(frozen=True)
class ModelConfig:
    name: str = field(default="", metadata=_INTERNAL)  # the key under providers:/models:
    strategy: str = field(
        default="round_robin", metadata=_doc("How a target is chosen.", choices=STRATEGIES)
    )
    targets: tuple[TargetConfig, ...] = field(
        default=(), metadata=_doc("Where requests for this model go (at least one).")
    )
    fallbacks: tuple[str, ...] = field(
        default=(), metadata=_doc("Other model names tried when every target failed.")
    )
    retries: int | None = field(
        default=None,
        metadata=_doc("Extra targets tried after a failure; default: all targets.", min=0),
    )


@dataclass(frozen=True)
class HealthConfig:
    error_rate_threshold: float = field(
        default=0.5, metadata=_doc("Window error rate that opens a target's circuit.", min=0, max=1)
    )
    window: float = field(
        default=60.0,
        metadata=_doc("Sliding window for the error rate.", unit="duration", min=0.001),
    )
    min_requests: int = field(
        default=10, metadata=_doc("Requests in the window before the rate is judged.", min=1)
    )
    cooldown: float = field(
        default=30.0,
        metadata=_doc(
            "First open-circuit pause; doubles on repeated trips.", unit="duration", min=0.001
        ),
    )
    max_cooldown: float = field(
        default=300.0, metadata=_doc("Cap of the doubling cooldown.", unit="duration", min=0.001)
    )
    check_interval: float = field(
        default=30.0,
        metadata=_doc("Active probe period (`GET /models`); 0 = off.", unit="duration"),
    )


@dataclass(frozen=True)
class RateLimitRule:
    requests_per_second: float = field(
        default=0.0, metadata=_doc("Sustained requests per second; 0 = unlimited.", min=0)
    )
    burst: int = field(
        default=0, metadata=_doc("Bucket size; default max(1, requests_per_second).", min=0)
    )
    tokens_per_minute: int = field(
        default=0, metadata=_doc("Tokens per minute; 0 = unlimited.", min=0)
    )


@dataclass(frozen=True)
class RateLimitConfig:
    requests_per_second: float = field(
        default=0.0, metadata=_doc("Per-tenant requests per second; 0 = unlimited.", min=0)
    )
    burst: int = field(
        default=0, metadata=_doc("Per-tenant burst; default max(1, requests_per_second).", min=0)
    )
    tokens_per_minute: int = field(
        default=0, metadata=_doc("Per-tenant tokens per minute; 0 = unlimited.", min=0)
    )
    tenants: dict[str, RateLimitRule] = field(
        default_factory=dict,
        metadata=_doc(
            "Per-tenant overrides (missing keys inherit).", tenant_keys=True, inherit=True
        ),
    )

    def rule_for(self, tenant: str) -> RateLimitRule:
        return self.tenants.get(tenant) or RateLimitRule(
            self.requests_per_second, self.burst, self.tokens_per_minute
        )


@dataclass(frozen=True)
class TenantQuota:
    """The mapping form of one `quota.tenants` entry (the integer form is its `tokens`)."""

    tokens: int | None = field(
        default=None,
        metadata=_doc(
            "Tokens per period (0 = unlimited); default `quota.default`.",
            min=0,
            max=MAX_QUOTA_TOKENS,
        ),
    )
    usd: Decimal | None = field(
        default=None,
        metadata=_doc(
            "US dollars per period (0 = no money budget); default `quota.default_usd`.",
            min=0,
            max=MAX_BUDGET_USD,
        ),
    )


@dataclass(frozen=True)
class QuotaConfig:
    default: int = field(
        default=0,
        metadata=_doc("Tokens per period per tenant; 0 = unlimited.", min=0, max=MAX_QUOTA_TOKENS),
    )
    default_usd: Decimal = field(
        default=Decimal(0),
        metadata=_doc(
            "US dollars per period per tenant, priced with `prices:`; 0 = no money budget. "
            "Either limit can refuse a request.",
            min=0,
            max=MAX_BUDGET_USD,
        ),
    )
    period: str = field(
        default="daily", metadata=_doc("Calendar period the usage resets on.", choices=PERIODS)
    )
    timezone: str = field(default="UTC", metadata=_doc("IANA zone the periods are aligned to."))
    tenants: dict[str, int] = field(
        default_factory=dict,
        metadata=_doc(
            "Per-tenant limits: tokens as an integer (0 = unlimited), or a mapping "
            "`{tokens: N, usd: X}` with either or both.",
            tenant_keys=True,
            min=0,
            max=MAX_QUOTA_TOKENS,
            tenant_quota=True,
        ),
    )
    #: Per-tenant money budgets (`quota.tenants.NAME.usd`), filled by the loader.
    tenants_usd: dict[str, Decimal] = field(default_factory=dict, metadata=_INTERNAL)
    default_max_tokens: int = field(
        default=4096,
        metadata=_doc("Completion tokens reserved when a request sets no max_tokens.", min=1),
    )

    def usd_for(self, tenant: str) -> Decimal:
        """The tenant's money budget per period in USD; 0 = none."""
        return self.tenants_usd.get(tenant, self.default_usd)

    @property
    def has_money_budget(self) -> bool:
        """Whether any tenant has a money budget in the config."""
        return self.default_usd > 0 or any(usd > 0 for usd in self.tenants_usd.values())


@dataclass(frozen=True)
class PriceConfig:
    input: Decimal | None = field(
        default=None,
        metadata=_doc(
            "USD per million prompt tokens not read from or written to a cache (required).",
            min=0,
            max=MAX_PRICE_USD,
        ),
    )
    cached_input: Decimal | None = field(
        default=None,
        metadata=_doc(
            "USD per million prompt tokens read from the provider's prompt cache; "
            "default: `input`.",
            min=0,
            max=MAX_PRICE_USD,
        ),
    )
    cache_write: Decimal | None = field(
        default=None,
        metadata=_doc(
            "USD per million prompt tokens written to the provider's prompt cache "
            "(Anthropic's cache creation); default: `input`.",
            min=0,
            max=MAX_PRICE_USD,
        ),
    )
    output: Decimal | None = field(
        default=None,
        metadata=_doc(
            "USD per million completion tokens, reasoning included (required).",
            min=0,
            max=MAX_PRICE_USD,
        ),
    )


@dataclass(frozen=True)
class UsageConfig:
    enabled: bool = field(
        default=True,
        metadata=_doc(
            "Keep the usage history (hourly rollups per tenant, model and endpoint) that "
            "`aigw usage` and the admin socket's `GET /usage` show."
        ),
    )
    retention: float = field(
        default=90 * 86400.0,
        metadata=_doc(
            "How long hourly rows are kept; older ones are pruned.", unit="duration", min=3600
        ),
    )
    flush_interval: float = field(
        default=10.0,
        metadata=_doc(
            "How often the rollup kept in memory is added to the state store (where other "
            "instances see it); `GET /usage` includes what is not flushed yet.",
            unit="duration",
            min=0.001,
        ),
    )


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = field(default=False, metadata=_doc("Exact-match response cache."))
    max_entries: int = field(default=10000, metadata=_doc("Most entries kept (LRU).", min=1))
    max_bytes: int = field(
        default=100 * 1024 * 1024, metadata=_doc("Most bytes kept (LRU).", unit="size", min=1)
    )
    ttl: float = field(
        default=300.0, metadata=_doc("How long an entry lives.", unit="duration", min=0.001)
    )


@dataclass(frozen=True)
class HookSpec:
    name: str  # built-in name or "module:Class"
    options: dict[str, Any] = field(default_factory=dict)
    #: where it was written (`aigw validate`'s problems name it); not part of its identity
    line: int | None = field(default=None, compare=False)
    key: str = field(default="", compare=False)


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = field(default=True, metadata=_doc("Serve Prometheus metrics on GET /metrics."))
    tenant_label: bool = field(
        default=True, metadata=_doc("Label token counters by tenant (off bounds cardinality).")
    )


#: The modules the `otel` extra brings (`pip install 'aigw[otel]'`); imported only when tracing
#: is enabled.
OTEL_MODULES: tuple[str, ...] = ("opentelemetry.sdk.trace",)
OTEL_INSTALL_HINT = "install them with: pip install 'aigw[otel]'"


def missing_otel_module() -> str | None:
    """The first module of the `otel` extra that cannot be imported here, or None."""
    import importlib.util

    for name in OTEL_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):  # a parent package is missing or blocked
            return name
    return None


@dataclass(frozen=True)
class TracingConfig:
    enabled: bool = field(
        default=False,
        metadata=_doc(
            "Export OpenTelemetry traces over OTLP/HTTP: a server span per request and a client "
            "span per upstream attempt, with the GenAI semantic conventions. Needs "
            "`pip install 'aigw[otel]'`."
        ),
    )
    endpoint: str = field(
        default="http://127.0.0.1:4318",
        metadata=_doc(
            "OTLP/HTTP collector: a base URL (spans go to `<endpoint>/v1/traces`) or a full URL "
            "ending in `/v1/traces`."
        ),
    )
    headers: dict[str, str] = field(
        default_factory=dict,
        repr=False,  # values carry the collector's credentials from ${ENV}
        metadata=_doc(
            "Headers sent with every export (a vendor's API key: `x-honeycomb-team: "
            "${HONEYCOMB_API_KEY}`); credential headers only from `${ENV}`."
        ),
    )
    sample_ratio: float = field(
        default=1.0,
        metadata=_doc(
            "Fraction of new traces recorded; a client's `traceparent` decides for the traces "
            "it started (parent-based sampling).",
            min=0,
            max=1,
        ),
    )
    service_name: str = field(default="aigw", metadata=_doc("`service.name` of the spans."))
    capture_content: bool = field(
        default=False,
        metadata=_doc(
            "Record prompt and answer text on the server span (`gen_ai.input.messages`, "
            "`gen_ai.output.messages`), redacted like the audit log and cut at 16,384 "
            "characters each."
        ),
    )
    export_timeout: float = field(
        default=10.0,
        metadata=_doc(
            "Longest one export to the collector may take, retries included.",
            unit="duration",
            min=0.001,
        ),
    )
    max_queue_size: int = field(
        default=2048,
        metadata=_doc(
            "Finished spans waiting for export; beyond it new spans are dropped, so a dead "
            "collector costs bounded memory.",
            min=1,
        ),
    )
    ca_file: str | None = field(
        default=None,
        metadata=_doc(
            "CA bundle (PEM) that verifies an https:// endpoint, instead of the system's.",
            path=True,
        ),
    )

    def export_url(self) -> str:
        """Where spans are POSTed: `endpoint`, with `/v1/traces` added unless it ends so."""
        url = self.endpoint.rstrip("/")
        return url if url.endswith("/v1/traces") else url + "/v1/traces"


@dataclass(frozen=True)
class Config:
    version: int = field(default=1, metadata=_doc("Config format version; must be 1."))
    server: ServerConfig = field(
        default_factory=ServerConfig, metadata=_doc("HTTP listener, admin socket, limits.")
    )
    state: StateConfig = field(default_factory=StateConfig, metadata=_doc("State store."))
    auth: AuthConfig = field(default_factory=AuthConfig, metadata=_doc("Tenant keys."))
    providers: dict[str, ProviderConfig] = field(
        default_factory=dict, metadata=_doc("Upstream providers by name.")
    )
    models: dict[str, ModelConfig] = field(
        default_factory=dict, metadata=_doc("Model names clients use, and their targets.")
    )
    health: HealthConfig = field(
        default_factory=HealthConfig, metadata=_doc("Target health tracking.")
    )
    rate_limit: RateLimitConfig = field(
        default_factory=RateLimitConfig, metadata=_doc("Per-tenant rate limits.")
    )
    quota: QuotaConfig = field(
        default_factory=QuotaConfig, metadata=_doc("Per-tenant token quotas and money budgets.")
    )
    prices: dict[str, PriceConfig] = field(
        default_factory=dict,
        metadata=_doc(
            "USD per million tokens by upstream model name (the model that answered, as in "
            "`x-aigw-model`), over the table aigw ships (`aigw/prices/default.json`): an entry "
            "here replaces the shipped one of that model whole. A dated snapshot "
            "(`gpt-4o-2024-08-06`) or a provider prefix (`openai/gpt-4o`) falls back to the "
            "plain name. A model with no price costs 0.",
            key_name="model",
        ),
    )
    usage: UsageConfig = field(
        default_factory=UsageConfig, metadata=_doc("Usage history (`aigw usage`).")
    )
    cache: CacheConfig = field(default_factory=CacheConfig, metadata=_doc("Response cache."))
    hooks: tuple[HookSpec, ...] = field(
        default_factory=lambda: (HookSpec("validation"),),
        metadata=_doc(
            "Request/response hooks, in order: a built-in name (`validation`, "
            '`content_filter`, `audit`), `{name: {options}}` or `"module:Class"`; '
            "`validation` runs first unless listed."
        ),
    )
    metrics: MetricsConfig = field(
        default_factory=MetricsConfig, metadata=_doc("Prometheus metrics.")
    )
    tracing: TracingConfig = field(
        default_factory=TracingConfig, metadata=_doc("OpenTelemetry traces (optional extra).")
    )
    #: Where this config came from ("<built-in default>" when no file was found).
    source: str = field(default="<built-in default>", metadata=_INTERNAL)
    #: What `load_config` warned about: the config works, but likely not as meant.
    warnings: tuple[ConfigWarning, ...] = field(
        default=(), metadata=_INTERNAL, compare=False, repr=False
    )


def default_config() -> Config:
    """The built-in default: listen on 127.0.0.1:8080 with one mock provider serving `mock`."""
    return Config(
        providers={"mock": ProviderConfig(name="mock", type="mock")},
        models={
            "mock": ModelConfig(name="mock", targets=(TargetConfig(provider="mock", model="mock"),))
        },
    )


# --- units: durations and sizes ----------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", re.ASCII)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)", re.IGNORECASE | re.ASCII)
DURATION_HINT = "use a number of seconds or a number with a unit: 250ms, 30s, 5m, 1h, 1d"
SIZE_HINT = "use a number of bytes or a number with a unit: 512KiB, 8MiB, 1GiB, 100MB"


def parse_duration(value: object) -> float | None:
    """Seconds from `250ms`, `30s`, `5m`, `1h`, `1d` or a plain number; None when invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = _DURATION_RE.fullmatch(text)
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)] if m else None


def parse_size(value: object) -> int | None:
    """Bytes from `8MiB`, `100MB`, `512KiB`, `1GiB` or a plain integer; None when invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    m = _SIZE_RE.fullmatch(text)
    return round(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]) if m else None


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 30s, 5m, 250ms (inverse of `parse_duration`)."""
    if seconds == 0:
        return "0s"
    for unit, factor in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= factor and (seconds / factor).is_integer():
            return f"{int(seconds / factor)}{unit}"
    ms = seconds * 1000
    if abs(ms - round(ms)) < 1e-9:
        return f"{round(ms)}ms"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """The shortest exact spelling: 8MiB, 100MB, 1234B (inverse of `parse_size`)."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


# --- loading -----------------------------------------------------------------------------

_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_DOTTED_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# `$${` is a literal `${`; anything else starting with `${` must be a valid reference.
_ENV_TOKEN_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_ENV_REF_RE = re.compile(rf"({_ENV_NAME})(?::-(.*))?", re.DOTALL)
_SECRET_REF_RE = re.compile(rf"\$\{{({_ENV_NAME})(:-.*)?\}}", re.DOTALL)
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_TAG = "tag:yaml.org,2002:"
_INVALID: Any = object()  # a value that failed validation; its problem is already recorded
_YAML_SPECIAL_FLOAT = re.compile(r"\.(inf|nan)", re.IGNORECASE)


def load_config(
    path: str | os.PathLike[str] | None, *, env: Mapping[str, str] | None = None
) -> Config:
    """Read, validate and convert a YAML config file; `None` means the built-in default.

    Every problem in the file is collected and raised together as one `ConfigError`.
    `env` (default `os.environ`) resolves `${VAR}` references.
    """
    if path is None:
        return default_config()
    source = os.fspath(path)
    try:
        text = Path(source).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(source, None, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([ConfigProblem(source, None, "", f"cannot read: {reason}")]) from None
    return parse_config(text, source, env=env)


def parse_config(
    text: str, source: str = "<string>", *, env: Mapping[str, str] | None = None
) -> Config:
    """`load_config` for YAML text already in memory; `source` names it in problems."""
    loader = _Loader(source, os.environ if env is None else env)
    config = loader.load(text)
    loader.warnings.sort(key=lambda p: p.line or 0)
    if loader.problems or config is None:
        loader.problems.sort(key=lambda p: p.line or 0)
        raise ConfigError(loader.problems, loader.warnings)
    return replace(config, warnings=tuple(loader.warnings))


# --- rules about secrets, listeners and YAML syntax ----------------------------------------

#: Header names that carry credentials: their values may only come from `${ENV}`.
_CREDENTIAL_HEADER_RE = re.compile(
    r"(?:^|[-_])(?:authorization|auth|api[-_]?key|key|token|secret|password|passwd|cookie)"
    r"(?:$|[-_])"
)
#: An authorization scheme word may be written in the file (`Bearer ${TOKEN}`); what follows not.
_AUTH_SCHEME_RE = re.compile(r"\s*(?:(?:Bearer|Basic|Token|Bot|ApiKey|Key|Digest)\b)?\s*", re.I)
_ENV_NAMES_RE = re.compile(rf"\$\{{({_ENV_NAME})")
_FROM_ENV = "\x00"  # stands for a value that comes from the environment


def _from_env(raw: str) -> str:
    """`raw` with every `${VAR}` / `${VAR:-}` replaced by `_FROM_ENV`, and `${VAR:-default}` by
    its default: a default is text written in the file."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        ref = _ENV_REF_RE.fullmatch(m.group(1) or "")
        if ref is None:
            return m.group(0)
        return ref.group(2) or _FROM_ENV

    return _ENV_TOKEN_RE.sub(one, raw)


def _literal_url_credentials(raw: str) -> bool:
    """Whether a URL as written holds a password (or a lone user token) not from `${ENV}`."""
    if "@" not in raw:
        return False
    try:
        netloc = urlsplit(_from_env(raw)).netloc
    except ValueError:
        return False
    if "@" not in netloc:
        return False
    user, colon, password = netloc.rpartition("@")[0].partition(":")
    secret = password if colon else user
    return secret.replace(_FROM_ENV, "") != ""


def _literal_header_credential(raw: str) -> bool:
    """Whether a credential header's value as written holds more than a scheme word and
    `${ENV}` references."""
    return _AUTH_SCHEME_RE.fullmatch(_from_env(raw).replace(_FROM_ENV, "")) is None


#: Collector headers that carry a credential though their names do not say so.
_COLLECTOR_CREDENTIAL_HEADERS = frozenset({"x-honeycomb-team", "uptrace-dsn"})


def _collector_credential(header: str) -> bool:
    """Whether a `tracing.headers` name carries a credential (its value only from `${ENV}`)."""
    name = header.lower()
    return name in _COLLECTOR_CREDENTIAL_HEADERS or _CREDENTIAL_HEADER_RE.search(name) is not None


def _header_example(header: str) -> str:
    return "Bearer ${UPSTREAM_TOKEN}" if "authorization" in header.lower() else "${UPSTREAM_TOKEN}"


def public_url(url: str) -> str:
    """`url` safe to show: without its password (a lone `user@`, which may be a token, goes too)
    and without a `password=` query parameter."""
    from urllib.parse import parse_qsl, urlencode, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}@{host}" if colon and user else host
    query = parts.query
    if "password" in query.lower():
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, v) for k, v in pairs if k.lower() != "password"])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def is_loopback(host: str) -> bool:
    """Whether `host` is only reachable from this machine."""
    import ipaddress

    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_warning(host: str, *, has_keys: bool) -> tuple[str, str] | None:
    """`(message, hint)` when the HTTP API listens where other machines can reach it."""
    if is_loopback(host):
        return None
    where = "every network interface" if host in ("", "0.0.0.0", "::", "[::]") else f"{host}"
    hint = (
        "anyone who can reach it can use your providers' keys: add auth.keys, "
        "or listen on 127.0.0.1"
        if not has_keys
        else "only tenants with a key get in, but let a firewall decide who can connect, "
        "or listen on 127.0.0.1"
    )
    return f"listens on {where}, not loopback: the API is reachable from your network", hint


def _syntax_hint(exc: yaml.MarkedYAMLError, text: str) -> tuple[int | None, str | None]:
    """The line to report a YAML syntax error at, and a hint for the usual causes."""
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    context, problem = exc.context or "", exc.problem or ""
    opened = exc.context_mark.line + 1 if exc.context_mark else None
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines):
        here = lines[mark.line]
        indent = here[: len(here) - len(here.lstrip(" \t"))]
    else:
        indent = ""
    if "\t" in indent or "'\\t'" in problem:
        return line, "YAML does not allow tabs for indentation: indent with spaces"
    if context.startswith("while parsing a flow") and opened is not None:
        bracket, close = ("[", "]") if "sequence" in context else ("{", "}")
        return opened, f"the `{bracket}` opened on this line is not closed: add its `{close}`"
    if context.startswith("while scanning a quoted scalar") and opened is not None:
        return opened, "the quote opened on this line is not closed"
    if "mapping values are not allowed" in problem:
        return line, "quote a value that contains ': ', and check the indentation"
    if "could not find expected ':'" in problem or "expected <block end>" in problem:
        return line, "check the indentation: the keys of one mapping must line up"
    return line, None


def _did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None


def _one_of(word: str, choices: Iterable[str], *, none: str = "none are defined") -> str:
    choices = list(choices)
    if not choices:
        return none
    listed = "one of: " + ", ".join(choices)
    guess = _did_you_mean(word, choices)
    return f"{guess} Expected {listed}" if guess else f"expected {listed}"


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _settable(cls: type) -> list[Field[Any]]:
    return [f for f in fields(cls) if not f.metadata.get("internal")]


def _value_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata of a collection field that applies to each of its values."""
    return {k: meta[k] for k in ("unit", "choices", "min", "max") if k in meta}


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {
        "null": "nothing (null)",
        "bool": "a boolean",
        "int": "an integer",
        "float": "a number",
        "str": "a string",
        "timestamp": "a date",
    }.get(node.tag.removeprefix(_TAG), f"a {node.tag} value")


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "null"


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Loader:
    """One pass over one file: converts nodes to dataclasses and collects every problem."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigWarning] = []
        self.lines: dict[str, int] = {}  # dotted key path -> line where it was written
        #: secret paths whose variable was unset or empty -> the variable's name
        self.empty_secrets: dict[str, str] = {}
        #: key path -> a string value as written, before `${ENV}` substitution
        self.raw: dict[str, str] = {}
        self.constructor = yaml.constructor.SafeConstructor()
        self.resolver = yaml.resolver.Resolver()

    def problem(self, line: int | None, key: str, message: str, hint: str | None = None) -> None:
        self.problems.append(ConfigProblem(self.source, line, key, message, hint))

    def warn(self, key: str, message: str, hint: str | None = None) -> None:
        self.warnings.append(ConfigWarning(self.source, self.line_of(key), key, message, hint))

    def line_of(self, path: str) -> int | None:
        """Line of a key path, or of its nearest ancestor that was written in the file."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[: max(cut, 0)]
        return None

    # --- the document ---

    def load(self, text: str) -> Config | None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            line, hint = _syntax_hint(exc, text)
            # Only the parser's own words: its snippet of the line could show a secret.
            words = "; ".join(str(w) for w in (exc.context, exc.problem) if w)
            self.problem(line, "", f"YAML syntax error: {words}", hint)
            return None
        except yaml.YAMLError as exc:
            self.problem(None, "", f"YAML syntax error: {type(exc).__name__}")
            return None
        if root is None:
            self.problem(None, "", "the file is empty", "start with `version: 1`")
            return None
        if not isinstance(root, yaml.MappingNode):
            self.problem(
                _line(root), "", f"the file must be a mapping of sections, not {_node_kind(root)}"
            )
            return None
        config = self.dataclass(root, Config, "")
        if config is _INVALID:
            return None
        config = replace(config, source=self.source)
        config = self.check(config)
        return config if isinstance(config, Config) else None

    # --- generic conversion, driven by the dataclass fields ---

    def value(self, node: yaml.Node, tp: Any, meta: Mapping[str, Any], path: str) -> Any:
        tp, optional = _split_optional(tp)
        origin = typing.get_origin(tp)
        if origin is tuple and typing.get_args(tp)[0] is HookSpec:
            return self.hooks(node, path)
        if _is_null(node):
            if optional:
                return None
            if origin is tuple:  # an empty collection or section is the same as none
                return ()
            if not (is_dataclass(tp) or origin is dict):
                self.problem(_line(node), path, "a value is required here")
                return _INVALID
        if tp is Secret:
            return self.secret(node, meta, path)
        if isinstance(tp, type) and is_dataclass(tp):
            return self.dataclass(node, tp, path)
        if origin is dict:
            return self.mapping(node, typing.get_args(tp)[1], meta, path, None)
        if origin is tuple:
            return self.sequence(node, typing.get_args(tp)[0], meta, path)
        if tp is Any:
            return self.plain(node, path)
        return self.scalar_field(node, tp, meta, path)

    def entries(self, node: yaml.MappingNode, path: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The key/value nodes of a mapping; duplicate and non-scalar keys are problems."""
        seen: set[str] = set()
        merges = False
        for key_node, _ in node.value:
            if key_node.tag == _TAG + "merge":
                merges = True
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(_line(key_node), path, "keys must be plain names")
                continue
            if key_node.value in seen:
                sub = f"{path}.{key_node.value}" if path else key_node.value
                self.problem(_line(key_node), sub, "duplicate key", "remove one of them")
            seen.add(key_node.value)
        if merges:  # `<<: *anchor`; explicit keys come after the merged ones, so they win
            try:
                self.constructor.flatten_mapping(node)
            except yaml.YAMLError as exc:
                self.problem(_line(node), path, f"bad merge key: {getattr(exc, 'problem', exc)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                out[key_node.value] = (key_node, value_node)
                sub = f"{path}.{key_node.value}" if path else key_node.value
                self.lines[sub] = _line(key_node)
        return out

    def dataclass(
        self,
        node: yaml.Node,
        cls: type,
        path: str,
        *,
        name: str | None = None,
        inherited: Mapping[str, Any] | None = None,
    ) -> Any:
        given: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        if isinstance(node, yaml.MappingNode):
            given = self.entries(node, path)
        elif not _is_null(node):  # an empty section means all defaults
            what = path or "the file"
            self.problem(_line(node), path, f"{what} must be a mapping, not {_node_kind(node)}")
            return _INVALID
        settable = _settable(cls)
        known = {f.name for f in settable}
        for key, (key_node, _) in given.items():
            if key not in known:
                sub = f"{path}.{key}" if path else key
                hint = _did_you_mean(key, known) or "known keys: " + ", ".join(sorted(known))
                self.problem(_line(key_node), sub, f"unknown key '{key}'", hint)
        hints = _hints(cls)
        kwargs: dict[str, Any] = {} if name is None else {"name": name}
        for f in settable:
            if f.name in given:
                sub = f"{path}.{f.name}" if path else f.name
                value_node = given[f.name][1]
                if f.metadata.get("inherit"):
                    parent = {g.name: kwargs.get(g.name, _default(g)) for g in settable}
                    item_tp = typing.get_args(hints[f.name])[1]
                    value = self.mapping(value_node, item_tp, f.metadata, sub, parent)
                elif f.metadata.get("tenant_quota"):
                    value = self.tenant_quotas(value_node, f.metadata, sub)
                    if value is not _INVALID:
                        value, kwargs["tenants_usd"] = value
                else:
                    value = self.value(value_node, hints[f.name], f.metadata, sub)
                if value is not _INVALID:
                    kwargs[f.name] = value
            elif inherited is not None and f.name in inherited:
                kwargs[f.name] = inherited[f.name]
        return cls(**kwargs)

    def mapping(
        self,
        node: yaml.Node,
        item_tp: Any,
        meta: Mapping[str, Any],
        path: str,
        inherited: Mapping[str, Any] | None,
    ) -> Any:
        if _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.problem(_line(node), path, f"expected a mapping, got {_node_kind(node)}")
            return _INVALID
        out: dict[str, Any] = {}
        for key, (key_node, value_node) in self.entries(node, path).items():
            sub = f"{path}.{key}"
            if meta.get("tenant_keys") and not is_valid_tenant(key):
                self.problem(_line(key_node), sub, f"invalid tenant name '{key}'", _TENANT_HINT)
                continue
            if not key or any(c.isspace() for c in key):
                self.problem(_line(key_node), sub, "names must be non-empty, without spaces")
                continue
            if isinstance(item_tp, type) and is_dataclass(item_tp):
                has_name = any(f.name == "name" for f in fields(item_tp))
                value = self.dataclass(
                    value_node,
                    item_tp,
                    sub,
                    name=key if has_name else None,
                    inherited=inherited,
                )
            else:
                value = self.value(value_node, item_tp, _value_meta(meta), sub)
            if value is not _INVALID:
                out[key] = value
        return out

    def tenant_quotas(self, node: yaml.Node, meta: Mapping[str, Any], path: str) -> Any:
        """`quota.tenants`: per tenant an integer (its tokens) or a `TenantQuota` mapping
        (`{tokens: N, usd: X}`). Returns `(tokens by tenant, USD by tenant)`."""
        if _is_null(node):
            return {}, {}
        if not isinstance(node, yaml.MappingNode):
            self.problem(_line(node), path, f"expected a mapping, got {_node_kind(node)}")
            return _INVALID
        tokens: dict[str, int] = {}
        usd: dict[str, Decimal] = {}
        for key, (key_node, value_node) in self.entries(node, path).items():
            sub = f"{path}.{key}"
            if not is_valid_tenant(key):
                self.problem(_line(key_node), sub, f"invalid tenant name '{key}'", _TENANT_HINT)
                continue
            if isinstance(value_node, yaml.MappingNode):
                entry = self.dataclass(value_node, TenantQuota, sub)
                if entry is _INVALID:
                    continue
                if (
                    entry.tokens is None
                    and entry.usd is None
                    and not any(k.startswith(sub + ".") for k in self.problem_keys())
                ):
                    self.problem(
                        _line(value_node),
                        sub,
                        "give the tenant's tokens, usd or both",
                        "e.g. {tokens: 100000, usd: 20}",
                    )
                if entry.tokens is not None:
                    tokens[key] = entry.tokens
                if entry.usd is not None:
                    usd[key] = entry.usd
            elif isinstance(value_node, yaml.ScalarNode) and value_node.tag == _TAG + "float":
                self.problem(
                    _line(value_node),
                    sub,
                    "expected an integer (tokens), got a number",
                    f"for a money budget write {key}: {{usd: {value_node.value}}}",
                )
            else:
                value = self.value(value_node, int, _value_meta(meta), sub)
                if value is not _INVALID:
                    tokens[key] = value
        return tokens, usd

    def sequence(self, node: yaml.Node, item_tp: Any, meta: Mapping[str, Any], path: str) -> Any:
        if not isinstance(node, yaml.SequenceNode):
            hint = "write a YAML list: [a, b] or one `- item` per line"
            self.problem(_line(node), path, f"expected a list, got {_node_kind(node)}", hint)
            return _INVALID
        items = []
        for i, item_node in enumerate(node.value):
            sub = f"{path}[{i}]"
            self.lines[sub] = _line(item_node)
            value = self.value(item_node, item_tp, _value_meta(meta), sub)
            if value is not _INVALID:
                items.append(value)
        return tuple(items)

    def plain(self, node: yaml.Node, path: str) -> Any:
        """Free-form data (hook options): plain Python values, `${ENV}` resolved in strings."""
        if isinstance(node, yaml.MappingNode):
            return {
                key: self.plain(value_node, f"{path}.{key}")
                for key, (_, value_node) in self.entries(node, path).items()
            }
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        ok, value = self.scalar(node, path, keep_str=True)
        return value if ok else None

    def scalar(self, node: yaml.Node, path: str, *, keep_str: bool) -> tuple[bool, Any]:
        """The Python value of a scalar node, with `${ENV}` resolved in strings.

        A substituted string is read again as YAML unless `keep_str`, so `port: ${PORT}` works.
        """
        assert isinstance(node, yaml.ScalarNode)
        if node.tag == _TAG + "str":
            text = str(node.value)
            self.raw[path] = text
            if "${" not in text:
                return True, text
            ok, text = self.substitute(text, node, path)
            if not ok:
                return False, None
            if keep_str:
                return True, text
            node = yaml.ScalarNode(
                self.resolver.resolve(  # type: ignore[no-untyped-call]
                    yaml.ScalarNode, text, (True, False)
                ),
                text,
                node.start_mark,
                node.end_mark,
            )
            if node.tag == _TAG + "str":
                return True, text
        try:
            return True, self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError:
            self.problem(_line(node), path, f"cannot read {_node_kind(node)}")
            return False, None

    def substitute(self, text: str, node: yaml.Node, path: str) -> tuple[bool, str]:
        ok = True

        def one(m: re.Match[str]) -> str:
            nonlocal ok
            token = m.group(0)
            if token == "$${":
                return "${"
            ref = _ENV_REF_RE.fullmatch(m.group(1) or "")
            if token == "${" or ref is None:
                ok = False
                self.problem(
                    _line(node),
                    path,
                    "bad environment reference",
                    "write ${VAR} or ${VAR:-default}; $${ is a literal ${",
                )
                return ""
            name, default = ref.group(1), ref.group(2)
            value = self.env.get(name)
            if value is None or (value == "" and default is not None):
                if default is not None:
                    return default
                ok = False
                self.problem(
                    _line(node),
                    path,
                    f"environment variable {name} is not set",
                    f"set it, or give a default: ${{{name}:-default}}",
                )
                return ""
            return value

        result = _ENV_TOKEN_RE.sub(one, text)
        return ok, result

    def decimal_field(self, node: yaml.Node, meta: Mapping[str, Any], path: str) -> Any:
        """An exact decimal (money): a YAML number as written (`2.50` is not read through a
        binary float) or a string holding one (`"2.50"`, `${PRICE}`)."""
        kind = node.tag.removeprefix(_TAG) if isinstance(node, yaml.ScalarNode) else ""
        if kind in ("int", "float"):
            # YAML's .inf and .nan, as Decimal spells them (then refused as not finite)
            text = _YAML_SPECIAL_FLOAT.sub(
                lambda m: "Infinity" if m.group(1).lower() == "inf" else "NaN", str(node.value)
            )
        elif kind == "str":
            ok, text = self.scalar(node, path, keep_str=True)
            if not ok:
                return _INVALID
        else:
            self.problem(_line(node), path, f"expected a number, got {_node_kind(node)}")
            return _INVALID
        line = _line(node)
        try:
            value = Decimal(text.strip().replace("_", ""))
        except InvalidOperation:
            self.problem(
                line,
                path,
                f"expected a number, got {_show(text)}",
                "write a plain decimal number, e.g. 2.50 (no currency sign or unit)",
            )
            return _INVALID
        if not value.is_finite():
            self.problem(line, path, "must be a finite number")
            return _INVALID
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)  # finite
        if exponent < -MAX_DECIMALS:
            self.problem(line, path, f"at most {MAX_DECIMALS} decimal places (a nano-dollar)")
            return _INVALID
        if exponent > 0:  # 1e3 -> 1000
            value = value.quantize(Decimal(1))
        return self.constrain(value, meta, path, line)

    def scalar_field(self, node: yaml.Node, tp: Any, meta: Mapping[str, Any], path: str) -> Any:
        if tp is Decimal:
            return self.decimal_field(node, meta, path)
        want = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
        unit: str = meta.get("unit") or ""
        if not isinstance(node, yaml.ScalarNode):
            expected = {"duration": "a duration", "size": "a size"}.get(unit, want.get(tp, "?"))
            self.problem(_line(node), path, f"expected {expected}, got {_node_kind(node)}")
            return _INVALID
        raw: Any
        if tp is str and node.tag != _TAG + "str":
            # A plain `model: 3.5` or `key_sha256: 1234…` means the characters as written.
            ok, raw = True, str(node.value)
        else:
            ok, raw = self.scalar(node, path, keep_str=tp is str)
        if not ok:
            return _INVALID
        line = _line(node)
        value: Any
        if unit == "duration":
            value = parse_duration(raw)
            if value is None:
                self.problem(line, path, f"invalid duration {_show(raw)}", DURATION_HINT)
                return _INVALID
        elif unit == "size":
            value = parse_size(raw)
            if value is None:
                self.problem(line, path, f"invalid size {_show(raw)}", SIZE_HINT)
                return _INVALID
        else:
            value = raw
            fits = {
                bool: isinstance(raw, bool),
                int: isinstance(raw, int) and not isinstance(raw, bool),
                float: isinstance(raw, (int, float)) and not isinstance(raw, bool),
                str: isinstance(raw, str),
            }[tp]
            if not fits:
                hint = None
                if "${" in str(node.value):
                    hint = "the value came from an environment variable"
                elif isinstance(raw, str):
                    hint = "write it without quotes"
                self.problem(line, path, f"expected {want[tp]}, got {_node_kind(node)}", hint)
                return _INVALID
            if tp is float:
                value = float(raw)
        return self.constrain(value, meta, path, line)

    def constrain(self, value: Any, meta: Mapping[str, Any], path: str, line: int) -> Any:
        unit: str = meta.get("unit") or ""
        show: Callable[[Any], str] = {"duration": format_duration, "size": format_size}.get(
            unit, lambda v: f"{v:g}" if isinstance(v, float) else str(v)
        )
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            self.problem(line, path, f"unknown value {_show(value)}", _one_of(str(value), choices))
            return _INVALID
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(line, path, "must be a finite number")
            return _INVALID
        low, high = meta.get("min"), meta.get("max")
        if unit and low is None:
            low = 0
        if isinstance(value, (int, float, Decimal)) and low is not None and value < low:
            if low == 0:
                message = "must not be negative"
            elif unit or low < 1:
                message = f"must be at least {show(low)}"
            else:
                message = f"must be at least {show(low)}, got {show(value)}"
            self.problem(line, path, message)
            return _INVALID
        if isinstance(value, (int, float, Decimal)) and high is not None and value > high:
            self.problem(line, path, f"must be at most {show(high)}, got {show(value)}")
            return _INVALID
        if meta.get("tenant_name") and not is_valid_tenant(value):
            self.problem(line, path, f"invalid tenant name {_show(value)}", _TENANT_HINT)
            return _INVALID
        if meta.get("path") and isinstance(value, str):
            value = os.path.expanduser(value)
        return value

    def secret(self, node: yaml.Node, meta: Mapping[str, Any], path: str) -> Any:
        # Never show the value: not in messages, not in hints.
        alt = meta.get("secret_alt")
        hint = "write `${VAR}` and set VAR in the environment" + (
            f", or use `{alt}`" if alt else ""
        )
        if not isinstance(node, yaml.ScalarNode) or node.tag != _TAG + "str":
            self.problem(_line(node), path, f"expected `${{VAR}}`, got {_node_kind(node)}", hint)
            return _INVALID
        m = _SECRET_REF_RE.fullmatch(str(node.value))
        if m is None:
            self.problem(_line(node), path, "secrets may only come from the environment", hint)
            return _INVALID
        name, default = m.group(1), m.group(2)
        if default not in (None, ":-"):
            self.problem(
                _line(node),
                path,
                "a secret's default must be empty: the default would be a secret in the file",
                f"write ${{{name}}} or ${{{name}:-}}",
            )
            return _INVALID
        value = self.env.get(name)
        if value is None and default is None:
            self.problem(
                _line(node),
                path,
                f"environment variable {name} is not set",
                f"set it, or write ${{{name}:-}} if the key is optional",
            )
            return _INVALID
        if not value:
            self.empty_secrets[path] = name
            return None
        return Secret(value)

    def hooks(self, node: yaml.Node, path: str) -> Any:
        if _is_null(node):
            return (HookSpec("validation"),)
        if not isinstance(node, yaml.SequenceNode):
            hint = "write a list, e.g. [validation, {audit: {redact_pii: true}}]"
            self.problem(_line(node), path, f"expected a list, got {_node_kind(node)}", hint)
            return _INVALID
        specs: list[HookSpec] = []
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            self.lines[sub] = _line(item)
            options: dict[str, Any] = {}
            if isinstance(item, yaml.ScalarNode) and item.tag == _TAG + "str":
                name = str(item.value)
            elif isinstance(item, yaml.MappingNode) and len(item.value) == 1:
                key_node, options_node = item.value[0]
                name = str(key_node.value)
                if isinstance(options_node, yaml.MappingNode):
                    options = self.plain(options_node, f"{sub}.{name}")
                elif not _is_null(options_node):
                    self.problem(
                        _line(options_node),
                        f"{sub}.{name}",
                        f"hook options must be a mapping, got {_node_kind(options_node)}",
                    )
                    continue
            else:
                self.problem(
                    _line(item),
                    sub,
                    f"a hook is a name or a one-key mapping, got {_node_kind(item)}",
                    'write `audit`, `{audit: {redact_pii: true}}` or `"my_pkg.hooks:MyHook"`',
                )
                continue
            if self.hook_name_ok(name, _line(item), sub):
                if name in BUILTIN_HOOKS and any(s.name == name for s in specs):
                    self.problem(_line(item), sub, f"hook '{name}' is listed twice")
                    continue
                specs.append(HookSpec(name, options, _line(item), sub))
        if not any(s.name == "validation" for s in specs):
            specs.insert(0, HookSpec("validation"))
        return tuple(specs)

    def hook_name_ok(self, name: str, line: int, path: str) -> bool:
        """A built-in name or the `module:Class` form. Nothing is imported here (loading a
        config runs no user code): `aigw validate` resolves user hooks with `check_hooks`, the
        way the daemon does."""
        if ":" not in name:
            if name in BUILTIN_HOOKS:
                return True
            self.problem(
                line, path, f"unknown built-in hook '{name}'", _one_of(name, BUILTIN_HOOKS)
            )
            return False
        module_name, _, attr = name.partition(":")
        if not _DOTTED_RE.fullmatch(module_name) or not _DOTTED_RE.fullmatch(attr):
            self.problem(line, path, f"'{name}' is not `module:Class`")
            return False
        return True

    # --- rules across fields ---

    def check(self, config: Config) -> Config:
        if config.version != 1:
            self.rule(
                "version",
                f"unsupported config version {config.version}",
                "this aigw reads `version: 1`",
            )
        self.check_server(config)
        self.check_providers(config)
        config = self.check_models(config)
        self.check_prices(config)
        self.check_money(config)
        self.check_auth(config)
        self.check_state(config.state)
        self.check_tracing(config.tracing)
        self.check_misc(config)
        return config

    def check_server(self, config: Config) -> None:
        if "server.host" in self.problem_keys():
            return
        warning = listen_warning(config.server.host, has_keys=bool(config.auth.keys))
        if warning is not None:
            self.warn("server.host", *warning)

    def check_providers(self, config: Config) -> None:
        for name, provider in config.providers.items():
            path = f"providers.{name}"
            if f"{path}.type" in self.problem_keys():
                continue  # the rules below depend on the type
            if provider.type in ("openai", "anthropic"):
                url = urlsplit(provider.base_url)
                if not provider.base_url:
                    if provider.type == "openai":  # anthropic's default: api.anthropic.com
                        self.rule(
                            f"{path}.base_url",
                            "an openai provider needs a base_url",
                            "e.g. https://api.openai.com/v1 or http://127.0.0.1:11434/v1",
                            at=path,
                        )
                elif url.scheme not in ("http", "https") or not url.netloc:
                    # The URL is not echoed: it may carry credentials.
                    self.rule(
                        f"{path}.base_url",
                        "base_url must be an http:// or https:// URL with a host",
                    )
            if provider.type != "mock" and f"{path}.mock" in self.lines:
                self.rule(f"{path}.mock", "mock options only apply to a provider with type: mock")
            for i, header in enumerate(provider.forward_headers):
                sub = f"{path}.forward_headers[{i}]"
                if not _HEADER_NAME_RE.fullmatch(header):
                    self.rule(sub, f"{_show(header)} is not an HTTP header name")
                elif never_forwarded(header):
                    self.rule(
                        sub,
                        f"{_show(header)} is never forwarded upstream",
                        "credentials, cookies, X-Aigw-* and hop-by-hop headers stay at the "
                        "gateway; set a provider's own headers under `headers:`",
                    )
            if provider.type == "mock":
                continue
            key_path = f"{path}.api_key"
            if (
                provider.type == "anthropic"
                and not provider.base_url
                and provider.api_key is None
                and key_path not in self.empty_secrets
                and not any(h.lower() == "x-api-key" for h in provider.headers)
            ):
                self.warn(
                    key_path,
                    "no api_key: api.anthropic.com refuses requests without one",
                    "api_key: ${ANTHROPIC_API_KEY}, and set the variable in the environment",
                )
            if key_path in self.empty_secrets:
                var = self.empty_secrets[key_path]
                self.warn(
                    key_path,
                    f"the key is empty ({var} is unset or empty): requests go upstream without one",
                    f"export {var}=<your key> before `aigw serve`, "
                    "or remove api_key if this upstream needs none",
                )
            if _literal_url_credentials(self.raw.get(f"{path}.base_url", "")):
                self.rule(
                    f"{path}.base_url",
                    "base_url holds credentials written in the file; secrets only come from "
                    "the environment",
                    "write https://user:${UPSTREAM_PASSWORD}@host/v1, or use api_key: "
                    "${UPSTREAM_KEY}, and set the variable in the environment",
                )
            for header, value in provider.headers.items():
                if _CREDENTIAL_HEADER_RE.search(header.lower()) is None:
                    continue
                sub = f"{path}.headers.{header}"
                raw = self.raw.get(sub, "")
                if _literal_header_credential(raw):
                    self.rule(
                        sub,
                        f"header '{header}' holds a credential written in the file; secrets "
                        "only come from the environment",
                        f'write {header}: "{_header_example(header)}" and set UPSTREAM_TOKEN '
                        "in the environment",
                    )
                elif (names := _ENV_NAMES_RE.findall(raw)) and _AUTH_SCHEME_RE.fullmatch(value):
                    self.warn(
                        sub,
                        f"header '{header}' is empty ({names[0]} is unset or empty): requests "
                        "go upstream without this credential",
                        f"export {names[0]}=<the credential> before `aigw serve`",
                    )

    def check_models(self, config: Config) -> Config:
        if not config.models:
            self.rule(
                "models",
                "no models are defined: clients would have nothing to call",
                "add e.g. models: {mock: {targets: [{provider: mock}]}} "
                "with providers: {mock: {type: mock}}",
            )
        models: dict[str, ModelConfig] = {}
        for name, model in config.models.items():
            path = f"models.{name}"
            if not model.targets:
                self.rule(
                    f"{path}.targets",
                    "a model needs at least one target",
                    "targets: [{provider: <name>, model: <upstream model>}]",
                )
            targets = []
            for i, target in enumerate(model.targets):
                sub = f"{path}.targets[{i}].provider"
                if not target.provider:
                    self.rule(sub, "a target needs a provider")
                elif target.provider not in config.providers:
                    self.rule(
                        sub,
                        f"unknown provider '{target.provider}'",
                        _one_of(target.provider, config.providers),
                    )
                targets.append(target if target.model else replace(target, model=name))
            for i, fallback in enumerate(model.fallbacks):
                sub = f"{path}.fallbacks[{i}]"
                if fallback == name:
                    self.rule(sub, "a model cannot fall back to itself")
                elif fallback not in config.models:
                    others = [m for m in config.models if m != name]
                    alone = f"'{name}' is the only model defined: add '{fallback}' under models:"
                    self.rule(
                        sub, f"unknown model '{fallback}'", _one_of(fallback, others, none=alone)
                    )
            models[name] = replace(model, targets=tuple(targets))
        return replace(config, models=models)

    def check_prices(self, config: Config) -> None:
        for name, price in config.prices.items():
            path = f"prices.{name}"
            if any(k == path or k.startswith(path + ".") for k in self.problem_keys()):
                continue
            missing = [f for f in ("input", "output") if getattr(price, f) is None]
            if missing:
                self.rule(
                    path,
                    f"a price needs {' and '.join(missing)} (USD per million tokens)",
                    "write e.g. {input: 2.50, output: 10.00}; cached_input and cache_write "
                    "default to input",
                )

    def check_money(self, config: Config) -> None:
        """Warn about routed upstream models with no price when a money budget is set: their
        requests would cost 0 and never use it up."""
        if not config.quota.has_money_budget:
            return
        from aigw.pricing import PriceTable

        table = PriceTable.build(
            {n: p for n, p in config.prices.items() if p.input is not None and p.output is not None}
        )
        warned: set[str] = set()
        for name, model in config.models.items():
            for i, target in enumerate(model.targets):
                upstream = target.model or name
                if upstream in warned or table.lookup(upstream) is not None:
                    continue
                warned.add(upstream)
                self.warn(
                    f"models.{name}.targets[{i}].model",
                    f"no price for upstream model '{upstream}': a money budget is set, and "
                    "its requests would cost $0 and never use it up",
                    f"add `{upstream}: {{input: …, output: …}}` under prices: (USD per "
                    "million tokens; 0 for a free model)",
                )

    def check_auth(self, config: Config) -> None:
        first_with: dict[bytes, int] = {}  # key digest -> index of its first entry
        for i, key in enumerate(config.auth.keys):
            path = f"auth.keys[{i}]"
            if not key.tenant:
                self.rule(f"{path}.tenant", "a key needs a tenant", at=path)
            has_key = f"{path}.key" in self.lines
            has_sha = f"{path}.key_sha256" in self.lines
            if has_key == has_sha:
                both = "give either `key` or `key_sha256`, not both"
                neither = "a key needs `key` (from ${ENV}) or `key_sha256`"
                self.rule(path, both if has_key else neither)
            elif f"{path}.key" in self.empty_secrets:
                self.rule(
                    f"{path}.key",
                    "the key is empty: its environment variable is unset or empty",
                    "an empty key would let anyone in; set the variable or remove the entry",
                )
            elif key.key_sha256 is not None and not _SHA256_RE.fullmatch(key.key_sha256):
                self.rule(
                    f"{path}.key_sha256",
                    "key_sha256 must be 64 hex characters",
                    'compute it with: printf %s "$KEY" | sha256sum',
                )
            elif key.key is not None or key.key_sha256 is not None:
                # Duplicates are named by position only: the key itself is never shown.
                digest = key.digest()
                if digest in first_with:
                    self.rule(
                        path,
                        f"the same key as auth.keys[{first_with[digest]}]",
                        "each key must be unique; remove or change one of them",
                    )
                else:
                    first_with[digest] = i

    def check_state(self, state: StateConfig) -> None:
        if state.backend == "redis" and not state.url:
            self.rule(
                "state.url",
                "backend: redis needs a url",
                "url: redis://127.0.0.1:6379/0",
                at="state.backend",
            )
        if state.url and urlsplit(state.url).scheme not in _REDIS_SCHEMES:
            # Not echoed: the URL may hold a password.
            self.rule("state.url", "url must start with redis://, rediss:// or unix://")
        if _literal_url_credentials(self.raw.get("state.url", "")):
            self.rule(
                "state.url",
                "url holds a password written in the file; secrets only come from the environment",
                "write redis://:${REDIS_PASSWORD}@host:6379/0 and set REDIS_PASSWORD "
                "in the environment",
            )

    def check_tracing(self, tracing: TracingConfig) -> None:
        raw_url = self.raw.get("tracing.endpoint", "")
        if "tracing.endpoint" not in self.problem_keys():
            try:
                url = urlsplit(tracing.endpoint)
                scheme, host = url.scheme, url.hostname
            except ValueError:
                scheme, host = "", None
            if scheme not in ("http", "https") or not host:
                # Not echoed: the URL may carry credentials.
                self.rule(
                    "tracing.endpoint",
                    "endpoint must be an http:// or https:// URL with a host",
                    "e.g. http://127.0.0.1:4318, an OpenTelemetry Collector's OTLP/HTTP port",
                )
            elif _literal_url_credentials(raw_url):
                self.rule(
                    "tracing.endpoint",
                    "endpoint holds credentials written in the file; secrets only come from "
                    "the environment",
                    "send them in a header instead: headers: {Authorization: "
                    '"Bearer ${COLLECTOR_TOKEN}"}',
                )
        for header, value in tracing.headers.items():
            sub = f"tracing.headers.{header}"
            if not _HEADER_NAME_RE.fullmatch(header):
                self.rule(sub, f"{_show(header)} is not an HTTP header name")
                continue
            if any(c in value for c in "\r\n\0"):
                self.rule(sub, "a header value cannot hold a line break or NUL")
                continue
            if not value.isascii():
                self.rule(sub, "a header value must be ASCII")
                continue
            if not _collector_credential(header):
                continue
            raw = self.raw.get(sub, "")
            if _literal_header_credential(raw):
                example = (
                    "Bearer ${COLLECTOR_TOKEN}"
                    if "authorization" in header.lower()
                    else "${COLLECTOR_TOKEN}"
                )
                self.rule(
                    sub,
                    f"header '{header}' holds a credential written in the file; secrets only "
                    "come from the environment",
                    f'write {header}: "{example}" and set COLLECTOR_TOKEN in the environment',
                )
            elif (names := _ENV_NAMES_RE.findall(raw)) and _AUTH_SCHEME_RE.fullmatch(value):
                self.warn(
                    sub,
                    f"header '{header}' is empty ({names[0]} is unset or empty): the collector "
                    "will likely refuse the spans",
                    f"export {names[0]}=<the credential> before `aigw serve`",
                )
        if tracing.enabled and (module := missing_otel_module()) is not None:
            self.rule(
                "tracing.enabled",
                "tracing is enabled but the OpenTelemetry packages are not installed "
                f"(no module {module})",
                f"{OTEL_INSTALL_HINT}, or set enabled: false",
            )

    def check_misc(self, config: Config) -> None:
        zone = config.quota.timezone
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            self.rule(
                "quota.timezone",
                f"unknown timezone {_show(zone)}",
                _did_you_mean(zone, zoneinfo.available_timezones())
                or "use an IANA name like UTC or Europe/Paris",
            )
        health = config.health
        if health.max_cooldown < health.cooldown:
            self.rule(
                "health.max_cooldown",
                f"max_cooldown ({format_duration(health.max_cooldown)}) is shorter than "
                f"cooldown ({format_duration(health.cooldown)})",
            )

    def problem_keys(self) -> set[str]:
        return {p.key for p in self.problems}

    def rule(self, key: str, message: str, hint: str | None = None, *, at: str = "") -> None:
        """A problem found across fields: at the line of `at` (default `key`), and only when
        conversion did not already report this key (one mistake, one message)."""
        if key not in self.problem_keys():
            self.problem(self.line_of(at or key), key, message, hint)


_TENANT_HINT = "1 to 64 characters of A-Z a-z 0-9 . _ -"


def _show(value: object) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


# --- documentation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One row of the config reference."""

    key: str  # dotted, with `<name>` for mapping keys and `[]` for list items
    type: str
    default: str  # as written in YAML; "" for sections
    doc: str
    choices: tuple[str, ...] = ()
    bounds: str = ""  # e.g. "0 to 65535", "at least 1ms"


def describe_settings() -> list[Setting]:
    """Every setting, in file order, straight from the dataclasses."""
    out: list[Setting] = []
    _describe(Config, "", out)
    return out


def _describe(cls: type, prefix: str, out: list[Setting], *, inherited: bool = False) -> None:
    hints = _hints(cls)
    for f in _settable(cls):
        key = prefix + f.name
        tp, _ = _split_optional(hints[f.name])
        origin = typing.get_origin(tp)
        meta = f.metadata
        out.append(
            Setting(
                key,
                _type_name(tp, meta),
                "inherited" if inherited else _default_text(f),
                str(meta.get("doc", "")),
                tuple(str(c) for c in meta.get("choices", ())),
                _bounds_text(meta),
            )
        )
        if isinstance(tp, type) and is_dataclass(tp):
            _describe(tp, key + ".", out)
            continue
        if meta.get("tenant_quota"):
            _describe(TenantQuota, f"{key}.<tenant>.", out)
            continue
        args = typing.get_args(tp)
        if origin is dict and isinstance(args[1], type) and is_dataclass(args[1]):
            placeholder = "<tenant>" if meta.get("tenant_keys") else "<name>"
            if meta.get("key_name"):
                placeholder = f"<{meta['key_name']}>"
            _describe(args[1], f"{key}.{placeholder}.", out, inherited=bool(meta.get("inherit")))
        elif origin is tuple and args[0] is not HookSpec and is_dataclass(args[0]):
            assert isinstance(args[0], type)
            _describe(args[0], f"{key}[].", out)


def _type_name(tp: Any, meta: Mapping[str, Any]) -> str:
    if meta.get("secret"):
        return "secret"
    if meta.get("tenant_quota"):
        return "integer or mapping"
    if meta.get("unit"):
        return str(meta["unit"])
    if meta.get("choices"):
        return "choice"
    if isinstance(tp, type) and is_dataclass(tp):
        return "section"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is dict:
        item = args[1]
        if isinstance(item, type) and is_dataclass(item):
            return "mapping"
        return f"mapping of {_type_name(item, {})}"
    if origin is tuple:
        item = args[0]
        if item is HookSpec:
            return "list of hooks"
        if isinstance(item, type) and is_dataclass(item):
            return "list"
        return f"list of {_type_name(item, {})}"
    if meta.get("path"):
        return "path"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Decimal: "decimal"}
    return names.get(tp, "value")


def _default_text(f: Field[Any]) -> str:
    value = _default(f)
    unit = f.metadata.get("unit")
    if is_dataclass(value):
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if unit == "duration":
        return format_duration(float(value))
    if unit == "size":
        return format_size(int(value))
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, tuple):
        return "[" + ", ".join(getattr(v, "name", str(v)) for v in value) + "]"
    if isinstance(value, str) and value == "":
        return '""'
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds_text(meta: Mapping[str, Any]) -> str:
    show: Callable[[Any], str] = {"duration": format_duration, "size": format_size}.get(
        meta.get("unit") or "", lambda v: f"{v:g}"
    )
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        return f"{show(low)} to {show(high)}"
    if low is not None and low > 0:
        return f"at least {show(low)}"
    return ""


def config_reference_markdown() -> str:
    """The README's config reference (between the config-reference markers)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "The file is YAML. Durations are a number of seconds or a number with a unit "
        "(`250ms`, `30s`, `5m`, `1h`, `1d`); sizes are a number of bytes or a number with a "
        "unit (`512KiB`, `8MiB`, `1GiB`, `100MB`). `${VAR}` in any string is replaced by the "
        "environment variable VAR (an error when it is unset); `${VAR:-default}` gives a "
        "default; `$${` is a literal `${`. Secrets may only be written as `${VAR}` "
        "(or `${VAR:-}` when optional); so may the password of a URL (`state.url`, "
        "`base_url`: `redis://:${REDIS_PASSWORD}@host:6379/0`) and the value of a credential "
        'header (`Authorization: "Bearer ${TOKEN}"`, `x-api-key`, `api-key`, …). '
        "`~` is expanded in paths. Unknown keys are errors.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for s in describe_settings():
        doc = s.doc
        if s.choices:
            doc += " One of: " + ", ".join(f"`{c}`" for c in s.choices) + "."
        if s.bounds:
            doc += f" Range: {s.bounds}."
        default = f"`{s.default}`" if s.default not in ("", "inherited") else s.default
        key = f"**`{s.key}`**" if s.type == "section" else f"`{s.key}`"
        lines.append(f"| {key} | {s.type} | {cell(default)} | {cell(doc)} |")
    return "\n".join(lines) + "\n"
