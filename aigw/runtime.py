"""What a config reload replaces as one unit: providers, balancers, hooks, auth.

Requests hold on to the `Runtime` they started with, so a reload never disturbs one in flight:
the server builds the next runtime (`build_parts`, then `assemble` once nothing can fail), swaps
it in, and retires the parts the old one no longer shares after the longest a request may take.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

from aigw.auth import Authenticator
from aigw.balancer import Balancers, ModelBalancer
from aigw.choices import TRANSLATED_APIS
from aigw.config import Config, HookSpec, ProviderConfig
from aigw.health import TargetState
from aigw.hooks import build_hooks
from aigw.hooks.base import Hook
from aigw.providers import Provider, build_provider

log = logging.getLogger("aigw")

_GENERATIONS = itertools.count(1)


@dataclass(eq=False)
class Runtime:
    """What a config reload replaces as one unit."""

    config: Config
    providers: dict[str, Provider]
    balancers: Balancers
    hooks: tuple[Hook, ...]
    #: the hooks that have an after_response, in its order: observers last
    after_hooks: tuple[Hook, ...]
    hook_specs: list[tuple[HookSpec | None, Hook]]  # what each hook was built from (reuse)
    auth: Authenticator
    #: provider name -> the APIs it answers (`providers.NAME.apis`, and what its type
    #: translates itself)
    apis: dict[str, frozenset[str]]
    hooks_rewrite: bool  # some hook may change the request body
    wants_stream_text: bool  # some hook needs the text of streamed answers
    collect_stream: bool  # keep streamed events (cache, hooks that need the text)
    #: every hook is deterministic: cached answers may be found by the request's exact bytes
    cache_by_bytes: bool
    #: tells runtimes apart: what one learnt about request bytes does not hold for the next
    generation: int = field(default_factory=lambda: next(_GENERATIONS))
    _unfit: dict[tuple[str, frozenset[str]], tuple[TargetState, ...]] = field(
        default_factory=dict, repr=False
    )

    def unfit(self, balancer: ModelBalancer, wanted: frozenset[str]) -> tuple[TargetState, ...]:
        """The targets of `balancer` whose provider answers none of the `wanted` APIs: the
        balancer skips them. Worked out once per model and need."""
        key = (balancer.name, wanted)
        found = self._unfit.get(key)
        if found is None:
            apis = self.apis
            found = self._unfit[key] = tuple(
                t for t in balancer.targets if not apis.get(t.provider, frozenset()) & wanted
            )
        return found


def build_parts(
    config: Config, old: Runtime | None
) -> tuple[dict[str, Provider], list[tuple[HookSpec | None, Hook]]]:
    """The providers and hooks of `config`, reusing `old`'s where their config is the same."""
    providers: dict[str, Provider] = {}
    max_body = config.server.max_upstream_body
    for name, pconf in config.providers.items():
        reuse = old.providers.get(name) if old else None
        if reuse is not None and _provider_config(reuse) == pconf and reuse.max_body == max_body:
            providers[name] = reuse
        else:
            providers[name] = build_provider(pconf, max_body=max_body)
    kept = [(spec, hook) for spec, hook in old.hook_specs if spec is not None] if old else []
    return providers, build_hooks(config.hooks, tuple(config.models), kept)


def assemble(
    config: Config,
    providers: dict[str, Provider],
    hook_specs: list[tuple[HookSpec | None, Hook]],
    balancers: Balancers,
) -> Runtime:
    hooks = tuple(hook for _, hook in hook_specs)
    collect = bool(config.cache.enabled) or any(h.wants_stream_text for h in hooks)
    return Runtime(
        config=config,
        providers=providers,
        balancers=balancers,
        hooks=hooks,
        after_hooks=tuple(
            sorted(  # stable: config order within each kind
                (h for h in hooks if type(h).after_response is not Hook.after_response),
                key=lambda h: h.observes_only,
            )
        ),
        hook_specs=hook_specs,
        auth=Authenticator(config.auth.keys),
        apis={
            name: pconf.speaks() | set(TRANSLATED_APIS.get(pconf.type, ()))
            for name, pconf in config.providers.items()
        },
        hooks_rewrite=any(h.modifies_request for h in hooks),
        wants_stream_text=any(h.wants_stream_text for h in hooks),
        collect_stream=collect,
        cache_by_bytes=all(_deterministic(h) for h in hooks),
    )


async def close_all(providers: list[Provider], hooks: list[Hook]) -> None:
    for hook in hooks:
        try:
            await hook.close()
        except Exception:  # one broken hook must not keep the others open
            log.exception("closing hook %s failed", type(hook).__name__)
    for provider in providers:
        await provider.close()


def _deterministic(hook: Hook) -> bool:
    """Whether `hook`'s before_request may be skipped for bytes it passed before: it has none
    of its own, or it says `deterministic` and so does the class that defines before_request (a
    subclass that overrides a built-in's before_request does not inherit the built-in's promise)."""
    for cls in type(hook).__mro__:
        if "before_request" in vars(cls):
            if cls is Hook:
                return True
            return hook.deterministic and bool(vars(cls).get("deterministic", False))
    return True


def _provider_config(provider: Provider) -> ProviderConfig | None:
    return getattr(provider, "config", None)
