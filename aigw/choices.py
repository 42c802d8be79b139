"""The closed sets of names the config, the CLI and the code share: one registry each.

Kept free of heavy imports: client commands use them for option types."""

from __future__ import annotations

from typing import Literal, get_args

StrategyName = Literal["round_robin", "random", "weighted_random", "least_connections", "latency"]
BackendName = Literal["memory", "sqlite", "redis"]
PeriodName = Literal["hourly", "daily", "weekly", "monthly", "never"]
ProviderType = Literal["openai", "mock", "anthropic"]
LoopName = Literal["auto", "asyncio", "uvloop"]
#: What a provider can speak natively (`providers.NAME.apis`), one name per upstream API.
ApiName = Literal[
    "chat", "completions", "embeddings", "responses", "messages", "images", "audio", "moderations"
]

STRATEGIES: tuple[str, ...] = get_args(StrategyName)
BACKENDS: tuple[str, ...] = get_args(BackendName)
PERIODS: tuple[str, ...] = get_args(PeriodName)
PROVIDER_TYPES: tuple[str, ...] = get_args(ProviderType)
LOOPS: tuple[str, ...] = get_args(LoopName)
APIS: tuple[str, ...] = get_args(ApiName)
#: What each provider type speaks when its `apis` is not set.
DEFAULT_APIS: dict[str, tuple[str, ...]] = {
    "openai": ("chat", "completions", "embeddings"),
    "mock": APIS,
    "anthropic": ("messages",),
}
BUILTIN_HOOKS: tuple[str, ...] = ("validation", "content_filter", "audit")
