"""`POST /v1/responses` through the real gateway: the official `openai` SDK as the client, real
upstreams on 127.0.0.1 (`tests.dialect_upstream`: one script answering chat completions, as a
chat-only target, and the Responses API natively, as OpenAI does).

- translated: a chat-only target; the SDK's `responses.create`, `.stream` and `.parse` with
  text, parallel function calls, structured output and images, field by field equal to the same
  request answered natively (ids and timestamps excepted, by name);
- native: a target whose `apis` list `responses` gets the client's bytes (only the model
  renamed) and its answer reaches the client byte for byte; the stateful parameters pass there
  and are refused (400 naming them) on translation;
- failover before the first byte in both modes, a break after it as an in-band failure the SDK
  raises on, with what was delivered charged to the quota;
- the rest of the pipeline: quota, metrics, audit, the response cache, and OpenAI-shaped errors.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pydantic
import pytest

from aigw.config import (
    CacheConfig,
    Config,
    ModelConfig,
    ProviderConfig,
    QuotaConfig,
    TargetConfig,
)
from aigw.dialects import responses
from tests.conftest import RunningGateway, make_config
from tests.dialect_upstream import DialectUpstream
from tests.responses_shapes import chat_answer, strict_events, strict_response

USAGE = {
    "prompt_tokens": 50,
    "completion_tokens": 20,
    "total_tokens": 70,
    "prompt_tokens_details": {"cached_tokens": 30},
    "completion_tokens_details": {"reasoning_tokens": 8},
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
CHAT_ONLY = ("chat",)
NATIVE = ("chat", "responses")


def script(chat: dict[str, Any]) -> dict[str, Any]:
    """The upstream's model: says back what it was asked (images as their URLs' heads), calls
    the weather tool twice in parallel when it has it, answers structured output in shape."""
    fmt = chat.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return chat_answer(content=json.dumps({"city": "Paris", "celsius": 18}), usage=USAGE)
    last = chat["messages"][-1]
    if chat.get("tools") and last["role"] == "user":
        return chat_answer(
            content=None,
            tool_calls=[("call_a", "get_weather", '{"city":"Paris"}'),
                        ("call_b", "get_weather", '{"city":"Rome"}')],
            finish="tool_calls",
            usage=USAGE,
        )  # fmt: skip
    content = last["content"]
    if isinstance(content, list):
        said = " ".join(
            p["text"] if p["type"] == "text" else f"[image {p['image_url']['url'][:22]}]"
            for p in content
        )
    else:
        said = content
    if last["role"] == "tool":
        said = f"tool said {said}"
    return chat_answer(content=f"You said: {said}", usage=USAGE)


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Awaitable[DialectUpstream]]]:
    started: list[DialectUpstream] = []

    async def start(**options: Any) -> DialectUpstream:
        up = await DialectUpstream(script, **options).start()
        started.append(up)
        return up

    yield start
    for up in started:
        await up.stop()


def config(
    sock: Path,
    targets: list[tuple[DialectUpstream, tuple[str, ...]]],
    *,
    weights: tuple[int, ...] = (),
    upstream_model: str = "up-model",
    **sections: Any,
) -> Config:
    """One model, `gpt-test`, over the given upstreams (each with the APIs it speaks), with a
    token quota unless one is given."""
    sections.setdefault("quota", QuotaConfig(default=1_000_000))
    base = make_config({}, sock=sock, **sections)
    providers = {
        f"up{i}": ProviderConfig(
            name=f"up{i}",
            type="openai",
            base_url=up.url,
            apis=apis,
            timeout=5.0,
            connect_timeout=2.0,
        )
        for i, (up, apis) in enumerate(targets)
    }
    model = ModelConfig(
        name="gpt-test",
        targets=tuple(
            TargetConfig(provider=name, model=upstream_model, weight=(weights or (1,) * 99)[i])
            for i, name in enumerate(providers)
        ),
    )
    return dataclasses.replace(base, providers=providers, models={"gpt-test": model})


def sdk(gw: RunningGateway, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0, timeout=10)


async def quota_used(gw: RunningGateway, tenant: str = "default") -> tuple[int, int, int]:
    quota = gw.gateway.limits.quota
    [status] = await quota.status(tenant)
    return status.input_tokens, status.output_tokens, status.total_tokens


# --- translated: a chat-only target --------------------------------------------------------


async def test_create_text_through_a_chat_only_upstream(
    upstreams: Any, start_gateway: Any, sock_dir: Path
) -> None:
    up = await upstreams()
    gw = await start_gateway(config(sock_dir, [(up, CHAT_ONLY)]))
    async with sdk(gw) as client:
        raw = await client.responses.with_raw_response.create(
            model="gpt-test", instructions="Be brief.", input="hello gateway", temperature=0.5
        )
    response = raw.parse()
    strict_response(json.loads(raw.content))
    assert response.output_text == "You said: hello gateway"
    assert response.status == "completed" and response.model == "gpt-test"
    assert response.temperature == 0.5 and response.instructions == "Be brief."
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (50, 20)
    assert response.usage.input_tokens_details.cached_tokens == 30
    assert response.usage.output_tokens_details.reasoning_tokens == 8
    assert raw.headers["x-aigw-provider"] == "up0" and raw.headers["x-request-id"]
    [chat] = up.bodies("chat/completions")
    assert chat["model"] == "up-model"
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello gateway"},
    ]
    assert chat["temperature"] == 0.5 and "stream" not in chat
    assert await quota_used(gw) == (50, 20, 70)


async def test_parallel_function_calls_and_their_results(
    upstreams: Any, start_gateway: Any, sock_dir: Path
) -> None:
    up = await upstreams()
    gw = await start_gateway(config(sock_dir, [(up, CHAT_ONLY)]))
    async with sdk(gw) as client:
        first = await client.responses.create(
            model="gpt-test", input="weather in Paris and Rome?", tools=[WEATHER]
        )
        calls = [o for o in first.output if o.type == "function_call"]
        assert [(c.call_id, c.name, json.loads(c.arguments), c.status) for c in calls] == [
            ("call_a", "get_weather", {"city": "Paris"}, "completed"),
            ("call_b", "get_weather", {"city": "Rome"}, "completed"),
        ]
        second = await client.responses.create(
            model="gpt-test",
            tools=[WEATHER],
            input=[
                {"role": "user", "content": "weather in Paris and Rome?"},
                *[c.model_dump(exclude_none=True) for c in calls],
                {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
                {"type": "function_call_output", "call_id": "call_b", "output": "21C"},
            ],
        )
    assert second.output_text == "You said: tool said 21C"
    asked, answered = up.bodies("chat/completions")
    assert asked["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        }
    ]
    assert [m["role"] for m in answered["messages"]] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in answered["messages"][1]["tool_calls"]] == ["call_a", "call_b"]
    assert await quota_used(gw) == (100, 40, 140)


class Weather(pydantic.BaseModel):
    city: str
    celsius: int


async def test_parse_structured_output(upstreams: Any, start_gateway: Any, sock_dir: Path) -> None:
    up = await upstreams()
    gw = await start_gateway(config(sock_dir, [(up, CHAT_ONLY)]))
    async with sdk(gw) as client:
        response = await client.responses.parse(
            model="gpt-test", input="weather as JSON", text_format=Weather
        )
    assert response.output_parsed == Weather(city="Paris", celsius=18)
    [chat] = up.bodies("chat/completions")
    fmt = chat["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["name"] == "Weather"
    assert set(fmt["json_schema"]["schema"]["properties"]) == {"city", "celsius"}
    assert response.text.format.type == "json_schema"  # echoed as asked
    async with (
        sdk(gw) as client,
        client.responses.stream(
            model="gpt-test", input="weather as JSON", text_format=Weather
        ) as stream,
    ):
        streamed = await stream.get_final_response()
    assert streamed.output_parsed == Weather(city="Paris", celsius=18)


async def test_image_input(upstreams: Any, start_gateway: Any, sock_dir: Path) -> None:
    up = await upstreams()
    gw = await start_gateway(config(sock_dir, [(up, CHAT_ONLY)]))
    async with sdk(gw) as client:
        response = await client.responses.create(
            model="gpt-test",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": PNG, "detail": "low"},
                    ],
                }
            ],
        )
    assert response.output_text == "You said: what is this? [image data:image/png;base64,]"
    [chat] = up.bodies("chat/completions")
    assert chat["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": PNG, "detail": "low"},
    }


async def test_stream_text_and_parallel_function_calls(
    upstreams: Any, start_gateway: Any, sock_dir: Path
) -> None:
    up = await upstreams()
    gw = await start_gateway(config(sock_dir, [(up, CHAT_ONLY)]))
    async with sdk(gw) as client:
        async with client.responses.stream(model="gpt-test", input="one two three") as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            text = await stream.get_final_response()
        async with client.responses.stream(
            model="gpt-test", input="weather?", tools=[WEATHER]
        ) as stream:
            done = [e.arguments async for e in stream
                    if e.type == "response.function_call_arguments.done"]  # fmt: skip
            tools = await stream.get_final_response()
    assert "".join(deltas) == "You said: one two three" == text.output_text
    assert len(deltas) == 5  # word by word, as the upstream streamed it
    assert text.usage is not None and text.usage.total_tokens == 70
    assert done == ['{"city":"Paris"}', '{"city":"Rome"}']
    calls = [(o.call_id, o.name, o.arguments) for o in tools.output if o.type == "function_call"]
    assert calls == [
        ("call_a", "get_weather", '{"city":"Paris"}'),
        ("call_b", "get_weather", '{"city":"Rome"}'),
    ]
    for chat in up.bodies("chat/completions"):
        assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert await quota_used(gw) == (100, 40, 140)


async def test_a_chat_upstream_that_ignores_stream_is_still_a_stream(
    upstreams: Any, start_gateway: Any, sock_dir: Path
) -> None:
    up = await upstreams(ignore_stream=True)
    gw = await start_gateway(config(sock_dir, [(up, CHAT_ONLY)]))
    async with (
        sdk(gw) as client,
        client.responses.with_streaming_response.create(
            model="gpt-test", input="one two", stream=True
        ) as streamed,
    ):
        body = await streamed.read()
    events = strict_events(body)
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "You said: one two"
    assert await quota_used(gw) == (50, 20, 70)


# --- translated equals native, field by field ----------------------------------------------

#: Requests of every kind the issue names; each is sent to both routes.
REQUESTS: dict[str, dict[str, Any]] = {
    "text": {"instructions": "Be brief.", "input": "hello there", "temperature": 0.2},
    "tools": {"input": "weather in Paris and Rome?", "tools": [WEATHER]},
    "structured": {
        "input": "weather as JSON",
        "text": {
            "format": {
                "type": "json_schema",
                "name": "Weather",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}},
                    "required": ["city", "celsius"],
                    "additionalProperties": False,
                },
            }
        },
    },
    "image": {
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": PNG, "detail": "high"},
                ],
            }
        ],
        "metadata": {"ticket": "42"},
    },
}

#: The fields that must differ between two answers to one request: unique per answer.
UNIQUE_IDS = ("id", "item_id")
TIMESTAMPS = ("created_at",)


def without_unique_parts(value: Any) -> Any:
    """`value` with every id cut to its kind (`resp_...` -> `resp`, `msg_...` -> `msg`) and every
    timestamp blanked: what is left must be equal between two answers to one request."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in UNIQUE_IDS and isinstance(item, str):
                out[key] = item.split("_", 1)[0]
            elif key in TIMESTAMPS and isinstance(item, int):
                out[key] = "<timestamp>"
            else:
                out[key] = without_unique_parts(item)
        return out
    if isinstance(value, list):
        return [without_unique_parts(v) for v in value]
    return value


async def answer_of(client: openai.AsyncOpenAI, request: dict[str, Any], stream: bool) -> Any:
    """The answer's JSON as the SDK received it: the response object, or every event."""
    if not stream:
        raw = await client.responses.with_raw_response.create(model="gpt-test", **request)
        strict_response(json.loads(raw.content))
        return json.loads(raw.content)
    async with client.responses.with_streaming_response.create(
        model="gpt-test", stream=True, **request
    ) as streamed:
        body = await streamed.read()
    return [json.loads(e.data) for e in strict_events_raw(body)]


def strict_events_raw(body: bytes) -> list[Any]:
    from aigw import sse

    strict_events(body)  # every event valid for the SDK's types, numbered 0, 1, 2, ...
    return list(sse.events(body))


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("kind", list(REQUESTS))
async def test_translated_answers_equal_native_ones_field_by_field(
    upstreams: Any, start_gateway: Any, sock_dir: Path, kind: str, stream: bool
) -> None:
    chat_up, native_up = await upstreams(), await upstreams()
    # No model rename: the native answer names the model it was sent, as the translated does.
    translated = await start_gateway(
        config(sock_dir / "t", [(chat_up, CHAT_ONLY)], upstream_model="gpt-test")
    )
    native = await start_gateway(
        config(sock_dir / "n", [(native_up, NATIVE)], upstream_model="gpt-test")
    )
    request = REQUESTS[kind]
    direct = openai.AsyncOpenAI(base_url=native_up.url, api_key="k", max_retries=0, timeout=10)
    async with sdk(translated) as via_chat, sdk(native) as via_native, direct:
        got = await answer_of(via_chat, request, stream)
        expected = await answer_of(direct, request, stream)
        passed = await answer_of(via_native, request, stream)
    assert chat_up.bodies("responses") == [] and len(chat_up.bodies("chat/completions")) == 1
    assert len(native_up.bodies("responses")) == 2
    assert without_unique_parts(got) == without_unique_parts(expected)
    assert without_unique_parts(passed) == without_unique_parts(expected)


# --- native: a target that speaks the Responses API ----------------------------------------


async def post_raw(url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": "application/json"}) as r,
    ):
        return r.status, dict(r.headers), await r.read()


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_native_pass_through_is_byte_for_byte_but_the_model(
    upstreams: Any, start_gateway: Any, sock_dir: Path, stream: bool
) -> None:
    renamed, same = await upstreams(), await upstreams()
    gw = await start_gateway(config(sock_dir / "r", [(renamed, NATIVE)]))
    gw_same = await start_gateway(
        config(sock_dir / "s", [(same, NATIVE)], upstream_model="gpt-test")
    )
    # Spacing, key order and escapes no serializer of ours would write.
    sent = (
        b'{ "input" : [{"role":"user","content":"caf\\u00e9 \xc3\xa9"}],\n  "model":"gpt-test",'
        b' "temperature":0.25, "stream": ' + (b"true" if stream else b"false") + b', "top_p": 1.0}'
    )
    status, headers, got = await post_raw(gw.v1 + "/responses", sent)
    assert status == 200
    [received] = renamed.received
    assert received.body == {**json.loads(sent), "model": "up-model"}  # only the model renamed
    assert got == renamed.sent[0]  # the answer as the upstream sent it, byte for byte
    assert headers["Content-Type"].startswith("text/event-stream" if stream else "application/")
    assert json.loads(got if not stream else got.split(b"data: ", 1)[1].split(b"\n")[0])

    status, _, got = await post_raw(gw_same.v1 + "/responses", sent)
    assert status == 200
    assert same.received[0].raw == sent  # nothing to rename: the client's very bytes
    assert got == same.sent[0]

    # The SDK's own request and answer too.
    async with (
        sdk(gw) as client,
        client.responses.with_streaming_response.create(
            model="gpt-test", input="hi there", stream=stream, tools=[WEATHER]
        ) as answer,
    ):
        body = await answer.read()
    assert body == renamed.sent[1]
    assert renamed.received[1].body["tools"] == [WEATHER]
    if stream:
        events = strict_events(body)
        assert events[-1].type == "response.completed" and events[-1].response.model == "up-model"
    else:
        assert strict_response(json.loads(body)).model == "up-model"


STATEFUL_VALUES: dict[str, Any] = {
    "previous_response_id": "resp_earlier",
    "store": True,
    "background": True,
    "conversation": "conv_123",
}


@pytest.mark.parametrize("name", list(responses.STATEFUL))
async def test_stateful_parameters_pass_natively_and_are_refused_translated(
    upstreams: Any, start_gateway: Any, sock_dir: Path, name: str
) -> None:
    native_up, chat_up = await upstreams(), await upstreams()
    native = await start_gateway(config(sock_dir / "n", [(native_up, NATIVE)]))
    translated = await start_gateway(config(sock_dir / "t", [(chat_up, CHAT_ONLY)]))
    value = STATEFUL_VALUES[name]
    async with sdk(native) as client:
        response = await client.responses.create(model="gpt-test", input="hi", **{name: value})
    assert response.output_text == "You said: hi"
    assert native_up.bodies("responses")[0][name] == value
    async with sdk(translated) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="gpt-test", input="hi", **{name: value})
        with pytest.raises(openai.BadRequestError) as streamed:
            await client.responses.create(
                model="gpt-test", input="hi", stream=True, **{name: value}
            )
    for err in (info.value, streamed.value):
        assert err.status_code == 400 and err.param == name and name in err.message
        assert err.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert chat_up.received == []
    assert await quota_used(translated) == (0, 0, 0)


async def test_a_stateful_request_skips_chat_only_targets_and_the_cache(
    upstreams: Any, start_gateway: Any, sock_dir: Path
) -> None:
    chat_up, native_up = await upstreams(), await upstreams()
    gw = await start_gateway(
        config(
            sock_dir,
            [(chat_up, CHAT_ONLY), (native_up, NATIVE)],
            weights=(100, 1),  # the chat-only target is the balancer's choice
            cache=CacheConfig(enabled=True),
        )
    )
    async with sdk(gw) as client:
        first = await client.responses.with_raw_response.create(model="gpt-test", input="hi")
        again = await client.responses.with_raw_response.create(model="gpt-test", input="hi")
        stateful = await client.responses.with_raw_response.create(
            model="gpt-test", input="hi", previous_response_id="resp_earlier"
        )
    assert (first.headers["x-aigw-cache"], again.headers["x-aigw-cache"]) == ("miss", "hit")
    assert "x-aigw-cache" not in stateful.headers  # its answer depends on state the cache lacks
    assert stateful.headers["x-aigw-provider"] == "up1"
    assert stateful.parse().id.startswith("resp_up")
    assert len(chat_up.received) == 1
    assert native_up.bodies("responses")[0]["previous_response_id"] == "resp_earlier"


# --- failures: before the first byte, and after it -----------------------------------------

MODES = {"translated": CHAT_ONLY, "native": NATIVE}


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("failure", ["status", "reset", "headers"])
@pytest.mark.parametrize("mode", list(MODES))
async def test_a_failing_first_target_fails_over_before_the_first_byte(
    upstreams: Any, start_gateway: Any, sock_dir: Path, mode: str, failure: str, stream: bool
) -> None:
    if failure == "status":
        bad = await upstreams(fail_status=503)
    elif failure == "reset":
        bad = await upstreams(reset=True)
    elif stream:  # the stream's headers, then the connection reset: nothing reached the client
        bad = await upstreams(break_after=0)
    else:
        pytest.skip("a whole answer has no headers-only state")
    good = await upstreams()
    apis = MODES[mode]
    gw = await start_gateway(config(sock_dir, [(bad, apis), (good, apis)], weights=(100, 1)))
    async with sdk(gw) as client:
        for _ in range(2):
            if stream:
                async with client.responses.stream(model="gpt-test", input="one two") as events:
                    kinds = [e.type async for e in events]
                    final = await events.get_final_response()
                assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
                assert kinds.count("response.created") == 1
            else:
                final = await client.responses.create(model="gpt-test", input="one two")
            assert final.output_text == "You said: one two"
    path = "chat/completions" if mode == "translated" else "responses"
    assert len(bad.bodies(path)) == 2  # each request tried the bad target first
    assert len(good.bodies(path)) == 2
    # Only what was answered is charged.
    assert await quota_used(gw) == (100, 40, 140)


@pytest.mark.parametrize("mode", list(MODES))
async def test_a_break_after_the_first_byte_is_an_event_the_sdk_raises_on(
    upstreams: Any, start_gateway: Any, sock_dir: Path, mode: str
) -> None:
    # Translated: the role chunk and three words; native: created, in_progress, the item and
    # its part, three words.
    up = await upstreams(break_after=4 if mode == "translated" else 7)
    spare = await upstreams()  # never used: the answer had begun
    gw = await start_gateway(
        config(sock_dir, [(up, MODES[mode]), (spare, MODES[mode])], weights=(100, 1))
    )
    seen: list[Any] = []
    async with sdk(gw) as client:
        stream = await client.responses.create(
            model="gpt-test", input="one two three four", stream=True
        )
        with pytest.raises(openai.APIError) as info:
            async for event in stream:
                seen.append(event)
    assert "closed the stream" in info.value.message or "broke" in info.value.message
    deltas = [e.delta for e in seen if e.type == "response.output_text.delta"]
    assert deltas == ["You ", "said: ", "one "]
    if mode == "translated":  # the gateway knows the output so far: the failed response
        assert seen[-1].type == "response.failed"
        assert seen[-1].response.status == "failed" and seen[-1].response.error is not None
        assert seen[-1].response.output_text == "You said: one "
    else:  # the upstream's own events, then the gateway's in-band `error` event
        assert seen[-1].type == "response.output_text.delta"
    assert spare.received == []
    prompt, completion, total = await quota_used(gw)
    assert completion == 3  # the tokens delivered
    assert prompt > 0 and total == prompt + completion


# --- the rest of the pipeline: metrics, audit, cache, errors -------------------------------


async def scrape(gw: RunningGateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
        text = await r.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_responses_requests(
    upstreams: Any, start_gateway: Any, sock_dir: Path
) -> None:
    chat_up, native_up = await upstreams(), await upstreams()
    gw = await start_gateway(config(sock_dir, [(chat_up, CHAT_ONLY)]))
    native = await start_gateway(config(sock_dir / "n", [(native_up, NATIVE)]))
    for running in (gw, native):
        async with sdk(running) as client:
            await client.responses.create(model="gpt-test", input="a")
            async with client.responses.stream(model="gpt-test", input="b") as stream:
                await stream.get_final_response()
            with pytest.raises(openai.BadRequestError):
                await client.responses.create(model="gpt-test", input=5)  # type: ignore[arg-type]
    for running, target in ((gw, "up0/up-model"), (native, "up0/up-model")):
        samples = await scrape(running)

        def value(name: str, **labels: str) -> float:
            return samples.get((name, frozenset(labels.items())), 0.0)  # noqa: B023

        assert (
            value(
                "aigw_requests_total",
                model="gpt-test",
                target=target,
                status="200",
                endpoint="responses",
            )
            == 2
        )
        # A body the translation refuses still counts under its model.
        assert (
            value(
                "aigw_requests_total",
                model="gpt-test",
                target="",
                status="400",
                endpoint="responses",
            )
            == 1
        )
        assert value("aigw_rejections_total", reason="invalid") == 1
        assert value("aigw_tokens_total", tenant="default", model="gpt-test", kind="prompt") == 100
        assert (
            value("aigw_tokens_total", tenant="default", model="gpt-test", kind="completion") == 40
        )
        assert value("aigw_time_to_first_token_seconds_count", model="gpt-test") == 1
        assert value("aigw_request_duration_seconds_count", model="gpt-test") == 3


async def test_an_audit_line_per_responses_request(
    upstreams: Any, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    from aigw.config import HookSpec

    chat_up, native_up = await upstreams(), await upstreams()
    path = tmp_path / "audit.jsonl"
    hooks = (HookSpec("audit", {"path": str(path), "log_bodies": True, "redact_pii": False}),)
    gw = await start_gateway(
        config(sock_dir, [(chat_up, CHAT_ONLY), (native_up, NATIVE)], weights=(100, 1), hooks=hooks)
    )
    ids = []
    async with sdk(gw) as client:
        raw = await client.responses.with_raw_response.create(model="gpt-test", input="one two")
        ids.append(raw.headers["x-request-id"])
        async with client.responses.with_streaming_response.create(
            model="gpt-test", input="three four", stream=True
        ) as streamed:
            await streamed.read()
            ids.append(streamed.headers["x-request-id"])
        raw = await client.responses.with_raw_response.create(
            model="gpt-test", input="five", store=True
        )  # stateful: answered natively
        ids.append(raw.headers["x-request-id"])
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(
                model="gpt-test", input=[{"role": "robot", "content": "x"}]
            )  # type: ignore[list-item]
        ids.append(info.value.response.headers["x-request-id"])
    await gw.gateway.stop()  # flushes the audit file
    lines = {line["request_id"]: line for line in map(json.loads, path.read_text().splitlines())}
    assert list(lines) == ids
    create, stream, stateful, refused = (lines[i] for i in ids)
    for line in (create, stream, stateful):
        assert line["status"] == 200 and line["model"] == "gpt-test" and line["tenant"] == "default"
        assert (line["prompt_tokens"], line["completion_tokens"]) == (50, 20)
    assert (create["target"], stream["target"], stateful["target"]) == (
        "up0/up-model",
        "up0/up-model",
        "up1/up-model",
    )
    assert (create["stream"], stream["stream"]) == (False, True)
    assert create["prompt"] == "one two" and create["answer"] == "You said: one two"
    assert stream["prompt"] == "three four" and stream["answer"] == "You said: three four"
    assert stateful["prompt"] == "five"
    assert refused["status"] == 400 and "input[0].role" in refused["error"]
    assert refused["model"] == "gpt-test"


async def cached(client: openai.AsyncOpenAI, text: str, stream: bool) -> tuple[str, Any]:
    """(x-aigw-cache, the response) of one request, checked against the SDK's types."""
    if not stream:
        raw = await client.responses.with_raw_response.create(model="gpt-test", input=text)
        strict_response(json.loads(raw.content))
        return raw.headers["x-aigw-cache"], raw.parse()
    async with client.responses.with_streaming_response.create(
        model="gpt-test", input=text, stream=True
    ) as streamed:
        body = await streamed.read()
    events = strict_events(body)
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text
    return streamed.headers["x-aigw-cache"], events[-1].response


async def test_the_cache_answers_a_translated_request_in_its_shape(
    upstreams: Any, start_gateway: Any, sock_dir: Path
) -> None:
    up = await upstreams()
    gw = await start_gateway(config(sock_dir, [(up, CHAT_ONLY)], cache=CacheConfig(enabled=True)))
    async with sdk(gw) as client:
        whole = [await cached(client, "cache me", stream) for stream in (False, False, True)]
        streamed = [await cached(client, "stream me", stream) for stream in (True, True, False)]
    for answers, text in ((whole, "cache me"), (streamed, "stream me")):
        assert [cache for cache, _ in answers] == ["miss", "hit", "hit"]
        first, *hits = (response for _, response in answers)
        assert first.output_text == f"You said: {text}"
        for hit in hits:  # a new response, rendered from the cached answer
            assert hit.id != first.id and hit.usage == first.usage
            assert without_unique_parts(hit.model_dump()) == without_unique_parts(
                first.model_dump()
            )
    assert len(up.received) == 2  # the hits never reached the upstream
    assert await quota_used(gw) == (100, 40, 140)  # and cost no tokens


def openai_error(err: openai.APIStatusError) -> dict[str, Any]:
    body = err.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


async def test_errors_are_openai_shaped_with_the_right_status(
    upstreams: Any, start_gateway: Any, sock_dir: Path
) -> None:
    from aigw.config import AuthConfig, AuthKey, RateLimitConfig, RateLimitRule, Secret

    up = await upstreams()
    gw = await start_gateway(
        config(
            sock_dir,
            [(up, CHAT_ONLY)],
            auth=AuthConfig(
                keys=(
                    AuthKey(tenant="team", key=Secret("sk-team-key")),
                    AuthKey(tenant="slow", key=Secret("sk-slow-key")),
                )
            ),
            rate_limit=RateLimitConfig(
                tenants={"slow": RateLimitRule(requests_per_second=0.001, burst=1)}
            ),
        )
    )
    for stream in (False, True):
        async with sdk(gw, "sk-wrong") as client:
            with pytest.raises(openai.AuthenticationError) as auth:
                await client.responses.create(model="gpt-test", input="hi", stream=stream)
        assert openai_error(auth.value)["code"] == "invalid_api_key"
        async with sdk(gw, "sk-team-key") as client:
            with pytest.raises(openai.NotFoundError) as missing:
                await client.responses.create(model="gpt-nope", input="hi", stream=stream)
            assert openai_error(missing.value) == {
                "message": "The model 'gpt-nope' does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
            for bad, param in (
                ({"input": 5}, "input"),
                ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
                ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
                 "input[0].content[0].image_url"),
                ({"input": "x", "max_output_tokens": "ten"}, "max_output_tokens"),
                ({"input": "x", "extra_body": {"max_tokens": 10}}, "max_tokens"),
            ):  # fmt: skip
                with pytest.raises(openai.BadRequestError) as malformed:
                    await client.responses.create(model="gpt-test", stream=stream, **bad)  # type: ignore[call-overload]
                error = openai_error(malformed.value)
                assert error["param"] == param and error["type"] == "invalid_request_error"
                assert param.split("[")[0] in error["message"]
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gw.v1 + "/responses",
            data=b'{"model": "gpt-test", "input": ',
            headers={"Authorization": "Bearer sk-team-key"},
        ) as r,
    ):
        assert r.status == 400
        assert (await r.json())["error"]["type"] == "invalid_request_error"
    async with sdk(gw, "sk-slow-key") as client:
        await client.responses.create(model="gpt-test", input="hi")
        with pytest.raises(openai.RateLimitError) as limited:
            await client.responses.create(model="gpt-test", input="hi")
    assert float(limited.value.response.headers["retry-after"]) > 0
    assert openai_error(limited.value)["code"] == "rate_limit_exceeded"
    assert len(up.received) == 1  # only the good request reached it
