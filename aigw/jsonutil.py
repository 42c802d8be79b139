"""JSON on the hot path, in one place: orjson (a C parser/serializer, several times faster than
the standard library here; measured in bench/micro.py) with the standard library's error types.

orjson is stricter than `json` where it matters little to a gateway: NaN/Infinity literals,
integers beyond 64 bits and nesting deeper than 1,024 levels are invalid JSON to it (a 400)."""

from __future__ import annotations

from typing import Any

import orjson

#: Raised for invalid JSON or invalid UTF-8; a ValueError, as `json.JSONDecodeError` is.
JSONDecodeError = orjson.JSONDecodeError


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return orjson.dumps(obj)


def dumps_sorted(obj: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys: one canonical form of a value (cache keys)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
