"""The response cache through the real gateway: real aiohttp upstream on loopback, raw aiohttp
and the official `openai` SDK as clients. Time comes from a fake clock swapped into the
gateway's cache (and rate limiter), so TTL and max-age are tested without sleeping."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from aigw.cache import ResponseCache
from aigw.config import (
    AuthConfig,
    AuthKey,
    CacheConfig,
    HookSpec,
    QuotaConfig,
    RateLimitConfig,
    Secret,
)
from aigw.hooks.base import Hook, RequestContext
from aigw.hooks.content_filter import ContentFilterHook
from aigw.limits import build_limits
from tests.clock import FakeClock
from tests.conftest import RunningGateway, make_config
from tests.upstream import WORDS, Upstream

ANSWER = " ".join(WORDS)
USAGE = {"prompt_tokens": 7, "completion_tokens": len(WORDS), "total_tokens": 7 + len(WORDS)}


def chat(content: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": content}], **extra}


class Reply:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def cache(self) -> str | None:
        return self.headers.get("x-aigw-cache")

    def json(self) -> Any:
        return json.loads(self.body)


async def post(
    gw: RunningGateway,
    body: dict[str, Any],
    *,
    endpoint: str = "chat/completions",
    headers: dict[str, str] | None = None,
) -> Reply:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.v1}/{endpoint}", json=body, headers=headers or {}) as r,
    ):
        return Reply(r.status, r.headers, await r.read())


def sse_text(body: bytes) -> tuple[str, list[dict[str, Any]], bool]:
    """(content, usage objects, saw [DONE]) of a chat SSE body."""
    text: list[str] = []
    usages: list[dict[str, Any]] = []
    done = False
    for event in body.split(b"\n\n"):
        if not event.startswith(b"data: "):
            continue
        payload = event[6:]
        if payload == b"[DONE]":
            done = True
            continue
        data = json.loads(payload)
        assert "error" not in data, data
        if data.get("usage") is not None:
            usages.append(data["usage"])
        for choice in data.get("choices") or ():
            piece = choice.get("delta", {}).get("content") or choice.get("text")
            if piece:
                text.append(piece)
    return "".join(text), usages, done


def sdk(gw: RunningGateway, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0, timeout=10)


async def start(
    start_gateway: Any,
    upstream: Upstream,
    sock_dir: Path,
    *,
    cache: CacheConfig | None = None,
    clock: FakeClock | None = None,
    **sections: Any,
) -> RunningGateway:
    cache = cache or CacheConfig(enabled=True)
    gw: RunningGateway = await start_gateway(
        make_config({"up": upstream.url}, sock=sock_dir, cache=cache, **sections)
    )
    if clock is not None:
        gw.gateway.cache = ResponseCache(cache.max_entries, cache.max_bytes, cache.ttl, clock=clock)
    return gw


# --- the basics --------------------------------------------------------------------------------


async def test_same_request_twice_is_one_upstream_call_and_identical_answer(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    first = await post(gw, chat())
    second = await post(gw, chat())
    assert (first.status, first.cache) == (200, "miss")
    assert (second.status, second.cache) == (200, "hit")
    assert second.body == first.body  # byte for byte
    assert len(upstream.requests) == 1
    assert second.headers["x-aigw-provider"] == "up"
    assert second.headers["x-aigw-model"] == "up-model"
    assert second.headers["Content-Type"].startswith("application/json")
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    # The SDK reads the cached answer like any other.
    client = sdk(gw)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=chat()["messages"]
    )
    assert raw.headers["x-aigw-cache"] == "hit"
    done = raw.parse()
    assert done.choices[0].message.content == ANSWER
    assert done.usage is not None and done.usage.total_tokens == USAGE["total_tokens"]
    assert len(upstream.requests) == 1
    await client.close()


async def test_tenants_never_share_entries_in_laptop_mode(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    a = {"X-Aigw-Tenant": "team-a"}
    b = {"X-Aigw-Tenant": "team-b"}
    assert (await post(gw, chat(), headers=a)).cache == "miss"
    assert (await post(gw, chat(), headers=b)).cache == "miss"
    assert (await post(gw, chat())).cache == "miss"  # tenant `default`
    assert len(upstream.requests) == 3
    assert (await post(gw, chat(), headers=a)).cache == "hit"
    assert (await post(gw, chat(), headers=b)).cache == "hit"
    assert len(upstream.requests) == 3


async def test_tenants_never_share_entries_with_keys(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    auth = AuthConfig(
        keys=(
            AuthKey(tenant="team-a", key=Secret("sk-team-a-0123456789")),
            AuthKey(tenant="team-b", key=Secret("sk-team-b-0123456789")),
        )
    )
    gw = await start(start_gateway, upstream, sock_dir, auth=auth)
    ka = {"Authorization": "Bearer sk-team-a-0123456789"}
    kb = {"Authorization": "Bearer sk-team-b-0123456789"}
    assert (await post(gw, chat(), headers=ka)).cache == "miss"
    assert (await post(gw, chat(), headers=kb)).cache == "miss"
    # X-Aigw-Tenant means nothing when keys are configured: it cannot reach team-a's entry.
    spoof = {**kb, "X-Aigw-Tenant": "team-a"}
    assert (await post(gw, chat("other", temperature=1), headers=ka)).cache == "miss"
    assert (await post(gw, chat("other", temperature=1), headers=spoof)).cache == "miss"
    assert (await post(gw, chat(), headers=ka)).cache == "hit"
    assert len(upstream.requests) == 4


async def test_user_field_does_not_change_the_key_but_answer_fields_do(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    assert (await post(gw, chat(user="alice"))).cache == "miss"
    assert (await post(gw, chat(user="bob"))).cache == "hit"
    assert (await post(gw, chat())).cache == "hit"
    # Key order is not part of the key either.
    reordered = {"messages": chat()["messages"], "model": "gpt-test"}
    assert (await post(gw, reordered)).cache == "hit"
    assert len(upstream.requests) == 1
    assert (await post(gw, chat(temperature=0.5))).cache == "miss"
    assert (await post(gw, chat("hello there!"))).cache == "miss"
    assert len(upstream.requests) == 3


async def test_completions_endpoint_cached_apart_from_chat(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    body = {"model": "gpt-test", "prompt": "say it"}
    first = await post(gw, body, endpoint="completions")
    second = await post(gw, body, endpoint="completions")
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.body == first.body
    assert second.json()["choices"][0]["text"] == ANSWER
    assert len(upstream.requests) == 1


# --- Cache-Control ------------------------------------------------------------------------------


async def test_no_store_is_not_stored(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    first = await post(gw, chat(), headers={"Cache-Control": "no-store"})
    assert (first.status, first.cache) == (200, "miss")
    assert gw.gateway.cache is not None and gw.gateway.cache.entries == 0
    assert (await post(gw, chat())).cache == "miss"
    assert len(upstream.requests) == 2
    assert (await post(gw, chat())).cache == "hit"
    assert len(upstream.requests) == 2


async def test_no_cache_calls_the_upstream_again_and_refreshes_the_entry(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    assert (await post(gw, chat())).cache == "miss"
    upstream.behaviour.words = ["fresh", "answer"]
    fresh = await post(gw, chat(), headers={"Cache-Control": "no-cache"})
    assert (fresh.status, fresh.cache) == (200, "miss")
    assert fresh.json()["choices"][0]["message"]["content"] == "fresh answer"
    assert len(upstream.requests) == 2
    # The fresh answer replaced the stored one.
    again = await post(gw, chat())
    assert again.cache == "hit"
    assert again.body == fresh.body
    assert len(upstream.requests) == 2


async def test_max_age_and_ttl_follow_the_injected_clock(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    clock = FakeClock()
    cache = CacheConfig(enabled=True, ttl=60.0)
    gw = await start(start_gateway, upstream, sock_dir, cache=cache, clock=clock)
    assert (await post(gw, chat())).cache == "miss"  # stored at t=1000
    clock.now += 10
    assert (await post(gw, chat(), headers={"Cache-Control": "max-age=30"})).cache == "hit"
    assert (await post(gw, chat(), headers={"Cache-Control": "max-age=10"})).cache == "hit"
    assert len(upstream.requests) == 1
    too_old = await post(gw, chat(), headers={"Cache-Control": "max-age=5"})
    assert too_old.cache == "miss"  # 10 s old is older than 5 s: ask again, store anew
    assert len(upstream.requests) == 2
    assert (await post(gw, chat(), headers={"Cache-Control": "max-age=5"})).cache == "hit"
    # The entry now dates from t=1010; the TTL (60 s) counts from there.
    clock.now = 1010 + 59.9
    assert (await post(gw, chat())).cache == "hit"
    clock.now = 1010 + 60
    assert (await post(gw, chat())).cache == "miss"
    assert len(upstream.requests) == 3


async def test_lru_bound_through_the_gateway(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir, cache=CacheConfig(True, max_entries=2))
    for text in ("one", "two", "three"):
        assert (await post(gw, chat(text))).cache == "miss"
    cache = gw.gateway.cache
    assert cache is not None and cache.entries == 2 and cache.evictions == 1
    assert (await post(gw, chat("three"))).cache == "hit"
    assert (await post(gw, chat("one"))).cache == "miss"  # the least recently used went
    assert len(upstream.requests) == 4


# --- streams ------------------------------------------------------------------------------------


async def sdk_stream(
    client: openai.AsyncOpenAI, content: str = "hello there", **extra: Any
) -> tuple[str, str | None, list[Any]]:
    """(text, x-aigw-cache, usage chunks) of one streamed chat completion."""
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": content}], stream=True, **extra
    )
    text, usages = [], []
    async for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usages.append(chunk.usage)
    return "".join(text), raw.headers.get("x-aigw-cache"), usages


async def test_stream_is_stored_and_replayed_as_sse(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    client = sdk(gw)
    assert await sdk_stream(client) == (ANSWER, "miss", [])
    assert await sdk_stream(client) == (ANSWER, "hit", [])
    assert len(upstream.requests) == 1
    # A client asking for usage gets the usage of the original answer in the replay.
    text, cache, usages = await sdk_stream(client, stream_options={"include_usage": True})
    assert (text, cache) == (ANSWER, "hit")
    assert len(usages) == 1
    assert (usages[0].prompt_tokens, usages[0].completion_tokens, usages[0].total_tokens) == (
        USAGE["prompt_tokens"],
        USAGE["completion_tokens"],
        USAGE["total_tokens"],
    )
    # A non-streaming client hits the same entry and gets the assembled answer.
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=chat()["messages"]
    )
    assert raw.headers["x-aigw-cache"] == "hit"
    done = raw.parse()
    assert done.choices[0].message.content == ANSWER
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.total_tokens == USAGE["total_tokens"]
    assert len(upstream.requests) == 1
    await client.close()


async def test_replayed_stream_is_well_formed_sse(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    await post(gw, chat())  # stored from a non-streamed answer
    replay = await post(gw, chat(stream=True))
    assert replay.status == 200 and replay.cache == "hit"
    assert replay.headers["Content-Type"].startswith("text/event-stream")
    text, usages, done = sse_text(replay.body)
    assert (text, usages, done) == (ANSWER, [], True)
    assert replay.body.endswith(b"data: [DONE]\n\n")
    assert len(upstream.requests) == 1


async def test_completions_stream_replay(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    client = sdk(gw)
    first = [
        c.choices[0].text
        async for c in await client.completions.create(
            model="gpt-test", prompt="say it", stream=True
        )
        if c.choices
    ]
    second = [
        c.choices[0].text
        async for c in await client.completions.create(
            model="gpt-test", prompt="say it", stream=True
        )
        if c.choices
    ]
    assert "".join(first) == "".join(second) == ANSWER
    assert len(upstream.requests) == 1
    await client.close()


# --- what is never stored -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 429, 500, 503])
async def test_upstream_errors_are_never_stored(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, status: int
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    upstream.behaviour.status = status
    failed = await post(gw, chat())
    assert failed.status == status
    assert gw.gateway.cache is not None and gw.gateway.cache.entries == 0
    upstream.behaviour.status = 200
    ok = await post(gw, chat())
    assert (ok.status, ok.cache) == (200, "miss")
    assert len(upstream.requests) == 2


async def test_broken_stream_is_never_stored(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    upstream.behaviour.reset_after_chunks = 3
    broken = await post(gw, chat(stream=True))
    assert broken.status == 200  # headers were out before the upstream broke
    assert b'"upstream_error"' in broken.body
    assert gw.gateway.cache is not None and gw.gateway.cache.entries == 0
    upstream.behaviour.reset_after_chunks = None
    whole = await post(gw, chat(stream=True))
    assert whole.cache == "miss"
    assert sse_text(whole.body) == (ANSWER, [], True)
    assert len(upstream.requests) == 2
    assert (await post(gw, chat(stream=True))).cache == "hit"


async def test_stream_without_done_is_never_stored(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    upstream.behaviour.omit_done = True
    cut = await post(gw, chat(stream=True))
    # The answer finished (finish_reason came) so the client gets no error, but a stream that
    # never said [DONE] is not provably complete: it is not stored.
    assert cut.status == 200 and b'"upstream_error"' not in cut.body
    assert gw.gateway.cache is not None and gw.gateway.cache.entries == 0
    upstream.behaviour.omit_done = False
    assert (await post(gw, chat(stream=True))).cache == "miss"
    assert len(upstream.requests) == 2


# --- rate limits and quota ----------------------------------------------------------------------


async def test_hits_count_zero_quota_tokens_but_count_against_the_request_rate(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    clock = FakeClock()
    limits = RateLimitConfig(requests_per_second=0.01, burst=4)
    gw = await start(
        start_gateway,
        upstream,
        sock_dir,
        rate_limit=limits,
        quota=QuotaConfig(default=1_000_000),
    )
    gw.gateway.limits = build_limits(gw.gateway.store, gw.gateway.config, clock=clock)
    assert (await post(gw, chat())).cache == "miss"
    hit = await post(gw, chat())
    assert hit.cache == "hit"
    assert hit.headers["x-ratelimit-remaining-requests"] == "2"
    assert (await post(gw, chat(stream=True))).cache == "hit"
    assert (await post(gw, chat())).cache == "hit"
    limited = await post(gw, chat())
    assert limited.status == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(upstream.requests) == 1
    quota = gw.gateway.limits.quota
    assert quota is not None
    (status,) = await quota.status("default")
    assert (status.input_tokens, status.output_tokens, status.total_tokens) == (
        USAGE["prompt_tokens"],
        USAGE["completion_tokens"],
        USAGE["total_tokens"],
    )
    assert status.reserved == 0


# --- embeddings ---------------------------------------------------------------------------------


async def test_embeddings_are_cached(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    client = sdk(gw)
    for expected in ("miss", "hit"):
        raw = await client.embeddings.with_raw_response.create(model="gpt-test", input=["a", "b"])
        assert raw.headers["x-aigw-cache"] == expected
        assert [d.embedding for d in raw.parse().data] == [[0.25, 0.5, 0.75]] * 2
    assert len(upstream.requests) == 1
    # The encoding is part of the request: a float request is another entry.
    body = {"model": "gpt-test", "input": ["a", "b"], "encoding_format": "float"}
    assert (await post(gw, body, endpoint="embeddings")).cache == "miss"
    assert (await post(gw, body, endpoint="embeddings")).cache == "hit"
    assert len(upstream.requests) == 2
    await client.close()


async def test_embeddings_with_stray_stream_flag_are_plain_json(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    body = {"model": "gpt-test", "input": "a", "encoding_format": "float", "stream": True}
    first = await post(gw, body, endpoint="embeddings")
    second = await post(gw, body, endpoint="embeddings")
    for reply, cache in ((first, "miss"), (second, "hit")):
        assert (reply.status, reply.cache) == (200, cache)
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.json()["data"][0]["embedding"] == [0.25, 0.5, 0.75]
    assert second.body == first.body
    assert len(upstream.requests) == 1


# --- hits found by the request's exact bytes ----------------------------------------------------


class CountingHook(Hook):
    """Counts before_request calls; `deterministic` as the test sets it on the class."""

    modifies_request = False
    deterministic = True
    calls = 0

    async def before_request(self, ctx: RequestContext) -> None:
        self.calls += 1


def counting_hook(gw: RunningGateway) -> CountingHook:
    # The hook loader imports this module by its own name: find the instance, not the class.
    hook = gw.gateway.runtime.hooks[-1]
    assert type(hook).__name__ in ("CountingHook", "ClockHook", "StricterFilter")
    return hook  # type: ignore[no-any-return]


class ClockHook(CountingHook):
    deterministic = False  # e.g. a business-hours rule: must run on every request


class StricterFilter(ContentFilterHook):
    """A user's subclass of a built-in that adds its own before_request: it does not inherit the
    built-in's `deterministic` promise."""

    calls = 0

    async def before_request(self, ctx: RequestContext) -> None:
        self.calls += 1
        await super().before_request(ctx)


async def post_bytes(gw: RunningGateway, raw: bytes, **headers: str) -> Reply:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.v1}/chat/completions", data=raw, headers=headers) as r,
    ):
        return Reply(r.status, r.headers, await r.read())


async def test_bytes_seen_before_are_answered_without_running_the_hooks_again(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(
        start_gateway,
        upstream,
        sock_dir,
        hooks=(HookSpec("validation"), HookSpec("tests.test_cache_e2e:CountingHook")),
    )
    hook = counting_hook(gw)
    compact = json.dumps(chat("same"), separators=(",", ":")).encode()
    spaced = json.dumps(chat("same"), indent=2, sort_keys=True).encode()
    first = await post_bytes(gw, compact, **{"Content-Type": "application/json"})
    assert first.cache == "miss" and hook.calls == 1
    again = await post_bytes(gw, compact)
    assert again.cache == "hit" and again.body == first.body
    assert hook.calls == 1  # found by its bytes: no parse, no hooks
    # The same request written differently: the canonical key finds it, the hooks run once…
    assert (await post_bytes(gw, spaced)).cache == "hit" and hook.calls == 2
    # …and its bytes are known from then on.
    assert (await post_bytes(gw, spaced)).cache == "hit" and hook.calls == 2
    # A reload may change what the hooks accept: bytes learnt before it are checked again.
    rt = gw.gateway.runtime
    gw.gateway.runtime = dataclasses.replace(rt, generation=rt.generation + 1_000)
    assert (await post_bytes(gw, compact)).cache == "hit" and hook.calls == 3
    assert (await post_bytes(gw, compact)).cache == "hit" and hook.calls == 3
    # no-cache skips every lookup; the hooks run and the upstream answers again.
    fresh = await post_bytes(gw, compact, **{"Cache-Control": "no-cache"})
    assert fresh.cache == "miss" and hook.calls == 4
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    "hook_class",
    [
        "ClockHook",  # says deterministic = False
        "StricterFilter",  # overrides a built-in's before_request without saying it again
    ],
)
async def test_a_hook_that_is_not_deterministic_runs_on_every_hit(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, hook_class: str
) -> None:
    gw = await start(
        start_gateway, upstream, sock_dir, hooks=(HookSpec(f"tests.test_cache_e2e:{hook_class}"),)
    )
    hook = counting_hook(gw)
    raw = json.dumps(chat("ticking")).encode()
    for n in range(1, 4):
        reply = await post_bytes(gw, raw)
        assert reply.cache == ("miss" if n == 1 else "hit")
        assert hook.calls == n
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("stream_first", [False, True])
async def test_bytes_hits_keep_the_delivery_of_their_own_request(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, stream_first: bool
) -> None:
    gw = await start(start_gateway, upstream, sock_dir)
    plain = json.dumps(chat("deliver")).encode()
    streamed = json.dumps(chat("deliver", stream=True)).encode()
    order = [streamed, plain] if stream_first else [plain, streamed]
    replies = [await post_bytes(gw, raw) for raw in order * 2]
    assert [r.cache for r in replies] == ["miss", "hit", "hit", "hit"]
    texts = []
    for raw, reply in zip(order * 2, replies, strict=True):
        if raw is streamed:
            assert reply.headers["Content-Type"].startswith("text/event-stream")
            text, usages, done = sse_text(reply.body)
            assert done and usages == []  # include_usage was not asked for
        else:
            assert reply.headers["Content-Type"].startswith("application/json")
            text = reply.json()["choices"][0]["message"]["content"]
        texts.append(text)
    assert texts[0] and texts == [texts[0]] * 4
    assert len(upstream.requests) == 1


async def test_a_tenant_out_of_quota_is_refused_even_a_cached_answer(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    # DESIGN §1: quota before cache. A hit costs no tokens, but only a tenant with some left
    # gets one; by its exact bytes or by the canonical key alike.
    gw = await start(start_gateway, upstream, sock_dir, quota=QuotaConfig(default=1_000_000))
    assert (await post(gw, chat("cached"))).cache == "miss"
    assert (await post(gw, chat("cached"))).cache == "hit"
    quota = gw.gateway.limits.quota
    assert quota is not None
    (before,) = await quota.status("default")
    spaced = json.dumps(chat("cached"), indent=1).encode()  # the canonical path
    assert (await post_bytes(gw, spaced)).cache == "hit"
    (after,) = await quota.status("default")
    assert (after.total_tokens, after.reserved) == (before.total_tokens, 0)  # hits cost nothing
    await quota.set_limit("default", before.total_tokens)  # used up
    for raw in (json.dumps(chat("cached")).encode(), spaced):
        refused = await post_bytes(gw, raw)
        assert refused.status == 429, refused.body
        assert refused.json()["error"]["code"] == "insufficient_quota"
    await quota.set_limit("default", before.total_tokens + 1)  # one token left: enough for a hit
    assert (await post_bytes(gw, spaced)).cache == "hit"
    (last,) = await quota.status("default")
    assert (last.total_tokens, last.reserved) == (before.total_tokens, 0)
    assert len(upstream.requests) == 1


async def test_answers_past_their_ttl_are_dropped_without_being_asked_for(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start(start_gateway, upstream, sock_dir, cache=CacheConfig(enabled=True, ttl=0.2))
    assert (await post(gw, chat("a"))).cache == "miss"
    assert (await post(gw, chat("b"))).cache == "miss"
    cache = gw.gateway.cache
    assert cache is not None and cache.entries == 2
    for _ in range(200):  # the gateway's own sweep, every ttl: no lookup of those entries
        if cache.entries == 0:
            break
        await asyncio.sleep(0.02)
    assert (cache.entries, cache.bytes) == (0, 0)
