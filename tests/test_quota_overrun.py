"""An upstream that ignores max_tokens (or a request without one) cannot take a tenant past its
token quota: a stream that runs past its reservation reserves more as it goes and is cut, with an
in-band error, when the quota has no more; a whole answer that overruns is recorded in full and
the overrun counted in the metrics. Real upstream on loopback, in-process gateway, openai SDK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from aigw.config import MetricsConfig, QuotaConfig, StateConfig
from tests.conftest import RunningGateway, make_config
from tests.upstream import Upstream

MESSAGES = [{"role": "user", "content": "hello there"}]


def sdk(gw: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_stream_without_max_tokens_is_cut_when_the_quota_is_spent(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path, backend: str
) -> None:
    limit = 400
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        quota=QuotaConfig(default=limit, default_max_tokens=50, period="never"),
        state=StateConfig(backend=backend, path=str(tmp_path / "state.db")),
    )
    gw: RunningGateway = await start_gateway(config)
    upstream.behaviour.words = ["w"] * 2000  # far past the quota, and no max_tokens to hold it
    client = sdk(gw)
    seen = 0
    stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
    assert "ran out of token quota" in str(info.value)
    assert limit - 16 - 16 < seen < limit
    await client.close()
    quota = gw.gateway.limits.quota
    [status] = await quota.status("default")
    assert status.reserved == 0
    # What was delivered is recorded, and it stays within the quota.
    assert seen <= status.output_tokens and status.total_tokens <= limit
    client = sdk(gw)
    with pytest.raises(openai.RateLimitError):  # the next request finds the quota spent
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    await client.close()


async def test_a_long_stream_is_not_cut_while_the_quota_lasts(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        quota=QuotaConfig(default=100_000, default_max_tokens=50),
    )
    gw: RunningGateway = await start_gateway(config)
    upstream.behaviour.words = ["w"] * 1500  # 30 times what was reserved
    client = sdk(gw)
    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(text) == " ".join(["w"] * 1500)
    assert usage is not None and usage.completion_tokens == 1500
    await client.close()
    [status] = await gw.gateway.limits.quota.status("default")
    assert (status.reserved, status.output_tokens) == (0, 1500)


async def test_a_whole_answer_past_max_tokens_is_recorded_in_full_and_counted_as_overrun(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        quota=QuotaConfig(default=10_000),
        metrics=MetricsConfig(enabled=True),
    )
    gw: RunningGateway = await start_gateway(config)
    upstream.behaviour.ignore_max_tokens = True
    upstream.behaviour.words = ["w"] * 100
    client = sdk(gw)
    answer = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, max_tokens=5)
    assert answer.usage is not None and answer.usage.completion_tokens == 100
    await client.close()
    quota = gw.gateway.limits.quota
    [status] = await quota.status("default")
    assert status.total_tokens == answer.usage.total_tokens  # in full, not the reservation
    held = quota.estimate_tokens("chat/completions", {"messages": MESSAGES, "max_tokens": 5})
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as r:
        metrics = await r.text()
    overrun = (
        f'aigw_quota_overrun_tokens_total{{tenant="default"}} {float(status.total_tokens - held)}'
    )
    assert overrun in metrics, metrics


async def test_an_unlimited_tenant_is_never_cut_nor_counted_as_overrun(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        quota=QuotaConfig(default=0, default_max_tokens=10),
        metrics=MetricsConfig(enabled=True),
    )
    gw: RunningGateway = await start_gateway(config)
    upstream.behaviour.words = ["w"] * 500
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gw.v1 + "/chat/completions",
            json={"model": "gpt-test", "messages": MESSAGES, "stream": True},
        ) as r,
    ):
        body = await r.read()
    assert body.count(b'"content":"') == 501 and b"error" not in body
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as r:
        assert "aigw_quota_overrun_tokens_total{" not in await r.text()
    _ = json
