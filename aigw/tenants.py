"""Tenant names: the one rule every layer checks (config, HTTP header, admin API, CLI).

Kept free of heavy imports: client commands use it."""

from __future__ import annotations

import re

from aigw.errors import InvalidRequestError

_TENANT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
TENANT_RULE = "1-64 characters from A-Z, a-z, 0-9, '.', '_', '-'"


class InvalidTenantName(InvalidRequestError, ValueError):
    """A tenant name outside `[A-Za-z0-9._-]{1,64}`. A 400 for HTTP, a ValueError elsewhere."""

    def __init__(self, name: str) -> None:
        shown = name if len(name) <= 64 else name[:64] + "…"
        super().__init__(f"Invalid tenant name {shown!r}: use {TENANT_RULE}.", param="tenant")
        self.name = name


def is_valid_tenant(name: str) -> bool:
    return _TENANT_RE.fullmatch(name) is not None


def validate_tenant(name: str) -> str:
    """Return `name`, or raise `InvalidTenantName`."""
    if _TENANT_RE.fullmatch(name) is None:
        raise InvalidTenantName(name)
    return name
