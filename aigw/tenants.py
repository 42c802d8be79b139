"""Tenant names: the one rule every layer checks (config, HTTP header, admin API, CLI).

Kept free of heavy imports: client commands use it."""

from __future__ import annotations

import re

from aigw.errors import TENANT_RULE, InvalidTenantName

__all__ = ["TENANT_RULE", "InvalidTenantName", "is_valid_tenant", "validate_tenant"]

_TENANT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def is_valid_tenant(name: str) -> bool:
    return _TENANT_RE.fullmatch(name) is not None


def validate_tenant(name: str) -> str:
    """Return `name`, or raise `InvalidTenantName`."""
    if _TENANT_RE.fullmatch(name) is None:
        raise InvalidTenantName(name)
    return name
