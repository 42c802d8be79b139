"""Upstream providers. `build_provider()` is the one registry of provider types."""

from __future__ import annotations

from collections.abc import Callable

from aigw.config import ProviderConfig
from aigw.providers.base import Provider, UpstreamResponse


def _openai(config: ProviderConfig) -> Provider:
    from aigw.providers.openai import OpenAIProvider

    return OpenAIProvider(config)


def _mock(config: ProviderConfig) -> Provider:
    from aigw.providers.mock import MockProvider

    return MockProvider(config)


PROVIDER_TYPES: dict[str, Callable[[ProviderConfig], Provider]] = {
    "openai": _openai,
    "mock": _mock,
}


def build_provider(config: ProviderConfig) -> Provider:
    return PROVIDER_TYPES[config.type](config)


__all__ = ["PROVIDER_TYPES", "Provider", "UpstreamResponse", "build_provider"]
