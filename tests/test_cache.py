"""Response cache at the library level: keys, LRU + TTL + byte budget, Cache-Control, and the
stream assemble/replay pair (read back with the openai SDK from a real loopback server)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from aiohttp import web
from openai import AsyncOpenAI

from aigw.cache import (
    ENTRY_OVERHEAD,
    CacheDirectives,
    CachedResponse,
    ResponseCache,
    assemble_stream,
    cache_key,
    parse_cache_control,
    replay_as_sse,
)
from aigw.hooks.base import Usage
from tests.clock import FakeClock

CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Hello"}],
    "temperature": 0.2,
}


def resp(body: bytes = b'{"ok":true}') -> CachedResponse:
    return CachedResponse(body=body, usage=Usage(3, 4, 7))


# --- keys ----------------------------------------------------------------------------------


def test_same_request_same_key_and_key_ignores_key_order() -> None:
    reordered = {"temperature": 0.2, "messages": CHAT["messages"], "model": "gpt-4o-mini"}
    assert cache_key("a", "chat/completions", CHAT) == cache_key("a", "chat/completions", reordered)


def test_tenants_and_endpoints_never_share_keys() -> None:
    k = cache_key("team-a", "chat/completions", CHAT)
    assert k != cache_key("team-b", "chat/completions", CHAT)
    assert k != cache_key("team-a", "completions", CHAT)
    # A tenant name cannot be crafted to collide with another tenant/endpoint split.
    assert cache_key("a", "chat/completions", CHAT) != cache_key('a","chat', "completions", CHAT)


@pytest.mark.parametrize(
    "extra",
    [
        {"user": "u-42"},
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"metadata": {"run": "7"}},
        {"store": True},
        {"service_tier": "flex"},
        {"prompt_cache_key": "x"},
        {"safety_identifier": "s"},
    ],
)
def test_fields_that_do_not_change_the_answer_are_ignored(extra: dict[str, Any]) -> None:
    assert cache_key("a", "chat/completions", {**CHAT, **extra}) == cache_key(
        "a", "chat/completions", CHAT
    )


@pytest.mark.parametrize(
    "extra",
    [{"temperature": 0.3}, {"seed": 1}, {"n": 2}, {"max_tokens": 5}, {"tools": []}],
)
def test_fields_that_change_the_answer_change_the_key(extra: dict[str, Any]) -> None:
    assert cache_key("a", "chat/completions", {**CHAT, **extra}) != cache_key(
        "a", "chat/completions", CHAT
    )


def test_uncacheable_requests_have_no_key() -> None:
    assert cache_key("a", "models", {}) is None
    # Bodies come from JSON, which holds no NaN; a hook adding a value JSON cannot hold makes
    # the request uncacheable rather than keyed wrongly.
    assert cache_key("a", "chat/completions", {**CHAT, "x": object()}) is None
    assert cache_key("a", "chat/completions", {**CHAT, "x": {1, 2}}) is None
    key = cache_key("a", "embeddings", {"model": "e", "input": "hi"})
    assert isinstance(key, bytes) and len(key) == 32


# --- get / put -----------------------------------------------------------------------------


def test_hit_after_put_miss_for_other_tenant() -> None:
    cache = ResponseCache(10, 10_000, 60, clock=FakeClock())
    key_a = cache_key("a", "chat/completions", CHAT)
    key_b = cache_key("b", "chat/completions", CHAT)
    assert key_a is not None and key_b is not None
    assert cache.get(key_a) is None
    cache.put(key_a, resp(b"answer"))
    hit = cache.get(key_a)
    assert hit is not None and hit.body == b"answer" and hit.usage == Usage(3, 4, 7)
    assert hit.headers == {"content-type": "application/json"}
    assert cache.get(key_b) is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_ttl_expiry_with_injected_clock() -> None:
    clock = FakeClock()
    cache = ResponseCache(10, 10_000, ttl=30, clock=clock)
    cache.put(b"k", resp())
    clock.now += 29.9
    assert cache.get(b"k") is not None
    clock.now += 0.1
    assert cache.get(b"k") is None
    assert cache.expirations == 1 and len(cache) == 0 and cache.bytes == 0


def test_max_age_narrows_one_lookup_only() -> None:
    clock = FakeClock()
    cache = ResponseCache(10, 10_000, ttl=300, clock=clock)
    cache.put(b"k", resp())
    clock.now += 10
    assert cache.get(b"k", max_age=5) is None
    assert cache.get(b"k", max_age=10) is not None
    assert cache.get(b"k") is not None  # the entry stays for requests without max-age
    assert cache.get(b"k", max_age=0) is None


def test_put_stamps_created_and_replaces() -> None:
    clock = FakeClock(50.0)
    cache = ResponseCache(10, 10_000, 60, clock=clock)
    cache.put(b"k", resp(b"one"))
    clock.now = 55.0
    cache.put(b"k", resp(b"second"))
    got = cache.get(b"k")
    assert got is not None and got.body == b"second" and got.created == 55.0
    assert len(cache) == 1 and cache.bytes == len(b"second") + ENTRY_OVERHEAD


def test_lru_evicts_least_recently_used() -> None:
    cache = ResponseCache(2, 10_000, 60, clock=FakeClock())
    cache.put(b"a", resp())
    cache.put(b"b", resp())
    assert cache.get(b"a") is not None  # a is now the most recent
    assert cache.put(b"c", resp()) == 1
    assert cache.get(b"b") is None
    assert cache.get(b"a") is not None and cache.get(b"c") is not None
    assert cache.evictions == 1


def test_too_large_answer_is_not_stored() -> None:
    cache = ResponseCache(10, 1000, 60, clock=FakeClock())
    assert cache.put(b"big", resp(b"x" * 1000)) == 0
    assert cache.get(b"big") is None and cache.bytes == 0


def test_byte_budget_and_entry_bound_hold_under_random_inserts() -> None:
    rng = random.Random(1234)
    clock = FakeClock()
    max_bytes, max_entries = 200_000, 300
    cache = ResponseCache(max_entries, max_bytes, ttl=50, clock=clock)
    live: dict[bytes, bytes] = {}
    for i in range(10_000):
        clock.now += rng.random() * 0.05
        key = rng.randrange(2_000).to_bytes(4, "big")
        if rng.random() < 0.3:
            got = cache.get(key)
            if got is not None:
                assert got.body == live[key]  # never a wrong answer
            continue
        body = bytes([i % 251]) * rng.randrange(1, 4_000)
        live[key] = body
        cache.put(key, CachedResponse(body))
        assert cache.bytes <= max_bytes
        assert len(cache) <= max_entries
        # The accounting matches what is really held.
        if i % 500 == 0:
            held = list(cache._data.values())
            assert cache.bytes == sum(len(r.body) + ENTRY_OVERHEAD for r in held)
            assert len(cache) == len(held)
    assert cache.evictions > 0
    assert cache.stats().entries == len(cache)


def test_purge_expired() -> None:
    clock = FakeClock()
    cache = ResponseCache(10, 10_000, ttl=10, clock=clock)
    cache.put(b"old", resp())
    clock.now += 6
    cache.put(b"new", resp())
    clock.now += 5
    assert cache.purge_expired() == 1
    assert cache.get(b"new") is not None and len(cache) == 1


def test_purge_walks_stored_order_and_skips_what_is_gone() -> None:
    """Entries replaced, evicted or read after they expired are skipped; the sweep removes only
    what expired (a replaced entry counts from its new store time), and what it remembers stays
    bounded however many entries come and go."""
    clock = FakeClock()
    cache = ResponseCache(3, 10_000, ttl=10, clock=clock)
    cache.put(b"a", resp())
    cache.put(b"b", resp())
    clock.now += 5
    cache.put(b"a", resp())  # replaced: lives until 15
    cache.put(b"c", resp())
    cache.put(b"d", resp())  # evicts b (LRU)
    clock.now += 6  # 11: nothing stored at 0 is left
    assert cache.purge_expired() == 0 and len(cache) == 3
    clock.now += 5  # 16: a, c and d (stored at 5) expired
    assert cache.purge_expired() == 3 and len(cache) == 0
    for i in range(10_000):  # far more than max_entries: the stored-order record is compacted
        cache.put(str(i).encode(), resp())
    assert len(cache._born) <= 2 * cache.max_entries


def test_invalid_limits_rejected() -> None:
    with pytest.raises(ValueError):
        ResponseCache(0, 10, 1)


# --- Cache-Control -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, CacheDirectives()),
        ("", CacheDirectives()),
        ("no-cache", CacheDirectives(no_cache=True)),
        ("No-Store", CacheDirectives(no_store=True)),
        ("no-cache, no-store", CacheDirectives(True, True)),
        ("max-age=60", CacheDirectives(max_age=60.0)),
        ('max-age="5"', CacheDirectives(max_age=5.0)),
        ("max-age=0", CacheDirectives(max_age=0.0)),
        ("max-age=abc, no-store", CacheDirectives(no_store=True)),
        ("max-age=-1", CacheDirectives()),
        ("private, max-age=30, max-age=10", CacheDirectives(max_age=10.0)),
    ],
)
def test_parse_cache_control(header: str | None, expected: CacheDirectives) -> None:
    assert parse_cache_control(header) == expected


# --- streams -------------------------------------------------------------------------------


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode()


def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_1",
            "choices": choices,
            **extra,
        }
    )


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}

CHAT_EVENTS = [
    chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {"content": "lo!"}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    chunk([], usage=USAGE),
    b"data: [DONE]",
]

TOOL_EVENTS = [
    chunk([{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}]),
    chunk(
        [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                },
                "finish_reason": None,
            }
        ]
    ),
    chunk(
        [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
                "finish_reason": None,
            }
        ]
    ),
    chunk(
        [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {"index": 0, "function": {"arguments": '"Paris"}'}},
                        {
                            "index": 1,
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "now", "arguments": "{}"},
                        },
                    ]
                },
                "finish_reason": None,
            }
        ]
    ),
    chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
    chunk([], usage=USAGE),
    b"data: [DONE]",
]


def test_assemble_chat_stream() -> None:
    body = assemble_stream(CHAT_EVENTS, "chat/completions")
    assert body is not None
    data = json.loads(body)
    assert data["object"] == "chat.completion"
    assert data["id"] == "chatcmpl-1" and data["model"] == "gpt-4o-mini"
    assert data["system_fingerprint"] == "fp_1"
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert data["usage"] == USAGE


def test_assemble_accepts_whole_events_and_usage_given_apart() -> None:
    events = [e + b"\n\n" for e in CHAT_EVENTS if b'"usage"' not in e]
    events.insert(0, b": keep-alive\n\n")
    body = assemble_stream(events, "chat/completions", usage=Usage(5, 3, 8))
    assert body is not None and json.loads(body)["usage"] == USAGE


def test_assemble_tool_calls() -> None:
    body = assemble_stream(TOOL_EVENTS, "chat/completions")
    assert body is not None
    message = json.loads(body)["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]


@pytest.mark.parametrize(
    "events",
    [
        CHAT_EVENTS[:-1],  # no [DONE]
        [CHAT_EVENTS[0], CHAT_EVENTS[1], b"data: [DONE]"],  # no finish_reason
        [*CHAT_EVENTS[:2], b'data: {"error": {"message": "boom"}}', b"data: [DONE]"],
        [CHAT_EVENTS[0], b"data: {not json", *CHAT_EVENTS[3:]],
        [b"data: [DONE]"],  # no choices at all
    ],
)
def test_incomplete_or_failed_streams_are_not_assembled(events: list[bytes]) -> None:
    assert assemble_stream(events, "chat/completions") is None


def test_embeddings_are_never_streams() -> None:
    assert assemble_stream(CHAT_EVENTS, "embeddings") is None
    with pytest.raises(ValueError):
        replay_as_sse(b"{}", "embeddings", include_usage=False)


def payloads(events: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for e in events:
        assert e.startswith(b"data: ") and e.endswith(b"\n\n")
        raw = e[6:-2]
        out.append("[DONE]" if raw == b"[DONE]" else json.loads(raw))
    return out


def test_replay_shape() -> None:
    body = assemble_stream(CHAT_EVENTS, "chat/completions")
    assert body is not None
    events = payloads(replay_as_sse(body, "chat/completions", include_usage=True))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[1]["choices"][0]["delta"]["content"] == "Hello!"
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"] == USAGE
    without = payloads(replay_as_sse(body, "chat/completions", include_usage=False))
    assert all("usage" not in c for c in without[:-1]) and len(without) == 4


@pytest.mark.parametrize("events", [CHAT_EVENTS, TOOL_EVENTS])
def test_assemble_replay_round_trip_is_exact(events: list[bytes]) -> None:
    body = assemble_stream(events, "chat/completions")
    assert body is not None
    replayed = replay_as_sse(body, "chat/completions", include_usage=True)
    assert assemble_stream(replayed, "chat/completions") == body


def test_round_trip_of_upstream_answer_with_two_choices_and_refusal() -> None:
    upstream = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": None, "refusal": "no"},
                "logprobs": None,
                "finish_reason": "stop",
            },
        ],
        "usage": USAGE,
    }
    replayed = replay_as_sse(json.dumps(upstream).encode(), "chat/completions", True)
    body = assemble_stream(replayed, "chat/completions")
    assert body is not None
    data = json.loads(body)
    assert [c["message"].get("content") for c in data["choices"]] == ["A", ""]
    assert data["choices"][1]["message"]["refusal"] == "no"
    assert data["usage"] == USAGE


def test_completions_round_trip() -> None:
    events = [
        sse(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "text": "Once", "logprobs": None, "finish_reason": None}],
            }
        ),
        sse(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": "m",
                "choices": [
                    {"index": 0, "text": " upon", "logprobs": None, "finish_reason": "length"}
                ],
            }
        ),
        sse(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": "m",
                "choices": [],
                "usage": USAGE,
            }
        ),
        b"data: [DONE]",
    ]
    body = assemble_stream(events, "completions")
    assert body is not None
    data = json.loads(body)
    assert data["object"] == "text_completion"
    assert data["choices"][0]["text"] == "Once upon"
    assert data["choices"][0]["finish_reason"] == "length"
    replayed = replay_as_sse(body, "completions", include_usage=True)
    assert payloads(replayed)[0]["object"] == "text_completion"
    assert assemble_stream(replayed, "completions") == body


# --- replay read by the openai SDK -------------------------------------------------------


async def serve_events(aiohttp_server: Any, events: list[bytes]) -> str:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/v1/completions", handler)
    server = await aiohttp_server(app, host="127.0.0.1", port=0)
    return f"http://127.0.0.1:{server.port}/v1"


async def test_replay_parses_with_openai_sdk(aiohttp_server: Any) -> None:
    cached = assemble_stream(TOOL_EVENTS, "chat/completions")
    assert cached is not None
    base_url = await serve_events(
        aiohttp_server, replay_as_sse(cached, "chat/completions", include_usage=True)
    )
    content: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    finish = None
    usage = None
    async with AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "weather?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for part in stream:
            if part.usage is not None:
                usage = part.usage.model_dump()
            for choice in part.choices:
                if choice.delta.content:
                    content.append(choice.delta.content)
                for tc in choice.delta.tool_calls or ():
                    slot = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
                    slot["id"] += tc.id or ""
                    if tc.function is not None:
                        slot["name"] += tc.function.name or ""
                        slot["args"] += tc.function.arguments or ""
                finish = choice.finish_reason or finish
    expected = json.loads(cached)
    msg = expected["choices"][0]["message"]
    assert "".join(content) == ""
    assert [calls[i] for i in sorted(calls)] == [
        {"id": c["id"], "name": c["function"]["name"], "args": c["function"]["arguments"]}
        for c in msg["tool_calls"]
    ]
    assert finish == "tool_calls"
    assert usage is not None and {k: usage[k] for k in USAGE} == USAGE


async def test_replayed_text_reassembles_to_cached_content_with_openai_sdk(
    aiohttp_server: Any,
) -> None:
    cached = assemble_stream(CHAT_EVENTS, "chat/completions")
    assert cached is not None
    base_url = await serve_events(
        aiohttp_server, replay_as_sse(cached, "chat/completions", include_usage=False)
    )
    async with AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == json.loads(cached)["choices"][0]["message"]["content"] == "Hello!"
