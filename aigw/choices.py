"""The closed sets of names the config, the CLI and the code share: one registry each.

A registry maps a name as written in the config to `"module:attr"`, the class that implements
it (uvicorn's `LOOP_SETUPS` shape): the config validator reads the names, the loaders import the
attribute with `import_string`, and so a name cannot validate and then fail to load. User hooks
(`"my_pkg.hooks:MyHook"`) are resolved the same way, by `aigw validate` and by the daemon.

Kept free of heavy imports: client commands use them for option types."""

from __future__ import annotations

import importlib
from typing import Any, Literal, get_args

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

#: Provider types (`providers.NAME.type`): the class, built as `cls(config, max_body=...)`.
PROVIDER_CLASSES: dict[str, str] = {
    "openai": "aigw.providers.openai:OpenAIProvider",
    "mock": "aigw.providers.mock:MockProvider",
    "anthropic": "aigw.providers.anthropic:AnthropicProvider",
}
#: State stores (`state.backend`): the class, built as `cls.from_config(state_config)`.
STORE_CLASSES: dict[str, str] = {
    "memory": "aigw.state.memory:MemoryStore",
    "sqlite": "aigw.state.sqlite:SqliteStore",
    "redis": "aigw.state.redis:RedisStore",
}
#: Built-in hooks (`hooks:`): the class, built with the hook's options.
HOOK_CLASSES: dict[str, str] = {
    "validation": "aigw.hooks.validation:ValidationHook",
    "content_filter": "aigw.hooks.content_filter:ContentFilterHook",
    "audit": "aigw.hooks.audit:AuditHook",
}
#: Balancing strategies (`models.NAME.strategy`): the class, built with the balancer's rng.
STRATEGY_CLASSES: dict[str, str] = {
    "round_robin": "aigw.balancer:RoundRobin",
    "random": "aigw.balancer:UniformRandom",
    "weighted_random": "aigw.balancer:WeightedRandom",
    "least_connections": "aigw.balancer:LeastConnections",
    "latency": "aigw.balancer:Latency",
}
BUILTIN_HOOKS: tuple[str, ...] = tuple(HOOK_CLASSES)
#: APIs a provider type takes by translating them itself (an anthropic target answers chat
#: completions through the Messages API).
TRANSLATED_APIS: dict[str, tuple[str, ...]] = {"anthropic": ("chat",)}


def import_string(spec: str) -> Any:
    """The object `"module:attr"` names (`attr` may be dotted: `pkg.mod:Outer.Inner`).

    Raises ImportError (with the reason) when it cannot be had."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise ImportError(f"'{spec}' is not of the form 'module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module '{module_name}': {exc}") from exc
    except Exception as exc:  # user code may fail any way while it is imported
        raise ImportError(
            f"importing module '{module_name}' failed: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module '{module_name}' has no attribute '{attr}'") from None
    return obj
