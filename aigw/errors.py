"""The one exception tree of aigw, and the one place that turns an error into OpenAI error JSON.

    AigwError                        everything aigw raises on purpose
    ├── GatewayError                 every error a client can see; status + OpenAI type/code
    │   ├── InvalidRequestError      400 invalid_request_error (param names the field)
    │   │   ├── ContentFilteredError 400 code content_filtered
    │   │   ├── InvalidTenantName    400 param tenant (also a ValueError for plain callers)
    │   │   └── MalformedRequestError 400 code bad_request: HTTP that cannot be parsed
    │   │       │                    (duplicate Content-Length, obs-fold…); bytes never echoed
    │   │       └── HeadersTooLargeError 431 code headers_too_large
    │   ├── AuthenticationError      401 invalid_api_key
    │   ├── ModelNotFoundError       404 model_not_found
    │   ├── NotFoundError            404 unknown route / admin object
    │   │   └── UnknownTenantError   404 code tenant_not_found: an admin call names a tenant
    │   │                            nobody knows (no key, quota, override or usage)
    │   ├── MethodNotAllowedError    405 (+ Allow)
    │   ├── RequestTooLargeError     413 request_too_large
    │   ├── ExpectationFailedError   417 (an `Expect` other than 100-continue)
    │   ├── RateLimitError           429 rate_limit_exceeded (+ retry-after)
    │   ├── QuotaExceededError       429 insufficient_quota (+ x-should-retry: false, or
    │   │                            retry-after when only requests in flight hold the rest)
    │   ├── UpstreamStatusError      an upstream's own 4xx/5xx answer, body passed through
    │   ├── GatewayBugError          500: our own bug (or a user hook's); never the target's
    │   ├── UpstreamError            502 upstream unreachable / bad response
    │   │   ├── UpstreamAuthError    502 code upstream_auth_error: the upstream refused the
    │   │   │                        gateway's own credentials (401/403), secrets redacted
    │   │   └── UpstreamBusyError    503 code upstream_busy: our pool to the target is full,
    │   │                            nothing was sent (the proxy tries the next target)
    │   ├── NoHealthyTargetError     503 no_healthy_target (+ retry-after)
    │   ├── ServiceUnavailableError  503 shutting down / state store down
    │   │   ├── StateUnavailableError 503 code state_unavailable: shared store unreachable
    │   │   │                        (state.on_failure: fail_closed) (+ retry-after)
    │   │   └── ConnectionLimitError 503 code too_many_connections: server.max_connections
    │   │                            reached and every connection busy (+ retry-after)
    │   └── UpstreamTimeoutError     504 upstream timeout
    ├── ConfigError                  a config file with problems (`ConfigProblem`s; a
    │                                `ConfigWarning` is one that does not stop it loading)
    ├── StartupError                 the daemon cannot start: exit code 3 (port in use, a live
    │   │                            daemon on the admin socket, an unsafe socket directory…)
    │   └── StateStoreError          the state store cannot be opened (read-only, not a
    │                                database, its directory cannot be made)
    └── AdminError                   the CLI's call to the daemon failed; one line for the user
        └── DaemonNotRunning         nothing answers on the admin socket

Statuses are class attributes, never patched onto an instance (`UpstreamStatusError` takes the
upstream's own in its constructor). Handlers never build error bodies themselves: they raise,
and the proxy renders `error_body()` (or, for another dialect, that dialect's shape).
Standard library only: the CLI's admin client imports this module too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from aigw import sse


class AigwError(Exception):
    """The root of every error aigw raises on purpose."""


class GatewayError(AigwError):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    #: True when the failure says nothing about the target's health (e.g. the client's own 4xx).
    client_fault: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)

    def __str__(self) -> str:
        return self.message


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"
    client_fault = True


class ContentFilteredError(InvalidRequestError):
    code = "content_filtered"


class MalformedRequestError(InvalidRequestError):
    """The bytes are not an HTTP request we can parse. The message names the problem, never the
    bytes: a header that failed to parse may be someone's Authorization."""

    code = "bad_request"


class HeadersTooLargeError(MalformedRequestError):
    status = 431
    code = "headers_too_large"


class InvalidTenantName(InvalidRequestError, ValueError):
    """A tenant name outside `[A-Za-z0-9._-]{1,64}`. A 400 for HTTP, a ValueError elsewhere."""

    def __init__(self, name: str) -> None:
        shown = name if len(name) <= 64 else name[:64] + "…"
        super().__init__(f"Invalid tenant name {shown!r}: use {TENANT_RULE}.", param="tenant")
        self.name = name


#: What a tenant name may be (`aigw.tenants` checks it).
TENANT_RULE = "1-64 characters from A-Z, a-z, 0-9, '.', '_', '-'"


class MethodNotAllowedError(InvalidRequestError):
    status = 405
    code = "method_not_allowed"


class ExpectationFailedError(InvalidRequestError):
    status = 417
    code = "expectation_failed"


class GatewayBugError(GatewayError):
    """The gateway (or a user hook) failed: a 500 that says nothing about the target's health."""

    client_fault = True  # keeps the target's record clean


class AuthenticationError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    client_fault = True


class ModelNotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    client_fault = True

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.", param="model"
        )


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    client_fault = True


class UnknownTenantError(NotFoundError):
    code = "tenant_not_found"

    def __init__(self, tenant: str) -> None:
        super().__init__(
            f"no tenant '{tenant}': it has no key in auth.keys, no quota in the config, "
            "no override and no recorded usage",
            param="tenant",
        )
        self.tenant = tenant


class RequestTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    client_fault = True


class RateLimitError(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"
    client_fault = True

    def __init__(
        self, message: str, retry_after: float, *, headers: Mapping[str, str] | None = None
    ) -> None:
        merged = dict(headers or {})
        merged.update(retry_after_headers(retry_after))
        super().__init__(message, headers=merged)
        self.retry_after = retry_after


class QuotaExceededError(GatewayError):
    """The tenant's quota cannot hold this request. `retryable`: it would fit but for what the
    tenant's own requests in flight have reserved, so a retry soon may pass (`retry-after`);
    otherwise the SDKs are told not to retry (`x-should-retry: false`)."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"
    client_fault = True

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        headers = retry_after_headers(1.0) if retryable else {"x-should-retry": "false"}
        super().__init__(message, headers=headers)
        self.retryable = retryable


#: Upstream 4xx statuses that are the target's fault: failed over and counted against it.
TARGET_FAULT_4XX = frozenset({401, 403, 404, 408, 429})


class UpstreamStatusError(GatewayError):
    """The upstream answered with an error status; its body is passed to the client unchanged
    when it is OpenAI-shaped, and wrapped otherwise."""

    def __init__(
        self, status: int, raw_body: bytes, *, headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.raw_body = raw_body
        message, etype, code, param = _parse_openai_error(raw_body)
        if message is None:
            etype = "invalid_request_error" if status < 500 else "server_error"
            message = f"Upstream returned HTTP {status}"
        self.type = etype or ("invalid_request_error" if status < 500 else "server_error")
        super().__init__(message, param=param, code=code, headers=headers)
        self.openai_shaped = _is_openai_error(raw_body)
        # The target is at fault for 5xx, 429 (overloaded) and the statuses that mean it is
        # misconfigured (bad key, unknown upstream model, timeout); other 4xx are the client's.
        self.client_fault = status < 500 and status not in TARGET_FAULT_4XX

    def body(self) -> bytes:
        if self.openai_shaped:
            return self.raw_body
        return super().body()


class UpstreamError(GatewayError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamAuthError(UpstreamError):
    """The upstream refused the gateway's own credentials (HTTP 401/403): a misconfigured
    provider, not the caller's key. A 502, so SDKs do not tell the caller their key is wrong;
    the upstream's message is kept only with secrets redacted."""

    code = "upstream_auth_error"


class UpstreamBusyError(UpstreamError):
    """Every pooled connection to the target is in use and none came free in time: the request
    was never sent, so the target is not to blame (the proxy settles the lease neutrally and
    tries the next target)."""

    status = 503
    code = "upstream_busy"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message, headers=retry_after_headers(retry_after))
        self.retry_after = retry_after


class NoHealthyTargetError(GatewayError):
    status = 503
    type = "server_error"
    code = "no_healthy_target"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, headers=retry_after_headers(retry_after))
        self.retry_after = retry_after


class ServiceUnavailableError(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class StateUnavailableError(ServiceUnavailableError):
    """The shared state store (redis) cannot be reached and `state.on_failure` is
    `fail_closed`: refuse rather than serve without shared limits."""

    code = "state_unavailable"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message, headers=retry_after_headers(retry_after))
        self.retry_after = retry_after


class ConnectionLimitError(ServiceUnavailableError):
    """`server.max_connections` is reached and no connection is idle enough to be closed."""

    code = "too_many_connections"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message, headers=retry_after_headers(retry_after))
        self.retry_after = retry_after


class UpstreamTimeoutError(GatewayError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"


def retry_after_headers(seconds: float) -> dict[str, str]:
    """`retry-after` in whole seconds (HTTP wants an integer, never 0 when we must wait) and
    `retry-after-ms` exact, as OpenAI sends them."""
    seconds = max(seconds, 0.0)
    return {
        "retry-after": str(max(1, math.ceil(seconds))) if seconds > 0 else "0",
        "retry-after-ms": str(math.ceil(seconds * 1000)),
    }


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


def error_event(err: GatewayError) -> bytes:
    """The in-band SSE error event sent when a stream fails after its first byte."""
    payload = {
        "error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
    }
    return sse.encode(json.dumps(payload))


def _is_openai_error(raw: bytes) -> bool:
    try:
        data = json.loads(raw)
    except ValueError:
        return False
    return isinstance(data, dict) and isinstance(data.get("error"), dict)


def _parse_openai_error(raw: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    try:
        data = json.loads(raw)
    except ValueError:
        return None, None, None, None
    if not isinstance(data, dict):
        return None, None, None, None
    err = data.get("error")
    if isinstance(err, dict):
        msg = err.get("message")
        return (
            str(msg) if msg is not None else None,
            _str_or_none(err.get("type")),
            _str_or_none(err.get("code")),
            _str_or_none(err.get("param")),
        )
    if isinstance(err, str):  # Ollama and some others: {"error": "…"}
        return err, None, None, None
    return None, None, None, None


def _str_or_none(v: object) -> str | None:
    return None if v is None else str(v)


class ConfigError(AigwError):
    """One or more problems in a config file; each has file, line, dotted key path and a hint."""

    def __init__(
        self, problems: list[ConfigProblem], warnings: list[ConfigWarning] | None = None
    ) -> None:
        self.problems = problems
        #: what the same file would be warned about once its problems are fixed
        self.warnings = warnings or []
        super().__init__("\n".join(p.format() for p in problems))


class ConfigProblem:
    """One mistake in a config file: where it is, what is wrong, and how to fix it."""

    __slots__ = ("file", "hint", "key", "line", "message")
    #: written before the message: "" for an error, "warning: " for a `ConfigWarning`
    label = ""

    def __init__(
        self, file: str, line: int | None, key: str, message: str, hint: str | None = None
    ) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        self.hint = hint

    def format(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        message = self.label + self.message
        text = f"{where}: {self.key}: {message}" if self.key else f"{where}: {message}"
        if self.hint:
            text += f" (Hint: {self.hint})"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.format()!r})"


class ConfigWarning(ConfigProblem):
    """A config that loads but will likely not work as meant (an empty provider key, a listener
    reachable from the network): reported, never fatal."""

    __slots__ = ()
    label = "warning: "


class StartupError(AigwError):
    """The daemon cannot start (port in use, live daemon on the socket…): exit code 3."""


class StateStoreError(StartupError):
    """The state store cannot be opened (the SQLite file is read-only, not a database, or its
    directory cannot be created): the daemon does not start. The message names the file and
    says what to check."""


class AdminError(AigwError):
    """The CLI's call to the daemon's admin socket failed; the message is one line for the
    user."""


class DaemonNotRunning(AdminError):
    """Nothing answers on the admin socket."""
