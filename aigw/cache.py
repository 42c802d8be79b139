"""Tenant-scoped exact-match response cache: LRU + TTL + byte budget, plus the SSE helpers that
let one cached answer serve both streaming and non-streaming clients.

What is cached: every successful, complete answer of `chat/completions`, `completions` and
`embeddings`, deterministic-looking or not. This is an *exact* cache: the point is never to pay
twice for the same request, and a client that wants a fresh sample says so per request with
`Cache-Control: no-cache`. Requests whose body cannot be canonicalized are not cached.

The key is a BLAKE2b digest of (tenant, endpoint, canonical body). The canonical body is the
sorted-key compact JSON of the request without the fields in `IGNORED_FIELDS`: they change how
the answer is delivered or recorded, never what it says. Tenants never share entries.

Streamed answers are stored in non-streamed form (`assemble_stream`) and replayed as SSE
(`replay_as_sse`) when a streaming client hits the entry, so one entry serves both kinds.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aigw import jsonutil, sse
from aigw.exchange import Usage

#: Request fields that never change the answer: end-user id (abuse tracking), delivery mode and
#: its options, OpenAI's stored-completion switches, processing tier and cache-routing hints.
IGNORED_FIELDS: frozenset[str] = frozenset(
    {
        "user",
        "stream",
        "stream_options",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    }
)
CACHEABLE_ENDPOINTS: frozenset[str] = frozenset({"chat/completions", "completions", "embeddings"})
#: Bytes charged per entry on top of the body: key, OrderedDict node, CachedResponse, headers.
ENTRY_OVERHEAD = 256

_JSON_HEADERS: dict[str, str] = {"content-type": "application/json"}


def cache_key(
    tenant: str, endpoint: str, body: dict[str, Any], dialect: str = "chat"
) -> bytes | None:
    """The cache key of a request, or None when it must not be cached. `body` is the canonical
    form; the client's `dialect` is part of the key (its entry holds the canonical answer, which
    each dialect renders in its own shape)."""
    if endpoint not in CACHEABLE_ENDPOINTS:
        return None
    canonical = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    parts = (
        [tenant, endpoint, canonical]
        if dialect == "chat"
        else [tenant, endpoint, dialect, canonical]
    )
    try:
        # A JSON array keeps tenant and endpoint unambiguous whatever characters they hold.
        text = jsonutil.dumps_sorted(parts)
    except (TypeError, ValueError):
        return None
    return hashlib.blake2b(text, digest_size=32).digest()


def bytes_key(tenant: str, endpoint: str, raw: bytes) -> tuple[str, str, bytes]:
    """The key of a request's exact bytes (see `Alias`)."""
    return (tenant, endpoint, hashlib.blake2b(raw, digest_size=32).digest())


@dataclass(slots=True, frozen=True)
class Alias:
    """What the full path learnt about one exact request body: its entry's key and how its
    answer is delivered, so the same bytes can be answered without parsing them again. Valid
    only under the runtime (`generation`) whose hooks passed those bytes."""

    key: bytes
    model: str
    stream: bool
    wants_usage: bool
    generation: int


@dataclass(slots=True)
class CachedResponse:
    """One stored answer: always the non-streamed OpenAI JSON body."""

    body: bytes
    usage: Usage | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(_JSON_HEADERS))
    #: When the entry was stored, on the cache's clock; set by `ResponseCache.put`.
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class CacheDirectives:
    """A request's `Cache-Control`: no_cache skips the lookup (the fresh answer is still stored),
    no_store skips storing, max_age accepts only entries at most that many seconds old."""

    no_cache: bool = False
    no_store: bool = False
    max_age: float | None = None


NO_DIRECTIVES = CacheDirectives()


def parse_cache_control(header: str | None) -> CacheDirectives:
    """Parse a request `Cache-Control` header; unknown or malformed directives are ignored."""
    if not header:
        return NO_DIRECTIVES
    no_cache = no_store = False
    max_age: float | None = None
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age":
            try:
                seconds = int(value.strip().strip('"'))
            except ValueError:
                continue
            if seconds >= 0:
                max_age = float(seconds) if max_age is None else min(max_age, float(seconds))
    return CacheDirectives(no_cache, no_store, max_age)


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    evictions: int
    expirations: int


class ResponseCache:
    """LRU with a time-to-live and a byte budget. Single-threaded (the event loop); O(1) per call.

    Expired entries are dropped when looked up, when they reach the LRU end, and by
    `purge_expired()`, which the gateway runs periodically so that memory held by answers nobody
    asks for again is given back: it walks entries in the order they were stored (`_born`), so
    it costs what it removes (amortised O(1) per entry), never a scan of the whole cache.
    """

    __slots__ = (
        "_aliases",
        "_born",
        "_clock",
        "_data",
        "bytes",
        "entries",
        "evictions",
        "expirations",
        "hits",
        "max_bytes",
        "max_entries",
        "misses",
        "ttl",
    )

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or ttl <= 0:
            raise ValueError("max_entries, max_bytes and ttl must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._data: OrderedDict[bytes, CachedResponse] = OrderedDict()
        #: (created, key) in the order entries were stored; an item whose entry was replaced,
        #: evicted or already expired is skipped (and dropped) when the sweep reaches it
        self._born: deque[tuple[float, bytes]] = deque()
        # Exact bytes → Alias, at most max_entries (LRU): small fixed-size records, not counted
        # in the byte budget.
        self._aliases: OrderedDict[tuple[str, str, bytes], Alias] = OrderedDict()
        self.entries = 0
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return self.entries

    def get(self, key: bytes, max_age: float | None = None) -> CachedResponse | None:
        """The fresh entry for `key`, or None (a miss). `max_age` narrows freshness for this
        lookup only; an entry too old for it stays for other requests."""
        entry = self._fresh(key, max_age)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def get_by_bytes(
        self, raw_key: tuple[str, str, bytes], generation: int, max_age: float | None = None
    ) -> tuple[CachedResponse, Alias] | None:
        """The fresh entry a request with these exact bytes was answered from, with what the
        full path learnt about them; None (not counted as a miss: the full path looks next)."""
        alias = self._aliases.get(raw_key)
        if alias is None or alias.generation != generation:
            return None
        entry = self._fresh(alias.key, max_age)
        if entry is None:
            return None
        self._aliases.move_to_end(raw_key)
        self.hits += 1
        return entry, alias

    def learn(self, raw_key: tuple[str, str, bytes], alias: Alias) -> None:
        """Remember which entry these exact bytes map to (used once the entry exists)."""
        aliases = self._aliases
        aliases[raw_key] = alias
        aliases.move_to_end(raw_key)
        if len(aliases) > self.max_entries:
            aliases.popitem(last=False)

    def _fresh(self, key: bytes, max_age: float | None) -> CachedResponse | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        age = self._clock() - entry.created
        if age >= self.ttl:
            self._remove(key, entry)
            self.expirations += 1
            return None
        if max_age is not None and age > max_age:
            return None
        self._data.move_to_end(key)
        return entry

    def put(self, key: bytes, response: CachedResponse) -> int:
        """Store `response` (stamping `created`); return how many entries were evicted for room.
        An answer bigger than the whole byte budget is not stored."""
        size = len(response.body) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return 0
        old = self._data.pop(key, None)
        if old is not None:
            self.entries -= 1
            self.bytes -= len(old.body) + ENTRY_OVERHEAD
        response.created = self._clock()
        self._data[key] = response
        self._born.append((response.created, key))
        if len(self._born) > 2 * self.max_entries:
            self._compact()
        self.entries += 1
        self.bytes += size
        evicted = 0
        while self.entries > self.max_entries or self.bytes > self.max_bytes:
            _, lru = self._data.popitem(last=False)
            self.entries -= 1
            self.bytes -= len(lru.body) + ENTRY_OVERHEAD
            evicted += 1
        self.evictions += evicted
        return evicted

    def clear(self) -> None:
        self._data.clear()
        self._aliases.clear()
        self._born.clear()
        self.entries = 0
        self.bytes = 0

    def purge_expired(self) -> int:
        """Drop every expired entry; return how many."""
        deadline = self._clock() - self.ttl
        born, data = self._born, self._data
        purged = 0
        while born and born[0][0] <= deadline:
            created, key = born.popleft()
            entry = data.get(key)
            if entry is not None and entry.created == created:
                self._remove(key, entry)
                purged += 1
        self.expirations += purged
        return purged

    def _compact(self) -> None:
        """Forget the stored-order items of entries that are gone (evicted or replaced)."""
        data = self._data
        self._born = deque(
            item
            for item in self._born
            if (e := data.get(item[1])) is not None and e.created == item[0]
        )

    def stats(self) -> CacheStats:
        return CacheStats(
            self.entries, self.bytes, self.hits, self.misses, self.evictions, self.expirations
        )

    def _remove(self, key: bytes, entry: CachedResponse) -> None:
        del self._data[key]
        self.entries -= 1
        self.bytes -= len(entry.body) + ENTRY_OVERHEAD


# --- streams -------------------------------------------------------------------------------


def _event_payloads(events: Iterable[bytes]) -> Iterable[bytes]:
    """The data of each SSE event (`aigw.sse` reads them by the spec). An item may be a bare
    payload (`{...}`, `[DONE]`) or a whole event with field lines."""
    for event in events:
        stripped = event.strip()
        if not stripped:
            continue
        if not stripped.startswith((b"data:", b"event:", b":", b"id:", b"retry:")):
            yield stripped
            continue
        data = sse.data_of(stripped)
        if data is not None:
            yield data


def assemble_stream(
    events: Iterable[bytes], endpoint: str, *, usage: Usage | None = None
) -> bytes | None:
    """Rebuild the non-streamed answer (OpenAI JSON) from a streamed one.

    `events` are the stream's SSE events (or their bare `data:` payloads). `usage` fills in the
    usage when the usage chunk is not among the events (e.g. it was stripped for the client).
    None when the stream is not a complete success: no `[DONE]`, an error event, a choice without
    `finish_reason`, or unparsable JSON."""
    if endpoint not in ("chat/completions", "completions"):
        return None
    chat = endpoint == "chat/completions"
    head: dict[str, Any] = {}
    choices: dict[int, _ChoiceBuilder] = {}
    usage_json: Any = None
    done = False
    for payload in _event_payloads(events):
        if payload == b"[DONE]":
            done = True
            continue
        if done:
            return None  # data after [DONE]: not a stream we understand
        try:
            chunk = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(chunk, dict) or chunk.get("error") is not None:
            return None
        if not head:
            for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
                if chunk.get(name) is not None:
                    head[name] = chunk[name]
        elif chunk.get("system_fingerprint") is not None:
            head.setdefault("system_fingerprint", chunk["system_fingerprint"])
        if chunk.get("usage") is not None:
            usage_json = chunk["usage"]
        raw_choices = chunk.get("choices")
        if raw_choices is None:
            continue
        if not isinstance(raw_choices, list):
            return None
        for raw in raw_choices:
            if not isinstance(raw, dict):
                return None
            index = raw.get("index", 0)
            if not isinstance(index, int):
                return None
            builder = choices.get(index)
            if builder is None:
                builder = choices[index] = _ChoiceBuilder(index)
            if not builder.feed(raw, chat):
                return None
    if not done or not choices or any(c.finish_reason is None for c in choices.values()):
        return None
    out: dict[str, Any] = {
        "id": head.get("id", ""),
        "object": "chat.completion" if chat else "text_completion",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [choices[i].build(chat) for i in sorted(choices)],
    }
    for name in ("system_fingerprint", "service_tier"):
        if name in head:
            out[name] = head[name]
    if usage_json is None and usage is not None:
        usage_json = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
    if usage_json is not None:
        out["usage"] = usage_json
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()


class _ChoiceBuilder:
    __slots__ = (
        "content",
        "finish_reason",
        "function_call",
        "index",
        "logprobs",
        "refusal",
        "role",
        "tool_calls",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.role = "assistant"
        self.content: list[str] = []
        self.refusal: list[str] | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, str] | None = None
        self.logprobs: dict[str, list[Any]] | None = None
        self.finish_reason: str | None = None

    def feed(self, raw: dict[str, Any], chat: bool) -> bool:
        """Add one chunk's choice; False when it is malformed."""
        if raw.get("finish_reason") is not None:
            self.finish_reason = raw["finish_reason"]
        logprobs = raw.get("logprobs")
        if isinstance(logprobs, dict):
            self._add_logprobs(logprobs)
        if not chat:
            text = raw.get("text")
            if isinstance(text, str):
                self.content.append(text)
            return text is None or isinstance(text, str)
        delta = raw.get("delta")
        if delta is None:
            return True
        if not isinstance(delta, dict):
            return False
        if isinstance(delta.get("role"), str):
            self.role = delta["role"]
        content = delta.get("content")
        if isinstance(content, str):
            self.content.append(content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            if self.refusal is None:
                self.refusal = []
            self.refusal.append(refusal)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if not isinstance(call, dict) or not self._add_tool_call(call):
                    return False
        fc = delta.get("function_call")
        if isinstance(fc, dict):
            if self.function_call is None:
                self.function_call = {"name": "", "arguments": ""}
            self.function_call["name"] += fc.get("name") or ""
            self.function_call["arguments"] += fc.get("arguments") or ""
        return True

    def _add_tool_call(self, call: dict[str, Any]) -> bool:
        index = call.get("index", len(self.tool_calls))
        if not isinstance(index, int):
            return False
        slot = self.tool_calls.get(index)
        if slot is None:
            slot = self.tool_calls[index] = {
                "id": "",
                "type": "function",
                "function": {"name": "", "arguments": ""},
            }
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        fn = call.get("function")
        if isinstance(fn, dict):
            slot["function"]["name"] += fn.get("name") or ""
            slot["function"]["arguments"] += fn.get("arguments") or ""
        return True

    def _add_logprobs(self, logprobs: dict[str, Any]) -> None:
        if self.logprobs is None:
            self.logprobs = {}
        for name, value in logprobs.items():
            if isinstance(value, list):
                self.logprobs.setdefault(name, []).extend(value)

    def build(self, chat: bool) -> dict[str, Any]:
        text = "".join(self.content)
        if not chat:
            return {
                "index": self.index,
                "text": text,
                "logprobs": self.logprobs,
                "finish_reason": self.finish_reason,
            }
        has_calls = bool(self.tool_calls) or self.function_call is not None
        message: dict[str, Any] = {
            "role": self.role,
            # OpenAI sends null content for a pure tool-call answer.
            "content": text if text or not has_calls else None,
        }
        if self.refusal is not None:
            message["refusal"] = "".join(self.refusal)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        if self.function_call is not None:
            message["function_call"] = self.function_call
        return {
            "index": self.index,
            "message": message,
            "logprobs": self.logprobs,
            "finish_reason": self.finish_reason,
        }


def _sse(obj: dict[str, Any]) -> bytes:
    return sse.encode(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def replay_as_sse(body: bytes, endpoint: str, include_usage: bool) -> list[bytes]:
    """A cached non-streamed answer as the SSE events OpenAI would have streamed: per choice a
    role chunk, a content (or tool-call) chunk and a finish chunk; then, with `include_usage`,
    a usage chunk with empty `choices`; then `data: [DONE]`. Raises ValueError for a body that
    is not a chat.completion/text_completion answer."""
    if endpoint not in ("chat/completions", "completions"):
        raise ValueError(f"{endpoint} answers cannot be streamed")
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise ValueError("not a completion answer")
    chat = endpoint == "chat/completions"
    head: dict[str, Any] = {
        "id": data.get("id", ""),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": data.get("created", 0),
        "model": data.get("model", ""),
    }
    for name in ("system_fingerprint", "service_tier"):
        if data.get(name) is not None:
            head[name] = data[name]
    out: list[bytes] = []
    for choice in data["choices"]:
        index = choice.get("index", 0)
        logprobs = choice.get("logprobs")
        finish = choice.get("finish_reason") or "stop"
        if not chat:
            out.append(
                _sse(
                    {
                        **head,
                        "choices": [
                            {
                                "index": index,
                                "text": choice.get("text") or "",
                                "logprobs": logprobs,
                                "finish_reason": None,
                            }
                        ],
                    }
                )
            )
            out.append(
                _sse(
                    {
                        **head,
                        "choices": [
                            {"index": index, "text": "", "logprobs": None, "finish_reason": finish}
                        ],
                    }
                )
            )
            continue
        message = choice.get("message") or {}
        role_delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": ""}
        if "refusal" in message:
            role_delta["refusal"] = None
        out.append(
            _sse(
                {
                    **head,
                    "choices": [
                        {
                            "index": index,
                            "delta": role_delta,
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            )
        )
        delta: dict[str, Any] = {}
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {"index": i, **call} for i, call in enumerate(message["tool_calls"])
            ]
        if message.get("function_call"):
            delta["function_call"] = message["function_call"]
        if delta or logprobs:
            out.append(
                _sse(
                    {
                        **head,
                        "choices": [
                            {
                                "index": index,
                                "delta": delta,
                                "logprobs": logprobs,
                                "finish_reason": None,
                            }
                        ],
                    }
                )
            )
        out.append(
            _sse(
                {
                    **head,
                    "choices": [
                        {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}
                    ],
                }
            )
        )
    if include_usage and data.get("usage") is not None:
        out.append(_sse({**head, "choices": [], "usage": data["usage"]}))
    out.append(sse.DONE)
    return out
