"""What both sides of the Messages translation share: Anthropic's error shapes and types, and
its usage accounting read into the canonical `Usage` and written back."""

from __future__ import annotations

from typing import Any, Final

from aigw import sse
from aigw.errors import GatewayError, InvalidRequestError, UpstreamStatusError
from aigw.exchange import Usage
from aigw.jsonutil import dumps, loads

# --- errors ---------------------------------------------------------------------------------

#: Anthropic's error type for each HTTP status (docs.claude.com/en/api/errors); other 4xx are
#: `invalid_request_error`, other 5xx `api_error`.
ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    known = ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if status < 500 else "api_error"


def _native_error(raw: bytes) -> tuple[str, str] | None:
    """(type, message) of a body already in Anthropic's error shape, else None."""
    if not raw.startswith(b"{") and not raw.lstrip().startswith(b"{"):
        return None
    try:
        data = loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("type") != "error":
        return None
    err = data.get("error")
    if not isinstance(err, dict):
        return None
    etype, message = err.get("type"), err.get("message")
    if not isinstance(etype, str) or not isinstance(message, str):
        return None
    return etype, message


def _error_fields(err: GatewayError) -> tuple[str, str]:
    if isinstance(err, UpstreamStatusError):
        native = _native_error(err.raw_body)
        if native is not None:
            return native
    return error_type(err.status), err.message


def error_body(err: GatewayError) -> bytes:
    """`{"type":"error","error":{"type","message"}}` for `err`, answered with `err.status` (and
    `err.headers`, `retry-after` among them). An upstream's own Anthropic-shaped error body is
    passed through as it came."""
    if isinstance(err, UpstreamStatusError) and _native_error(err.raw_body) is not None:
        return err.raw_body
    etype, message = _error_fields(err)
    return dumps({"type": "error", "error": {"type": etype, "message": message}})


def error_event(err: GatewayError) -> bytes:
    """The in-band `event: error` of a stream that fails after its first byte."""
    etype, message = _error_fields(err)
    return sse.encode(
        dumps({"type": "error", "error": {"type": etype, "message": message}}), event="error"
    )


def error_to_chat(raw: bytes) -> bytes | None:
    """An Anthropic error body rewritten as OpenAI error JSON (for a chat client of a Messages
    target), or None when `raw` is not one."""
    native = _native_error(raw)
    if native is None:
        return None
    etype, message = native
    return dumps({"error": {"message": message, "type": etype, "param": None, "code": None}})


# --- usage ----------------------------------------------------------------------------------


def usage(data: object) -> Usage | None:
    """Read an Anthropic `usage` object. Its `input_tokens` excludes the cache reads and writes;
    the canonical prompt is their sum."""
    if not isinstance(data, dict):
        return None
    try:
        fresh = int(data.get("input_tokens") or 0)
        output = int(data.get("output_tokens") or 0)
        read = int(data.get("cache_read_input_tokens") or 0)
        write = int(data.get("cache_creation_input_tokens") or 0)
        details = data.get("output_tokens_details")
        thinking = int(details.get("thinking_tokens") or 0) if isinstance(details, dict) else 0
    except (TypeError, ValueError, OverflowError):
        return None
    if min(fresh, output, read, write, thinking) < 0:
        return None  # a negative count would credit the tenant's quota
    prompt = fresh + read + write
    return Usage(prompt, output, prompt + output, read, write, thinking)


def usage_json(u: Usage) -> dict[str, Any]:
    """A canonical `Usage` as an Anthropic `usage` object."""
    out: dict[str, Any] = {
        "input_tokens": max(u.prompt_tokens - u.cached_tokens - u.cache_write_tokens, 0),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_tokens,
    }
    if u.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
    return out


def chat_usage_json(u: Usage) -> dict[str, Any]:
    """A canonical `Usage` as an OpenAI chat `usage` object."""
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        # `cache_write_tokens` is not OpenAI's (clients ignore it): it carries Anthropic's
        # cache writes to the gateway's own accounting through the chat form.
        "prompt_tokens_details": {
            "cached_tokens": u.cached_tokens,
            "cache_write_tokens": u.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


# --- request checks -------------------------------------------------------------------------


def refuse(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def text_of(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise refuse(f"{param}: expected a string", param)
    return value
