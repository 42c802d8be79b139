"""Upstream providers. `build_provider()` is the one registry of provider types."""

from __future__ import annotations

from collections.abc import Callable

from aigw.config import ProviderConfig
from aigw.providers.base import Provider, UpstreamResponse


def _openai(config: ProviderConfig, max_body: int) -> Provider:
    from aigw.providers.openai import OpenAIProvider

    return OpenAIProvider(config, max_body=max_body)


def _mock(config: ProviderConfig, max_body: int) -> Provider:
    from aigw.providers.mock import MockProvider

    return MockProvider(config, max_body=max_body)


def _anthropic(config: ProviderConfig, max_body: int) -> Provider:
    from aigw.providers.anthropic import AnthropicProvider

    return AnthropicProvider(config, max_body=max_body)


PROVIDER_TYPES: dict[str, Callable[[ProviderConfig, int], Provider]] = {
    "openai": _openai,
    "mock": _mock,
    "anthropic": _anthropic,
}


def build_provider(config: ProviderConfig, *, max_body: int) -> Provider:
    """The provider for `config`; `max_body` is `server.max_upstream_body`, the largest answer
    body it reads whole (decoded bytes counted)."""
    return PROVIDER_TYPES[config.type](config, max_body)


__all__ = ["PROVIDER_TYPES", "Provider", "UpstreamResponse", "build_provider"]
