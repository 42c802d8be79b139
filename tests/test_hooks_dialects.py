"""The answer-reading hooks (content filter with `check_answers`, audit with `log_bodies`) read
every dialect's answers: a native Responses or Messages target's answer is not translated, so the
hooks must read its own shape, whole and streamed; and the pass-through endpoints' prompts are
checked by the content filter like a chat message."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from aigw.config import HookSpec, ModelConfig, ProviderConfig, Secret, TargetConfig
from aigw.hooks.texts import answer_texts, request_texts, stream_texts
from tests.anthropic_upstream import KEY, AnthropicUpstream, text_message
from tests.conftest import RunningGateway, make_config
from tests.dialect_upstream import DialectUpstream
from tests.responses_shapes import chat_answer

# --- the readings, shape by shape -------------------------------------------------------------


def test_a_responses_answer_is_read_item_by_item() -> None:
    body = {
        "object": "response",
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thought"}]},
            {
                "type": "message",
                "content": [
                    {"type": "output_text", "text": "Hello"},
                    {"type": "refusal", "refusal": "no"},
                ],
            },
            {"type": "function_call", "name": "f", "arguments": '{"a":1}', "call_id": "c"},
        ],
    }
    assert answer_texts(json.dumps(body).encode()) == ["thought", "Hello", "no", '{"a":1}']


def test_a_messages_answer_is_read_block_by_block() -> None:
    body = {
        "type": "message",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Hi"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"city": "Paris"}},
        ],
    }
    assert answer_texts(json.dumps(body).encode()) == ["hmm", "Hi", '{"city":"Paris"}']


@pytest.mark.parametrize(
    ("event", "text"),
    [
        ({"choices": [{"delta": {"content": "a"}}]}, ["a"]),
        ({"choices": [{"delta": {"tool_calls": [{"function": {"arguments": "{"}}]}}]}, ["{"]),
        ({"choices": [{"text": "t"}]}, ["t"]),
        ({"type": "response.output_text.delta", "delta": "b"}, ["b"]),
        ({"type": "response.function_call_arguments.delta", "delta": '{"x'}, ['{"x']),
        ({"type": "response.output_text.done", "text": "whole"}, []),  # not counted twice
        ({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "c"}}, ["c"]),
        ({"type": "content_block_delta", "delta": {"partial_json": '{"y'}}, ['{"y']),
        ({"type": "content_block_delta", "delta": {"thinking": "th"}}, ["th"]),
        ({"type": "content_block_delta", "delta": {"signature": "sig"}}, []),
        ({"type": "message_delta", "usage": {"output_tokens": 3}}, []),
    ],
)
def test_stream_events_of_every_dialect(event: dict[str, Any], text: list[str]) -> None:
    out: list[str] = []
    stream_texts(event, out)
    assert out == text


@pytest.mark.parametrize(
    ("endpoint", "body", "texts"),
    [
        ("images/generations", {"prompt": "a red fox", "model": "m"}, ["a red fox"]),
        ("audio/speech", {"input": "say this", "instructions": "calmly"}, ["say this", "calmly"]),
        ("audio/transcriptions", {"prompt": "names: Ada", "file": "<file>"}, ["names: Ada"]),
        ("moderations", {"input": ["one", "two"]}, ["one", "two"]),
        ("embeddings", {"input": [[1, 2, 3]]}, []),
    ],
)
def test_pass_through_prompts(endpoint: str, body: dict[str, Any], texts: list[str]) -> None:
    assert request_texts(endpoint, body) == texts


# --- end to end: native answers through the hooks -----------------------------------------------


def answer(chat: dict[str, Any]) -> dict[str, Any]:
    said = chat["messages"][-1]["content"]
    if said == "leak":  # an answer with a word the prompt does not have
        return chat_answer(content="the forbidden word")
    return chat_answer(content=f"You said: {said}")


@pytest.fixture
async def responses_up() -> AsyncIterator[DialectUpstream]:
    up = await DialectUpstream(answer).start()
    yield up
    await up.stop()


def native_responses_config(up: DialectUpstream, sock: Path, hooks: tuple[HookSpec, ...]) -> Any:
    base = make_config({}, sock=sock, hooks=hooks)
    provider = ProviderConfig(
        name="up", type="openai", base_url=up.url, apis=("responses",), timeout=5.0
    )
    model = ModelConfig(name="gpt-test", targets=(TargetConfig(provider="up", model="up-model"),))
    return dataclasses.replace(base, providers={"up": provider}, models={"gpt-test": model})


def audit_hooks(path: Path) -> tuple[HookSpec, ...]:
    return (HookSpec("audit", {"path": str(path), "log_bodies": True, "redact_pii": False}),)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_the_audit_log_has_the_text_of_native_responses_answers(
    responses_up: DialectUpstream, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    gw: RunningGateway = await start_gateway(
        native_responses_config(responses_up, sock_dir, audit_hooks(path))
    )
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0) as client:
        await client.responses.create(model="gpt-test", input="whole")
        async with client.responses.stream(model="gpt-test", input="streamed") as stream:
            await stream.get_final_response()
    await gw.gateway.stop()  # flushes the audit file
    assert [r.path for r in responses_up.received] == ["responses", "responses"]  # native both
    whole, streamed = audit_lines(path)
    assert (whole["dialect"], whole["answer"]) == ("responses", "You said: whole")
    assert (streamed["dialect"], streamed["answer"]) == ("responses", "You said: streamed")


async def test_the_content_filter_blocks_a_native_responses_answer(
    responses_up: DialectUpstream, start_gateway: Any, sock_dir: Path
) -> None:
    hooks = (HookSpec("content_filter", {"deny": ["forbidden"], "check_answers": True}),)
    gw: RunningGateway = await start_gateway(native_responses_config(responses_up, sock_dir, hooks))
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="gpt-test", input="leak")
        assert info.value.code == "content_filtered"
        assert "Answer blocked" in info.value.message
        ok = await client.responses.create(model="gpt-test", input="say fine")
        assert ok.output_text == "You said: say fine"


@pytest.fixture
async def anthropic_up() -> AsyncIterator[AnthropicUpstream]:
    up = await AnthropicUpstream().start()
    yield up
    await up.stop()


async def test_the_audit_log_has_the_text_of_native_messages_answers(
    anthropic_up: AnthropicUpstream,
    start_gateway: Any,
    sock_dir: Path,
    tmp_path: Path,
) -> None:
    anthropic_up.reply.body = json.dumps(text_message("Claude here.")).encode()
    path = tmp_path / "audit.jsonl"
    base = make_config({}, sock=sock_dir, hooks=audit_hooks(path))
    provider = ProviderConfig(
        name="claude",
        type="anthropic",
        base_url=anthropic_up.url,
        api_key=Secret(KEY),
        timeout=5.0,
    )
    model = ModelConfig(name="claude-test", targets=(TargetConfig(provider="claude"),))
    gw: RunningGateway = await start_gateway(
        dataclasses.replace(base, providers={"claude": provider}, models={"claude-test": model})
    )
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="k", max_retries=0) as client:
        messages: Any = [{"role": "user", "content": "hi"}]
        await client.messages.create(model="claude-test", max_tokens=50, messages=messages)
        async with client.messages.stream(
            model="claude-test", max_tokens=50, messages=messages
        ) as stream:
            await stream.get_final_message()
    await gw.gateway.stop()
    whole, streamed = audit_lines(path)
    assert (whole["dialect"], whole["answer"]) == ("messages", "Claude here.")
    assert (streamed["dialect"], streamed["answer"]) == ("messages", "Claude here.")
    assert whole["prompt"] == streamed["prompt"] == "hi"


async def test_the_content_filter_checks_an_image_prompt(
    start_gateway: Any, sock_dir: Path
) -> None:
    base = make_config(
        {},
        sock=sock_dir,
        hooks=(HookSpec("content_filter", {"deny": ["(?i)red fox"]}),),
    )
    mock = ProviderConfig(name="mock", type="mock")
    model = ModelConfig(name="img", targets=(TargetConfig(provider="mock"),))
    gw: RunningGateway = await start_gateway(
        dataclasses.replace(base, providers={"mock": mock}, models={"img": model})
    )
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key="k", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="A Red Fox in snow")
        assert (info.value.code, info.value.param) == ("content_filtered", "prompt")
        ok = await client.images.generate(model="img", prompt="a blue whale")
        assert ok.data
