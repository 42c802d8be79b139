"""Config: frozen dataclasses for every section of the YAML file, and `load_config()`.

The dataclasses are the one table of settings: their defaults are the defaults, their field
metadata (`doc`, `unit`, `choices`, `min`, `secret`) drives validation and the README reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# --- units -------------------------------------------------------------------------------

StrategyName = Literal["round_robin", "random", "weighted_random", "least_connections", "latency"]
STRATEGIES: tuple[str, ...] = (
    "round_robin",
    "random",
    "weighted_random",
    "least_connections",
    "latency",
)
BackendName = Literal["memory", "sqlite", "redis"]
BACKENDS: tuple[str, ...] = ("memory", "sqlite", "redis")
PeriodName = Literal["hourly", "daily", "weekly", "monthly", "never"]
PERIODS: tuple[str, ...] = ("hourly", "daily", "weekly", "monthly", "never")
ProviderType = Literal["openai", "mock"]
PROVIDER_TYPES: tuple[str, ...] = ("openai", "mock")
BUILTIN_HOOKS: tuple[str, ...] = ("validation", "content_filter", "audit")


def _f(default: Any, doc: str, **meta: Any) -> Any:
    """A config field: default value plus metadata read by the loader and the docs."""
    meta["doc"] = doc
    if isinstance(default, (dict, list, tuple)) or callable(default):
        factory = default if callable(default) else (lambda d=default: type(d)(d))
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


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
    host: str = _f("127.0.0.1", "Address the OpenAI-compatible HTTP API listens on.")
    port: int = _f(8080, "TCP port of the HTTP API.", min=0, max=65535)
    admin_socket: str | None = _f(
        None, "Path of the admin Unix socket; default `<user_runtime_dir>/aigw/admin.sock`."
    )
    max_body_size: int = _f(8 * 1024 * 1024, "Largest request body accepted (413 above).",
                            unit="size", min=1)
    shutdown_timeout: float = _f(30.0, "How long a graceful stop waits for in-flight requests.",
                                 unit="duration")
    request_timeout: float = _f(600.0, "Deadline for one client request, failover included.",
                                unit="duration", min=0.001)
    access_log: bool = _f(False, "Log one line per request (never bodies or keys).")


@dataclass(frozen=True)
class StateConfig:
    backend: str = _f("sqlite", "Where quota usage and overrides live.", choices=BACKENDS)
    path: str | None = _f(None, "SQLite file; default `<user_data_dir>/aigw/state.db`.")
    url: str | None = _f(None, "Redis URL (`redis://host:port/db`), for backend: redis.",
                         secret_url=True)
    flush_interval: float = _f(1.0, "How often buffered usage is written to the store.",
                               unit="duration", min=0.001)
    on_failure: str = _f("fail_open", "When the shared store is unreachable: fail_open serves "
                         "and reconciles later, fail_closed answers 503.",
                         choices=("fail_open", "fail_closed"))


@dataclass(frozen=True)
class AuthKey:
    tenant: str = _f("", "Tenant this key authenticates as.", tenant_name=True)
    key: Secret | None = _f(None, "The key itself, from `${ENV}` only.", secret=True)
    key_sha256: str | None = _f(None, "Hex SHA-256 of the key, so no secret sits in the file.")

    def digest(self) -> bytes:
        """SHA-256 digest of the key, whichever way it was given."""
        import hashlib

        if self.key is not None:
            return hashlib.sha256(self.key.reveal().encode()).digest()
        assert self.key_sha256 is not None
        return bytes.fromhex(self.key_sha256)


@dataclass(frozen=True)
class AuthConfig:
    keys: tuple[AuthKey, ...] = _f((), "Tenant API keys; none = laptop mode (X-Aigw-Tenant).")


@dataclass(frozen=True)
class MockOptions:
    latency: float = _f(0.0, "Delay before the first byte.", unit="duration")
    chunk_delay: float = _f(0.0, "Delay between streamed chunks.", unit="duration")
    failure_rate: float = _f(0.0, "Fraction of requests answered with HTTP 500.", min=0, max=1)
    answer: str | None = _f(None, "Fixed answer; default echoes the last user message.")
    seed: int | None = _f(None, "Seed for the failure draw (deterministic tests).")


@dataclass(frozen=True)
class ProviderConfig:
    name: str = ""
    type: str = _f("openai", "Provider kind.", choices=PROVIDER_TYPES)
    base_url: str = _f("", "Base URL of an OpenAI-compatible API, ending in /v1.")
    api_key: Secret | None = _f(None, "Sent as `Authorization: Bearer`, from `${ENV}` only.",
                                secret=True)
    headers: dict[str, str] = _f({}, "Extra headers sent upstream (values may use `${ENV}`).")
    timeout: float = _f(300.0, "Read timeout: longest wait for the next byte.", unit="duration",
                        min=0.001)
    connect_timeout: float = _f(10.0, "TCP/TLS connect timeout.", unit="duration", min=0.001)
    max_connections: int = _f(100, "Pooled keep-alive connections to this upstream.", min=1)
    ca_file: str | None = _f(None, "Extra CA bundle (PEM) trusted for this upstream's TLS.")
    mock: MockOptions = _f(MockOptions, "Options of the built-in mock provider (type: mock).")


@dataclass(frozen=True)
class TargetConfig:
    provider: str = _f("", "Name of a provider under `providers:`.")
    model: str = _f("", "Model name sent upstream; default: the gateway model's name.")
    weight: int = _f(1, "Relative share for weighted strategies.", min=1)


@dataclass(frozen=True)
class ModelConfig:
    name: str = ""
    strategy: str = _f("round_robin", "How a target is chosen.", choices=STRATEGIES)
    targets: tuple[TargetConfig, ...] = _f((), "Where requests for this model go (at least one).")
    fallbacks: tuple[str, ...] = _f((), "Other model names tried when every target failed.")
    retries: int | None = _f(None, "Extra targets tried after a failure; default: all targets.",
                             min=0)


@dataclass(frozen=True)
class HealthConfig:
    error_rate_threshold: float = _f(0.5, "Window error rate that opens a target's circuit.",
                                     min=0, max=1)
    window: float = _f(60.0, "Sliding window for the error rate.", unit="duration", min=0.001)
    min_requests: int = _f(10, "Requests in the window before the rate is judged.", min=1)
    cooldown: float = _f(30.0, "First open-circuit pause; doubles on repeated trips.",
                         unit="duration", min=0.001)
    max_cooldown: float = _f(300.0, "Cap of the doubling cooldown.", unit="duration", min=0.001)
    check_interval: float = _f(30.0, "Active probe period (`GET /models`); 0 = off.",
                               unit="duration")


@dataclass(frozen=True)
class RateLimitRule:
    requests_per_second: float = _f(0.0, "Sustained requests per second; 0 = unlimited.", min=0)
    burst: int = _f(0, "Bucket size; default max(1, requests_per_second).", min=0)
    tokens_per_minute: int = _f(0, "Tokens per minute; 0 = unlimited.", min=0)


@dataclass(frozen=True)
class RateLimitConfig:
    requests_per_second: float = _f(0.0, "Per-tenant requests per second; 0 = unlimited.", min=0)
    burst: int = _f(0, "Per-tenant burst; default max(1, requests_per_second).", min=0)
    tokens_per_minute: int = _f(0, "Per-tenant tokens per minute; 0 = unlimited.", min=0)
    tenants: dict[str, RateLimitRule] = _f({}, "Per-tenant overrides (missing keys inherit).",
                                           tenant_keys=True)

    def rule_for(self, tenant: str) -> RateLimitRule:
        return self.tenants.get(tenant) or RateLimitRule(
            self.requests_per_second, self.burst, self.tokens_per_minute
        )


@dataclass(frozen=True)
class QuotaConfig:
    default: int = _f(0, "Tokens per period per tenant; 0 = unlimited.", min=0)
    period: str = _f("daily", "Calendar period the usage resets on.", choices=PERIODS)
    timezone: str = _f("UTC", "IANA zone the periods are aligned to.")
    tenants: dict[str, int] = _f({}, "Per-tenant limits (0 = unlimited).", tenant_keys=True)
    default_max_tokens: int = _f(4096, "Completion tokens reserved when a request sets no "
                                 "max_tokens.", min=1)


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = _f(False, "Exact-match response cache.")
    max_entries: int = _f(10000, "Most entries kept (LRU).", min=1)
    max_bytes: int = _f(100 * 1024 * 1024, "Most bytes kept (LRU).", unit="size", min=1)
    ttl: float = _f(300.0, "How long an entry lives.", unit="duration", min=0.001)


@dataclass(frozen=True)
class HookSpec:
    name: str  # built-in name or "module:Class"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = _f(True, "Serve Prometheus metrics on GET /metrics.")
    tenant_label: bool = _f(True, "Label token counters by tenant (off bounds cardinality).")


@dataclass(frozen=True)
class Config:
    version: int = 1
    server: ServerConfig = _f(ServerConfig, "HTTP listener, admin socket, limits.")
    state: StateConfig = _f(StateConfig, "State store.")
    auth: AuthConfig = _f(AuthConfig, "Tenant keys.")
    providers: dict[str, ProviderConfig] = _f({}, "Upstream providers by name.")
    models: dict[str, ModelConfig] = _f({}, "Model names clients use, and their targets.")
    health: HealthConfig = _f(HealthConfig, "Target health tracking.")
    rate_limit: RateLimitConfig = _f(RateLimitConfig, "Per-tenant rate limits.")
    quota: QuotaConfig = _f(QuotaConfig, "Per-tenant token quotas.")
    cache: CacheConfig = _f(CacheConfig, "Response cache.")
    hooks: tuple[HookSpec, ...] = _f((), "Request/response hooks, in order.")
    metrics: MetricsConfig = _f(MetricsConfig, "Prometheus metrics.")
    #: Where this config came from ("<built-in default>" when no file was found).
    source: str = "<built-in default>"


def default_config() -> Config:
    """The built-in default: listen on 127.0.0.1:8080 with one mock provider serving `mock`."""
    return Config(
        providers={"mock": ProviderConfig(name="mock", type="mock")},
        models={
            "mock": ModelConfig(name="mock", targets=(TargetConfig(provider="mock", model="mock"),))
        },
    )
