"""The request pipeline end to end, in process: real aiohttp upstreams on loopback, the official
`openai` SDK (and raw aiohttp) as the client."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from aigw.config import AuthConfig, AuthKey, HookSpec, Secret
from aigw.hooks.base import Hook, RequestContext
from tests.conftest import make_config
from tests.upstream import WORDS, Upstream

MESSAGES = [{"role": "user", "content": "hello there"}]


def sdk(gw: Any, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0, timeout=10)


async def test_chat_completion(upstream: Upstream, start_gateway: Any, sock_dir: Path) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    client = sdk(gw)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == " ".join(WORDS)
    assert completion.usage is not None and completion.usage.total_tokens == 7 + len(WORDS)
    assert raw.headers["x-aigw-provider"] == "up"
    assert raw.headers["x-aigw-model"] == "up-model"
    assert raw.headers["x-request-id"].startswith("req_")
    # the upstream got the renamed model and nothing else changed
    assert upstream.requests[-1] == {"model": "up-model", "messages": MESSAGES}
    await client.close()


@pytest.mark.parametrize("include_usage", [False, True])
async def test_streamed_chat(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, include_usage: bool
) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    client = sdk(gw)
    kwargs: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, **kwargs
    )
    text, usages = [], []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usages.append(chunk.usage)
    assert "".join(text) == " ".join(WORDS)
    if include_usage:
        assert len(usages) == 1 and usages[0].completion_tokens == len(WORDS)
    else:
        assert usages == []
    # the gateway always asks the upstream for usage
    assert upstream.requests[-1]["stream_options"] == {"include_usage": True}
    await client.close()


async def test_stream_without_usage_has_no_usage_key(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gw.v1 + "/chat/completions",
            json={"model": "gpt-test", "messages": MESSAGES, "stream": True},
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        body = await r.read()
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    for event in events[:-1]:
        data = json.loads(event[len(b"data: ") :])
        assert "usage" not in data
        assert data["choices"], "the usage-only chunk must be removed"


async def test_embeddings_float_and_base64(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    client = sdk(gw)
    floats = await client.embeddings.create(
        model="gpt-test", input=["a", "b"], encoding_format="float"
    )
    assert [d.embedding for d in floats.data] == [[0.25, 0.5, 0.75]] * 2
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    decoded = await client.embeddings.create(model="gpt-test", input="a")
    assert decoded.data[0].embedding == [0.25, 0.5, 0.75]
    assert upstream.requests[-1]["encoding_format"] == "base64"
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gw.v1 + "/embeddings",
            json={"model": "gpt-test", "input": "a", "encoding_format": "base64"},
        ) as r,
    ):
        data = await r.json()
    raw = base64.b64decode(data["data"][0]["embedding"])
    assert list(struct.unpack("<3f", raw)) == [0.25, 0.5, 0.75]
    await client.close()


async def test_models(upstream: Upstream, start_gateway: Any, sock_dir: Path) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    client = sdk(gw)
    models = [m.id async for m in client.models.list()]
    assert models == ["gpt-test"]
    model = await client.models.retrieve("gpt-test")
    assert model.id == "gpt-test"
    with pytest.raises(openai.NotFoundError) as exc:
        await client.models.retrieve("nope")
    assert exc.value.code == "model_not_found"
    await client.close()


async def test_completions(upstream: Upstream, start_gateway: Any, sock_dir: Path) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    client = sdk(gw)
    done = await client.completions.create(model="gpt-test", prompt="say it")
    assert done.choices[0].text == " ".join(WORDS)
    parts = [
        c.choices[0].text
        async for c in await client.completions.create(
            model="gpt-test", prompt="say it", stream=True
        )
        if c.choices
    ]
    assert "".join(parts) == " ".join(WORDS)
    await client.close()


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc_class"),
    [
        (400, openai.BadRequestError),
        (404, openai.NotFoundError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
async def test_upstream_error_status_passes_through(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, status: int, exc_class: type
) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    upstream.behaviour.status = status
    client = sdk(gw)
    with pytest.raises(exc_class) as exc:
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert exc.value.status_code == status
    # the upstream's OpenAI-shaped body arrives unchanged
    assert exc.value.body == {
        "message": f"upstream says {status}",
        "type": "upstream_test",
        "param": None,
        "code": f"http_{status}",
    }
    await client.close()


async def test_upstream_down_is_502(start_gateway: Any, sock_dir: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    gw = await start_gateway(make_config({"up": f"http://127.0.0.1:{port}/v1"}, sock=sock_dir))
    client = sdk(gw)
    with pytest.raises(openai.APIStatusError) as exc:
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_error"
    assert isinstance(exc.value.body, dict) and set(exc.value.body) == {
        "message",
        "type",
        "param",
        "code",
    }
    await client.close()


async def test_upstream_timeout_is_504(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    config = make_config({"up": upstream.url}, sock=sock_dir)
    provider = dataclasses.replace(config.providers["up"], timeout=0.3)
    config = dataclasses.replace(config, providers={"up": provider})
    gw = await start_gateway(config)
    upstream.behaviour.hang = True
    client = sdk(gw)
    with pytest.raises(openai.APIStatusError) as exc:
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert exc.value.status_code == 504
    assert exc.value.code == "upstream_timeout"
    await client.close()


async def test_reset_mid_stream_sends_in_band_error(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    upstream.behaviour.reset_after_chunks = 3
    client = sdk(gw)
    stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert "".join(received) == " ".join(WORDS[:3])
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "upstream_error"
    await client.close()


async def test_bad_requests(upstream: Upstream, start_gateway: Any, sock_dir: Path) -> None:
    config = make_config({"up": upstream.url}, sock=sock_dir, server={"max_body_size": 2048})
    gw = await start_gateway(config)
    url = gw.v1 + "/chat/completions"
    cases: list[tuple[bytes, int, str | None]] = [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "\xff"}]}', 400, None),
        (b"", 400, None),
        (b'{"model": "x", "messages": ' + b'"' + b"a" * 4000 + b'"}', 413, None),
        (json.dumps({"model": "gpt-test", "messages": []}).encode(), 400, "messages"),
        (
            json.dumps({"model": "gpt-test", "messages": MESSAGES, "temperature": 3}).encode(),
            400,
            "temperature",
        ),
        (json.dumps({"model": "nope", "messages": MESSAGES}).encode(), 404, "model"),
    ]
    async with aiohttp.ClientSession() as s:
        for body, status, param in cases:
            async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                assert r.status == status, body[:60]
                data = await r.json()
                assert set(data["error"]) == {"message", "type", "param", "code"}
                if param is not None:
                    assert data["error"]["param"] == param
        async with s.get(gw.url + "/v1/nothing") as r:
            assert r.status == 404
            assert "error" in await r.json()
    assert upstream.requests == []


async def test_tenant_keys(upstream: Upstream, start_gateway: Any, sock_dir: Path) -> None:
    auth = AuthConfig(keys=(AuthKey(tenant="team-a", key=Secret("sk-team-a-secret")),))
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir, auth=auth))
    good = sdk(gw, "sk-team-a-secret")
    assert (await good.chat.completions.create(model="gpt-test", messages=MESSAGES)).choices
    bad = sdk(gw, "sk-wrong")
    with pytest.raises(openai.AuthenticationError) as exc:
        await bad.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert exc.value.code == "invalid_api_key"
    assert "sk-wrong" not in str(exc.value.body)
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    await good.close()
    await bad.close()


# --- hooks ---------------------------------------------------------------------------------


class RewriteHook(Hook):
    async def before_request(self, ctx: RequestContext) -> None:
        ctx.body["model"] = "gpt-other"
        ctx.body["messages"] = [{"role": "system", "content": "be brief"}, *ctx.body["messages"]]


async def test_before_request_hook_changes_what_goes_upstream(
    upstream: Upstream, upstream2: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    from aigw.config import ModelConfig, ProviderConfig, TargetConfig

    config = make_config(
        {"up": upstream.url}, sock=sock_dir, hooks=(HookSpec("tests.test_proxy:RewriteHook"),)
    )
    providers = {**config.providers, "other": ProviderConfig(name="other", base_url=upstream2.url)}
    models = {
        **config.models,
        "gpt-other": ModelConfig(
            name="gpt-other", targets=(TargetConfig(provider="other", model="other-up"),)
        ),
    }
    gw = await start_gateway(dataclasses.replace(config, providers=providers, models=models))
    client = sdk(gw)
    await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert upstream.requests == []
    assert upstream2.requests[-1]["model"] == "other-up"
    assert upstream2.requests[-1]["messages"][0] == {"role": "system", "content": "be brief"}
    await client.close()


async def test_client_disconnect_closes_upstream(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    upstream.behaviour.words = ["word"] * 2000
    upstream.behaviour.chunk_delay = 0.01
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            gw.v1 + "/chat/completions",
            json={"model": "gpt-test", "messages": MESSAGES, "stream": True},
        )
        await resp.content.readuntil(b"\n\n")
        await resp.content.readuntil(b"\n\n")
        resp.close()  # drop the connection mid-stream
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=1.0)
    assert upstream.chunks_sent < 2000


async def test_a_tenant_key_is_taken_from_x_api_key_as_from_authorization(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    from aigw.config import AuthConfig, AuthKey, Secret

    keys = (AuthKey(tenant="team-a", key=Secret("sk-team-a")),)
    gw = await start_gateway(
        make_config({"up": upstream.url}, sock=sock_dir, auth=AuthConfig(keys))
    )
    body = {"model": "gpt-test", "messages": MESSAGES}
    async with aiohttp.ClientSession() as session:
        for headers, status in (
            ({"x-api-key": "sk-team-a"}, 200),  # Anthropic's SDKs send the key this way
            ({"Authorization": "Bearer sk-team-a"}, 200),
            ({"x-api-key": "sk-wrong"}, 401),
            ({}, 401),
        ):
            async with session.post(gw.v1 + "/chat/completions", json=body, headers=headers) as r:
                assert r.status == status, headers
