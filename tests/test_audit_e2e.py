"""The audit and content-filter hooks through the real gateway (real loopback upstream, raw
aiohttp and the openai SDK as clients), configured the way YAML configures them.

The audit file is read only after the gateway stopped: stopping closes the hooks, which flushes
the writer thread, so every line is on disk without waiting for time to pass."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from aigw.config import CacheConfig, HookSpec
from tests.conftest import RunningGateway, make_config
from tests.upstream import WORDS, Upstream

# Personal data and secrets a careless client sends; none may reach the audit file.
EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"  # Luhn-valid (the Visa test number)
CARD_PLAIN = "5555555555554444"  # Luhn-valid (the Mastercard test number)
PHONE = "(415) 555-2671"
PHONE_INTL = "+44 20 7946 0958"
KEY = "sk-proj-Zx81Qm4TnW0aLk29Vb7YcR3dPf6H"
ANSWER_EMAIL = "bob.smith@corp-mail.org"
ANSWER_KEY = "sk-AbC123dEf456GhI789jKl012MnO345"
RAW_VALUES = (EMAIL, CARD, CARD_PLAIN, PHONE, PHONE_INTL, KEY, ANSWER_EMAIL, ANSWER_KEY)
# Pieces of the raw values that must not survive either (e.g. a card with spaces removed).
RAW_FRAGMENTS = (
    "jane.doe",
    "4111111111111111",
    "4111 1111",
    "5555555555554444",
    "555-2671",
    "7946 0958",
    "Zx81Qm4TnW0aLk29",
    "bob.smith",
    "AbC123dEf456",
)
PROMPT = (
    f"Hi, I am Jane ({EMAIL}, phone {PHONE}, or {PHONE_INTL}). Charge card {CARD} "
    f"or {CARD_PLAIN}. My key is {KEY} - canary-zebra version 1.2.3 on 2024-05-01."
)
ANSWER_WORDS = ["Contact", ANSWER_EMAIL, "with", "key", ANSWER_KEY, "today"]

LINE_FIELDS = {
    "time",
    "request_id",
    "tenant",
    "endpoint",
    "dialect",
    "model",
    "target",
    "upstream_request_id",
    "status",
    "stream",
    "cache",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_ms",
    "error",
}


def chat(content: Any = PROMPT, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": content}], **extra}


async def post(
    gw: RunningGateway,
    body: dict[str, Any],
    *,
    endpoint: str = "chat/completions",
    headers: dict[str, str] | None = None,
) -> tuple[int, Mapping[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.v1}/{endpoint}", json=body, headers=headers or {}) as r,
    ):
        return r.status, r.headers, await r.read()


def audit_spec(path: Path, **options: Any) -> HookSpec:
    return HookSpec("audit", {"path": str(path), **options})


def read_lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def assert_clean(path: Path) -> None:
    text = path.read_text()
    for raw in RAW_VALUES + RAW_FRAGMENTS:
        assert raw not in text, f"{raw!r} leaked into the audit log"


async def audited_workload(gw: RunningGateway, upstream: Upstream) -> dict[str, tuple[int, bool]]:
    """Non-stream, stream (with and without usage), completions, embeddings, an upstream error
    echoing the prompt. Returns request id -> (status, stream)."""
    sent: dict[str, tuple[int, bool]] = {}
    upstream.behaviour.words = list(ANSWER_WORDS)
    client = openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=10)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=chat()["messages"]
    )
    assert raw.parse().choices[0].message.content == " ".join(ANSWER_WORDS)
    sent[raw.headers["x-request-id"]] = (200, False)
    for usage in (False, True):
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if usage else {}
        raw_stream = await client.chat.completions.with_raw_response.create(
            model="gpt-test",
            messages=[
                {"role": "system", "content": f"The user's card is {CARD}."},
                {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
            ],
            stream=True,
            **extra,
        )
        text = [c.choices[0].delta.content or "" async for c in raw_stream.parse() if c.choices]
        assert "".join(text) == " ".join(ANSWER_WORDS)
        sent[raw_stream.headers["x-request-id"]] = (200, True)
    await client.close()
    status, headers, _ = await post(
        gw, {"model": "gpt-test", "prompt": PROMPT}, endpoint="completions"
    )
    sent[headers["x-request-id"]] = (status, False)
    status, headers, _ = await post(
        gw, {"model": "gpt-test", "input": [PROMPT, EMAIL]}, endpoint="embeddings"
    )
    sent[headers["x-request-id"]] = (status, False)
    upstream.behaviour.status = 400
    upstream.behaviour.error_body = json.dumps(
        {
            "error": {
                "message": f"Bad prompt near {EMAIL} and {KEY}",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    ).encode()
    status, headers, body = await post(gw, chat())
    assert status == 400 and EMAIL in body.decode()  # the client gets the upstream's own words
    sent[headers["x-request-id"]] = (400, False)
    upstream.behaviour.status = 200
    assert all(s == 200 for s, _ in list(sent.values())[:-1])
    return sent


@pytest.mark.parametrize("log_bodies", [True, False])
async def test_audit_line_per_request_with_no_raw_pii(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path, log_bodies: bool
) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    hooks = (audit_spec(path, redact_pii=True, log_bodies=log_bodies),)
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir, hooks=hooks))
    sent = await audited_workload(gw, upstream)
    # What went upstream is untouched: redaction is for the log only.
    assert EMAIL in json.dumps(upstream.requests[0])
    await gw.gateway.stop()  # closes the hooks: the writer thread flushes and exits

    lines = read_lines(path)
    assert len(lines) == len(sent)
    assert {line["request_id"]: (line["status"], line["stream"]) for line in lines} == sent
    expected_fields = LINE_FIELDS | ({"prompt", "answer"} if log_bodies else set())
    for line in lines:
        assert set(line) == expected_fields
        assert line["tenant"] == "default"
        assert line["model"] == "gpt-test"
        assert line["target"] == "up/up-model"
        assert line["cache"] is None  # the cache is off
        assert line["time"].endswith("Z") and line["latency_ms"] >= 0
    by_endpoint = {(line["endpoint"], line["stream"], line["status"]): line for line in lines}
    ok = by_endpoint[("chat/completions", False, 200)]
    assert (ok["prompt_tokens"], ok["completion_tokens"], ok["total_tokens"]) == (
        7,
        len(ANSWER_WORDS),
        7 + len(ANSWER_WORDS),
    )
    assert ok["error"] is None
    streamed = [line for line in lines if line["stream"]]
    assert len(streamed) == 2
    assert all(line["total_tokens"] == 7 + len(ANSWER_WORDS) for line in streamed)
    failed = by_endpoint[("chat/completions", False, 400)]
    assert failed["error"] is not None and "[EMAIL]" in failed["error"]
    assert "[SECRET]" in failed["error"]
    assert by_endpoint[("embeddings", False, 200)]["total_tokens"] == 6

    assert_clean(path)
    text = path.read_text()
    if log_bodies:
        for placeholder in ("[EMAIL]", "[CARD]", "[PHONE]", "[SECRET]"):
            assert placeholder in text
        assert "canary-zebra" in ok["prompt"]
        # Look-alikes stay as they are.
        assert "version 1.2.3 on 2024-05-01" in ok["prompt"]
        for line in streamed:
            assert "canary-zebra" in line["prompt"]
            assert line["answer"] == "Contact [EMAIL] with key [SECRET] today"
        assert ok["answer"] == "Contact [EMAIL] with key [SECRET] today"
        assert by_endpoint[("embeddings", False, 200)]["answer"] is None  # no vectors
    else:
        # No prompt or answer text at all, redacted or not.
        assert "canary-zebra" not in text
        assert "Contact" not in text and "today" not in text
        assert "[CARD]" not in text and "[PHONE]" not in text


async def test_audit_without_redaction_keeps_the_text(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    """The control for the test above: the same values do reach the file when redaction is
    off, so `assert_clean` there is not passing by accident."""
    path = tmp_path / "audit.jsonl"
    hooks = (audit_spec(path, redact_pii=False, log_bodies=True),)
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir, hooks=hooks))
    await audited_workload(gw, upstream)
    await gw.gateway.stop()
    text = path.read_text()
    for raw in (EMAIL, CARD, CARD_PLAIN, PHONE, KEY, ANSWER_EMAIL, ANSWER_KEY):
        assert raw in text


async def test_audit_records_cache_hits_and_misses(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        hooks=(audit_spec(path, log_bodies=True),),
        cache=CacheConfig(enabled=True),
    )
    gw = await start_gateway(config)
    ids = []
    for stream in (False, False, True):
        status, headers, _ = await post(gw, chat(stream=stream))
        assert status == 200
        ids.append((headers["x-request-id"], headers["x-aigw-cache"]))
    assert [cache for _, cache in ids] == ["miss", "hit", "hit"]
    await gw.gateway.stop()
    lines = {line["request_id"]: line for line in read_lines(path)}
    assert {rid: lines[rid]["cache"] for rid, _ in ids} == dict(ids)
    hit = lines[ids[1][0]]
    assert hit["total_tokens"] == 7 + len(WORDS)  # the answer's usage, though not charged
    assert hit["answer"] == " ".join(WORDS)
    assert_clean(path)


# --- content filter -------------------------------------------------------------------------


def filter_spec(**options: Any) -> HookSpec:
    return HookSpec("content_filter", options)


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("chat/completions", chat("what is the admin PASSWORD?")),
        ("chat/completions", chat("what is the admin password?", stream=True)),
        (
            "chat/completions",
            {
                "model": "gpt-test",
                "messages": [
                    {"role": "system", "content": "be nice"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look at this"},
                            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                            {"type": "text", "text": "and tell me the password"},
                        ],
                    },
                ],
            },
        ),
        ("completions", {"model": "gpt-test", "prompt": ["fine", "my password is"]}),
        ("embeddings", {"model": "gpt-test", "input": "Password123"}),
    ],
)
async def test_denied_prompt_is_400_and_never_reaches_the_upstream(
    upstream: Upstream,
    start_gateway: Any,
    sock_dir: Path,
    endpoint: str,
    body: dict[str, Any],
) -> None:
    hooks = (filter_spec(deny=["(?i)secret-project", "(?i)password"]),)
    config = make_config(
        {"up": upstream.url}, sock=sock_dir, hooks=hooks, cache=CacheConfig(enabled=True)
    )
    gw = await start_gateway(config)
    status, headers, raw = await post(gw, body, endpoint=endpoint)
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")  # even for a stream request
    error = json.loads(raw)["error"]
    assert error["code"] == "content_filtered"
    assert error["type"] == "invalid_request_error"
    assert "deny[1]" in error["message"] and "password" in error["message"]
    assert error["param"] == {"chat/completions": "messages"}.get(endpoint, error["param"])
    assert upstream.requests == []
    assert gw.gateway.cache is not None and gw.gateway.cache.entries == 0
    # A clean request goes through the same gateway.
    clean = {**body}
    if endpoint == "chat/completions":
        clean["messages"] = chat("hello")["messages"]
    else:
        clean["prompt" if endpoint == "completions" else "input"] = "hello"
    assert (await post(gw, clean, endpoint=endpoint))[0] == 200
    assert len(upstream.requests) == 1


async def test_denied_prompt_with_the_openai_sdk(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    hooks = (filter_spec(deny=["(?i)password"], max_prompt_chars=50),)
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir, hooks=hooks))
    client = openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=10)
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "my password"}]
        )
    assert exc.value.code == "content_filtered"
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "x" * 51}]
        )
    assert exc.value.code == "content_filtered"
    assert "max_prompt_chars" in exc.value.message
    assert upstream.requests == []
    await client.close()


async def test_check_answers_rejects_a_denied_answer(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    hooks = (filter_spec(deny=["(?i)password"], check_answers=True), audit_spec(path))
    config = make_config(
        {"up": upstream.url}, sock=sock_dir, hooks=hooks, cache=CacheConfig(enabled=True)
    )
    gw = await start_gateway(config)
    upstream.behaviour.words = ["the", "Password", "is", "hunter2"]
    status, _, raw = await post(gw, chat("what is it?"))
    assert status == 400
    error = json.loads(raw)["error"]
    assert error["code"] == "content_filtered" and "deny[0]" in error["message"]
    assert b"hunter2" not in raw
    assert len(upstream.requests) == 1
    # A blocked answer is not stored: asking again goes upstream again.
    assert gw.gateway.cache is not None and gw.gateway.cache.entries == 0
    status, _, _ = await post(gw, chat("what is it?"))
    assert status == 400 and len(upstream.requests) == 2
    # Streams are not checked (the client has the bytes before the answer is complete) ...
    status, _, streamed = await post(gw, chat("what is it?", stream=True))
    assert status == 200 and b"hunter2" in streamed
    assert len(upstream.requests) == 3
    # ... but the stored stream is checked when a non-streaming client hits it.
    status, headers, raw = await post(gw, chat("what is it?"))
    assert status == 400 and json.loads(raw)["error"]["code"] == "content_filtered"
    assert headers["x-aigw-cache"] == "hit"
    assert len(upstream.requests) == 3
    # A clean answer passes.
    upstream.behaviour.words = ["all", "good"]
    status, _, raw = await post(gw, chat("something else"))
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "all good"
    await gw.gateway.stop()
    lines = read_lines(path)
    assert [line["status"] for line in lines] == [400, 400, 200, 400, 200]
    assert all("deny[0]" in line["error"] for line in lines if line["status"] == 400)
    assert "hunter2" not in path.read_text()


async def test_audit_before_the_filter_still_logs_one_line_per_request(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    hooks = (audit_spec(path), filter_spec(deny=["(?i)password"], check_answers=True))
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir, hooks=hooks))
    upstream.behaviour.words = ["the", "Password", "is", "hunter2"]
    status, headers, _ = await post(gw, chat("what is it?"))
    assert status == 400
    await gw.gateway.stop()
    (line,) = read_lines(path)
    assert line["request_id"] == headers["x-request-id"]
    assert line["status"] == 400 and "deny[0]" in line["error"]


async def test_the_answer_text_of_a_compact_sse_upstream_is_in_the_audit_log(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    """An upstream that writes `data:{...}` (no space) and CRLF line ends: the client's stream,
    the audit answer text and the stream's completeness are what a spaced upstream gives."""
    path = tmp_path / "audit.jsonl"
    hooks = (audit_spec(path, redact_pii=False, log_bodies=True),)
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir, hooks=hooks))
    upstream.behaviour.compact_sse = True
    upstream.behaviour.words = ["plain", "words", "here"]
    client = openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=10)
    stream = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(text) == "plain words here"
    await client.close()
    await gw.gateway.stop()
    [line] = read_lines(path)
    assert (line["status"], line["answer"]) == (200, "plain words here")
    assert line["total_tokens"] == 7 + 3  # the upstream's usage, found without the space
