"""Keys -> tenants: who is calling.

A key arrives as `Authorization: Bearer KEY` (OpenAI's SDKs) or `x-api-key: KEY` (Anthropic's),
on every endpoint. Keys are held only as SHA-256 digests. With no keys configured (laptop mode)
the tenant is the `X-Aigw-Tenant` header, else `default`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping

from aigw.config import AuthKey
from aigw.errors import AuthenticationError, InvalidRequestError
from aigw.tenants import is_valid_tenant


class Authenticator:
    """Request headers -> tenant.

    Comparison is constant-time in the sense that matters: the presented key is hashed before
    the lookup, so lookup timing depends only on the digest of the caller's own input and never
    on how many characters of a real key they guessed."""

    __slots__ = ("_by_digest",)

    def __init__(self, keys: Collection[AuthKey]) -> None:
        self._by_digest = {k.digest(): k.tenant for k in keys}

    @property
    def laptop_mode(self) -> bool:
        return not self._by_digest

    def tenant(self, headers: Mapping[str, str]) -> str:
        if not self._by_digest:
            tenant = headers.get("X-Aigw-Tenant") or "default"
            if not is_valid_tenant(tenant):
                raise InvalidRequestError(
                    "X-Aigw-Tenant must be 1-64 characters of letters, digits, '.', '_' or '-'",
                    param="X-Aigw-Tenant",
                )
            return tenant
        token = presented_key(headers)
        if not token:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
                "(or 'x-api-key: <key>')."
            )
        found = self._by_digest.get(hashlib.sha256(token.encode()).digest())
        if found is None:
            raise AuthenticationError("Incorrect API key provided.")
        return found


def presented_key(headers: Mapping[str, str]) -> str:
    """The key a client sent: `Authorization: Bearer KEY`, else `x-api-key: KEY` ("" if none)."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
    return (headers.get("x-api-key") or "").strip()
