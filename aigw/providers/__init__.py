"""Upstream providers, built from the registry of provider types (`aigw.choices`)."""

from __future__ import annotations

from collections.abc import Callable

from aigw.choices import PROVIDER_CLASSES, import_string
from aigw.config import ProviderConfig
from aigw.providers.base import Provider, UpstreamResponse


def build_provider(config: ProviderConfig, *, max_body: int) -> Provider:
    """The provider for `config`; `max_body` is `server.max_upstream_body`, the largest answer
    body it reads whole (decoded bytes counted)."""
    make: Callable[..., Provider] = import_string(PROVIDER_CLASSES[config.type])
    return make(config, max_body=max_body)


__all__ = ["Provider", "UpstreamResponse", "build_provider"]
