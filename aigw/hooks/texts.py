"""The text a request sends to a model, and the text of a non-streamed answer: what the
content filter checks and what the audit log records (one reading of the OpenAI shapes)."""

from __future__ import annotations

from typing import Any

from aigw import jsonutil


def request_texts(endpoint: str, body: dict[str, Any]) -> list[str]:
    """Every piece of text the request sends to the model (see the module docstring)."""
    out: list[str] = []
    if endpoint == "chat/completions":
        messages = body.get("messages")
        if isinstance(messages, list):
            for msg in messages:
                if isinstance(msg, dict):
                    _content(msg.get("content"), out)
        return out
    value = body.get("prompt" if endpoint == "completions" else "input")
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        out.extend(v for v in value if isinstance(v, str))
    return out


def answer_texts(body: bytes) -> list[str] | None:
    """The text of a non-streamed answer: message content, refusals, tool-call arguments,
    completion text. None when the body is not JSON."""
    try:
        data = jsonutil.loads(body)
    except ValueError:
        return None
    out: list[str] = []
    choices = data.get("choices") if isinstance(data, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            out.append(choice["text"])
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        _content(message.get("content"), out)
        if isinstance(message.get("refusal"), str):
            out.append(message["refusal"])
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                out.append(fn["arguments"])
    return out


def _content(content: object, out: list[str]) -> None:
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
