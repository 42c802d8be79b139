"""The text a request sends to a model, and the text of an answer: what the content filter checks
and what the audit log records. Requests reach hooks in their canonical (chat) form or as a
pass-through endpoint's body; answers come in any dialect's shape (a native Responses or Messages
target's answer is not translated), so each shape is read here: chat and completions `choices`,
Responses `output` items, Messages `content` blocks, and their stream events."""

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
    # completions, images and audio send `prompt`; embeddings and moderations `input`; speech
    # has both (`input` is the text spoken, `instructions` how).
    for key in _REQUEST_TEXT_KEYS:
        value = body.get(key)
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
    return out


_REQUEST_TEXT_KEYS = ("prompt", "input", "instructions")


def answer_texts(body: bytes) -> list[str] | None:
    """The text of a non-streamed answer: message content, refusals, tool-call arguments,
    completion text. None when the body is not JSON."""
    try:
        data = jsonutil.loads(body)
    except ValueError:
        return None
    out: list[str] = []
    if not isinstance(data, dict):
        return out
    if data.get("object") == "response":
        _responses_output(data.get("output"), out)
        return out
    if data.get("type") == "message":
        _messages_content(data.get("content"), out)
        return out
    choices = data.get("choices")
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


def stream_texts(event: dict[str, Any], out: list[str]) -> None:
    """Add the answer text one stream event carries, in any dialect: a chat or completions chunk,
    a Responses `response.*.delta` event, a Messages `content_block_delta`."""
    choices = event.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("content"), str):
                    out.append(delta["content"])
                if isinstance(delta.get("refusal"), str):
                    out.append(delta["refusal"])
                for call in delta.get("tool_calls") or ():
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                        out.append(fn["arguments"])
            elif isinstance(choice.get("text"), str):
                out.append(choice["text"])
        return
    kind = event.get("type")
    if kind in _RESPONSES_DELTAS and isinstance(event.get("delta"), str):
        out.append(event["delta"])
    elif kind == "content_block_delta":
        delta = event.get("delta")
        if isinstance(delta, dict):
            for key in ("text", "partial_json", "thinking"):
                if isinstance(delta.get(key), str):
                    out.append(delta[key])


#: Responses stream events whose `delta` is answer text (tool-call arguments included).
_RESPONSES_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
    }
)


def _responses_output(items: object, out: list[str]) -> None:
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict):
                    for key in ("text", "refusal"):
                        if isinstance(part.get(key), str):
                            out.append(part[key])
        elif kind == "function_call" and isinstance(item.get("arguments"), str):
            out.append(item["arguments"])
        elif kind == "reasoning":
            for part in item.get("summary") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    out.append(part["text"])


def _messages_content(blocks: object, out: list[str]) -> None:
    for block in blocks if isinstance(blocks, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            out.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            out.append(block["thinking"])
        elif kind == "tool_use" and "input" in block:
            out.append(jsonutil.dumps(block["input"]).decode())


def _content(content: object, out: list[str]) -> None:
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
