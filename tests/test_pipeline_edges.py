"""Edges of the request pipeline: upstreams that misbehave at the HTTP level, errors that are not
the gateway's own types, and answers that come without usage. Each must end in OpenAI error JSON
(or a clean answer) with every charge settled and the target's record right."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from aigw.config import HookSpec, QuotaConfig
from aigw.hooks.base import Hook, RequestContext, ResponseInfo
from tests.conftest import make_config
from tests.upstream import WORDS, Upstream

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


class OddUpstream:
    """An upstream that answers every POST with one fixed status, content type and body."""

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status, self.content_type, self.body = status, content_type, body
        self.hits = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> OddUpstream:
        async def answer(request: web.Request) -> web.Response:
            self.hits += 1
            await request.read()
            return web.Response(
                status=self.status, body=self.body, headers={"Content-Type": self.content_type}
            )

        app = web.Application()
        app.router.add_post("/v1/{tail:.*}", answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def post(
    gw: Any, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, Any] | bytes, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.v1 + "/chat/completions", json=body, headers=headers) as r,
    ):
        raw = await r.read()
        try:
            data: dict[str, Any] | bytes = json.loads(raw)
        except ValueError:
            data = raw
        return r.status, data, r.headers


async def quota_used(gw: Any, tenant: str = "default") -> tuple[int, int]:
    [status] = await gw.gateway.limits.quota.status(tenant)
    return status.total_tokens, status.reserved


def target_stats(gw: Any) -> dict[str, Any]:
    snap = gw.gateway.runtime.balancers.snapshot().to_dict()
    return {t["id"]: t for m in snap["models"] for t in m["targets"]}


@pytest.fixture
async def no_usage_upstream() -> AsyncIterator[OddUpstream]:
    answer = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
    }
    async with OddUpstream(200, "application/json", json.dumps(answer).encode()) as up:
        yield up


async def test_an_answer_without_usage_costs_the_reservation_not_nothing(
    no_usage_upstream: OddUpstream, start_gateway: Any, sock_dir: Path
) -> None:
    quota = QuotaConfig(default=1000, default_max_tokens=200)
    gw = await start_gateway(make_config({"up": no_usage_upstream.url}, sock=sock_dir, quota=quota))
    statuses = [(await post(gw, {**CHAT, "max_tokens": 200}))[0] for _ in range(8)]
    # Each answer is charged its worst case (prompt estimate + 200), so the quota runs out
    # instead of every request being free.
    assert 200 in statuses and 429 in statuses
    used, reserved = await quota_used(gw)
    assert reserved == 0
    assert 0 < used <= 1000


async def test_a_non_json_200_fails_over_and_counts_against_the_target(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    async with OddUpstream(200, "text/html", b"<html>502 Bad Gateway</html>") as html:
        config = make_config({"html": html.url, "good": upstream.url}, sock=sock_dir)
        gw = await start_gateway(config)
        for _ in range(4):
            status, data, headers = await post(gw, CHAT)
            assert status == 200 and headers["x-aigw-provider"] == "good"
            assert isinstance(data, dict) and data["choices"][0]["message"]["content"] == " ".join(
                WORDS
            )
        assert html.hits >= 1
        stats = target_stats(gw)
        assert stats["html/up-model"]["errors"] == html.hits
        assert stats["good/up-model"]["errors"] == 0


async def test_a_non_json_200_alone_is_a_502(start_gateway: Any, sock_dir: Path) -> None:
    async with OddUpstream(200, "text/html", b"<html>oops</html>") as html:
        gw = await start_gateway(make_config({"html": html.url}, sock=sock_dir))
        status, data, _ = await post(gw, CHAT)
        assert status == 502
        assert isinstance(data, dict) and data["error"]["code"] == "upstream_error"


async def test_an_upstream_ignoring_stream_is_replayed_as_sse(
    start_gateway: Any, sock_dir: Path
) -> None:
    answer = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "whole"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }
    async with OddUpstream(200, "application/json", json.dumps(answer).encode()) as up:
        gw = await start_gateway(make_config({"up": up.url}, sock=sock_dir))
        status, data, headers = await post(gw, {**CHAT, "stream": True})
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        assert isinstance(data, bytes)
        events = [e for e in data.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        text = "".join(
            c["delta"].get("content") or ""
            for e in events[:-1]
            for c in json.loads(e[6:])["choices"]
        )
        assert text == "whole"


async def test_upstream_429_passes_its_retry_after_and_names_the_provider(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    upstream.behaviour.status = 429
    upstream.behaviour.retry_after = "20"
    status, _, headers = await post(gw, CHAT)
    assert status == 429
    assert headers["retry-after"] == "20"
    assert headers["x-aigw-provider"] == "up" and headers["x-aigw-model"] == "up-model"


class BrokenHook(Hook):
    modifies_request = False

    async def after_response(self, ctx: RequestContext, response: ResponseInfo) -> None:
        raise KeyError("a bug in a user hook")


async def test_a_non_gateway_error_is_openai_json_and_settles_the_reservation(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        quota=QuotaConfig(default=100_000),
        hooks=(HookSpec("tests.test_pipeline_edges:BrokenHook"),),
    )
    gw = await start_gateway(config)
    status, data, _ = await post(gw, CHAT)
    assert status == 500
    assert isinstance(data, dict) and set(data["error"]) == {"message", "type", "param", "code"}
    assert "KeyError" not in json.dumps(data)
    _, reserved = await quota_used(gw)
    assert reserved == 0
    assert all(t["in_flight"] == 0 for t in target_stats(gw).values())


async def test_a_deeply_nested_body_is_a_400(
    start_gateway: Any, upstream: Upstream, sock_dir: Path
) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    async with aiohttp.ClientSession() as s:
        deep = b"[" * 200_000 + b"]" * 200_000
        async with s.post(
            gw.v1 + "/chat/completions", data=deep, headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"


async def test_an_absurd_upstream_usage_is_ignored_not_a_crash(
    start_gateway: Any, sock_dir: Path
) -> None:
    answer = (
        b'{"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": '
        b'[{"index": 0, "message": {"role": "assistant", "content": "ok"}, '
        b'"finish_reason": "stop"}], "usage": {"prompt_tokens": 1e999, '
        b'"completion_tokens": -5, "total_tokens": 3}}'
    )
    async with OddUpstream(200, "application/json", answer) as up:
        gw = await start_gateway(
            make_config({"up": up.url}, sock=sock_dir, quota=QuotaConfig(default=100_000))
        )
        status, _, _ = await post(gw, CHAT)
        assert status == 200
        used, reserved = await quota_used(gw)
        assert reserved == 0 and used > 0  # charged the worst case, never credited


async def test_routing_unknown_paths_wrong_methods_and_model_names_with_slashes(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    config = make_config({"up": upstream.url}, sock=sock_dir, model="org/gpt-test")
    gw = await start_gateway(config)
    base = gw.v1.removesuffix("/v1")
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/v1/nope") as r:
            assert r.status == 404
            body = await r.json()
            assert body["error"]["type"] == "invalid_request_error"
            assert "GET /v1/nope" in body["error"]["message"]
            assert r.headers["x-request-id"].startswith("req_")
        async with s.get(gw.v1 + "/chat/completions") as r:
            assert r.status == 405 and r.headers["Allow"] == "POST"
            assert "not allowed" in (await r.json())["error"]["message"]
        async with s.post(gw.v1 + "/models", json={}) as r:
            assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
        async with s.head(base + "/healthz") as r:
            assert r.status == 200
        async with s.get(gw.v1 + "/models/org/gpt-test") as r:
            assert r.status == 200 and (await r.json())["id"] == "org/gpt-test"
        async with s.get(gw.v1 + "/models/") as r:
            assert r.status == 404
        async with s.get(gw.v1 + "/models/org%2Fgpt-test") as r:  # an encoded id is decoded
            assert r.status == 200 and (await r.json())["id"] == "org/gpt-test"
        async with s.post(URL(base + "/v1/chat%2Fcompletions", encoded=True), json=CHAT) as r:
            assert r.status == 404  # routes match the path as sent
    assert upstream.requests == []


async def raw_exchange(port: int, head: bytes) -> tuple[bytes, asyncio.StreamReader, Any]:
    """Send a request head only; return what the gateway answers before the body is sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    try:
        early = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
    except TimeoutError:
        early = b""
    return early, reader, writer


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
async def test_expect_100_continue_gets_its_interim_answer_before_the_body(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, path: str
) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    port = int(gw.v1.rsplit(":", 1)[1].split("/")[0])
    body = json.dumps(CHAT if "chat" in path else {"model": "gpt-test", "input": "hello"}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    early, reader, writer = await raw_exchange(port, head)
    assert early == b"HTTP/1.1 100 Continue\r\n\r\n"  # at once, before any body byte
    writer.write(body)
    status = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5.0)
    assert status.startswith(b"HTTP/1.1 200")
    writer.close()
    assert len(upstream.requests) == 1


async def test_an_unknown_expectation_is_417_openai_json(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    port = int(gw.v1.rsplit(":", 1)[1].split("/")[0])
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Expect: 200-ok\r\n\r\n{}"
    )
    early, reader, writer = await raw_exchange(port, head)
    assert early.startswith(b"HTTP/1.1 417")
    length = int(early.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    error = json.loads(await reader.readexactly(length))["error"]
    assert "only 100-continue" in error["message"] and error["type"] == "invalid_request_error"
    writer.close()
    assert upstream.requests == []
