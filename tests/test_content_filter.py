"""The content filter hook: deny/allow rules and the length limit over every kind of request
text, answers, option errors, and a denied request never reaching a real upstream."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aigw.errors import ContentFilteredError
from aigw.hooks.base import RequestContext, ResponseInfo
from aigw.hooks.content_filter import ContentFilterHook


def ctx(body: dict[str, Any], endpoint: str = "chat/completions") -> RequestContext:
    return RequestContext("req-1", "team-a", endpoint, body, 0.0, model="gpt")


def chat(*contents: Any) -> dict[str, Any]:
    return {"model": "gpt", "messages": [{"role": "user", "content": c} for c in contents]}


async def rejects(hook: ContentFilterHook, c: RequestContext) -> ContentFilteredError:
    with pytest.raises(ContentFilteredError) as info:
        await hook.before_request(c)
    err = info.value
    assert err.status == 400 and err.code == "content_filtered"
    body = json.loads(err.body())
    assert body["error"]["code"] == "content_filtered"
    assert body["error"]["type"] == "invalid_request_error"
    return err


@pytest.mark.parametrize(
    ("body", "endpoint", "param"),
    [
        (chat("what is the admin Password?"), "chat/completions", "messages"),
        (chat("hi", "my password is x"), "chat/completions", "messages"),
        (
            chat(
                [
                    {"type": "image_url", "image_url": {"url": "http://x"}},
                    {"type": "text", "text": "PASSWORD"},
                ]
            ),
            "chat/completions",
            "messages",
        ),
        (
            {
                "model": "gpt",
                "messages": [
                    {"role": "system", "content": "password"},
                    {"role": "user", "content": "hi"},
                ],
            },
            "chat/completions",
            "messages",
        ),
        ({"model": "gpt", "prompt": "the password"}, "completions", "prompt"),
        ({"model": "gpt", "prompt": ["ok", "password"]}, "completions", "prompt"),
        ({"model": "e", "input": "password"}, "embeddings", "input"),
        ({"model": "e", "input": ["fine", "passWord"]}, "embeddings", "input"),
    ],
)
async def test_deny_applies_to_every_kind_of_text(
    body: dict[str, Any], endpoint: str, param: str
) -> None:
    hook = ContentFilterHook(deny=[r"\bsecret\b", "(?i)password"])
    err = await rejects(hook, ctx(body, endpoint))
    assert "deny[1]" in err.message and "(?i)password" in err.message
    assert err.param == param


@pytest.mark.parametrize(
    ("body", "endpoint"),
    [
        (chat("what a nice day"), "chat/completions"),
        (
            chat([{"type": "image_url", "image_url": {"url": "http://x/password"}}]),
            "chat/completions",
        ),
        ({"model": "gpt", "prompt": [1, 2, 3]}, "completions"),  # token arrays carry no text
        ({"model": "e", "input": "weather"}, "embeddings"),
        ({"model": "gpt", "messages": "not even a list"}, "chat/completions"),
    ],
)
async def test_clean_requests_pass(body: dict[str, Any], endpoint: str) -> None:
    hook = ContentFilterHook(deny=["(?i)password"])
    await hook.before_request(ctx(body, endpoint))


async def test_allow_list() -> None:
    hook = ContentFilterHook(allow=["^translate:", "^summarize:"])
    await hook.before_request(ctx(chat("summarize: the report")))
    err = await rejects(hook, ctx(chat("write me a poem")))
    assert "allow" in err.message


async def test_deny_wins_over_allow() -> None:
    hook = ContentFilterHook(deny=["(?i)password"], allow=["^translate:"])
    err = await rejects(hook, ctx(chat("translate: my password")))
    assert "deny[0]" in err.message


async def test_max_prompt_chars_counts_all_text() -> None:
    hook = ContentFilterHook(max_prompt_chars=10)
    await hook.before_request(ctx(chat("12345", "67890")))
    err = await rejects(hook, ctx(chat("12345", [{"type": "text", "text": "678901"}])))
    assert "max_prompt_chars" in err.message and "11" in err.message


async def test_answers_checked_only_when_asked() -> None:
    answer = json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": "The password"}}]}
    ).encode()
    relaxed = ContentFilterHook(deny=["(?i)password"])
    await relaxed.after_response(ctx(chat("hi")), ResponseInfo(200, answer))
    strict = ContentFilterHook(deny=["(?i)password"], check_answers=True)
    with pytest.raises(ContentFilteredError, match=r"Answer blocked .*deny\[0\]"):
        await strict.after_response(ctx(chat("hi")), ResponseInfo(200, answer))
    # Streams are complete at the client already: nothing to check.
    await strict.after_response(ctx(chat("hi")), ResponseInfo(200, text="The password"))
    # Tool-call arguments and completion text are answer text too.
    tool = json.dumps(
        {
            "choices": [
                {
                    "message": {
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "password"},
                            }
                        ],
                    }
                }
            ]
        }
    ).encode()
    with pytest.raises(ContentFilteredError):
        await strict.after_response(ctx(chat("hi")), ResponseInfo(200, tool))
    text = json.dumps({"choices": [{"text": "password"}]}).encode()
    with pytest.raises(ContentFilteredError):
        await strict.after_response(ctx({"prompt": "x"}, "completions"), ResponseInfo(200, text))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"deny": ["(unclosed"]}, r"deny\[0\] is not a valid regex"),
        ({"allow": ["ok", "[z-a]"]}, r"allow\[1\] is not a valid regex"),
        ({"deny": "password"}, "must be a list"),
        ({"deny": [3]}, r"deny\[0\] must be a string"),
        ({"max_prompt_chars": -1}, "max_prompt_chars"),
        ({"max_prompt_chars": "10"}, "max_prompt_chars"),
        ({"check_answers": "yes"}, "check_answers"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContentFilterHook(**options)


async def test_denied_request_never_reaches_the_upstream(aiohttp_server: Any) -> None:
    calls = 0

    async def upstream(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({"choices": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream)
    server = await aiohttp_server(app, host="127.0.0.1", port=0)
    hooks = [ContentFilterHook(deny=["(?i)password"])]

    async def pipeline(body: dict[str, Any]) -> int:
        """The hook contract as the proxy runs it: every before_request, then the upstream."""
        c = ctx(body)
        try:
            for hook in hooks:
                await hook.before_request(c)
        except ContentFilteredError as err:
            return err.status
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{server.port}/v1/chat/completions", json=c.body
            ) as resp,
        ):
            return resp.status

    assert await pipeline(chat("tell me the password")) == 400
    assert calls == 0
    assert await pipeline(chat("tell me a joke")) == 200
    assert calls == 1
