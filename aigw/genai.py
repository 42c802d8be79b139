"""What the OpenTelemetry GenAI semantic conventions say about aigw's requests, answers and
upstreams, as span attributes (`aigw.tracing` makes the spans):

- the operation of each API route and the `gen_ai.provider.name` of an upstream;
- a request's settings (`gen_ai.request.*`) and the usage of an answer (`gen_ai.usage.*`);
- an answer's model, id and finish reasons, read from its bytes without parsing them;
- with `tracing.capture_content`, the messages (`gen_ai.input.messages`,
  `gen_ai.output.messages`, `gen_ai.system_instructions`) of any dialect's request and answer,
  each attribute cut to `MAX_CONTENT_CHARS` on the event loop and redacted only when the export
  thread renders it (`Content.render`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from aigw import jsonutil
from aigw.config import ProviderConfig
from aigw.exchange import Usage

#: Characters kept of each captured content attribute (input messages, output messages).
MAX_CONTENT_CHARS: Final = 16 * 1024

#: `gen_ai.operation.name` by API route (the path after /v1/); other routes have none.
OPERATIONS: Final[Mapping[str, str]] = {
    "chat/completions": "chat",
    "responses": "chat",
    "messages": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
#: `gen_ai.provider.name` by upstream host (exact, or a suffix when it starts with "."), for
#: OpenAI-compatible providers whose host says who runs the model; else by provider type.
PROVIDER_HOSTS: Final[tuple[tuple[str, str], ...]] = (
    ("api.openai.com", "openai"),
    (".openai.azure.com", "azure.ai.openai"),
    (".services.ai.azure.com", "azure.ai.inference"),
    ("models.inference.ai.azure.com", "azure.ai.inference"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
    (".aiplatform.googleapis.com", "gcp.vertex_ai"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.groq.com", "groq"),
    ("api.deepseek.com", "deepseek"),
    ("api.x.ai", "x_ai"),
    ("api.perplexity.ai", "perplexity"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
)
PROVIDER_TYPES: Final[Mapping[str, str]] = {"openai": "openai", "mock": "aigw.mock"}


def provider_name(provider: ProviderConfig) -> str:
    """`gen_ai.provider.name`: who runs the model, by the upstream's host when it is a known
    vendor's, else by the provider type (an OpenAI-compatible server speaks the `openai`
    flavour of the conventions)."""
    if provider.type == "openai" and provider.base_url:
        try:
            host = (urlsplit(provider.base_url).hostname or "").lower()
        except ValueError:
            host = ""
        for pattern, name in PROVIDER_HOSTS:
            if host == pattern or (pattern.startswith(".") and host.endswith(pattern)):
                return name
    return PROVIDER_TYPES.get(provider.type, provider.type)


def request_settings(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request's GenAI settings, which its attempt spans repeat (the conventions put them
    on the client span)."""
    settings: dict[str, Any] = {}
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            settings["gen_ai.request.max_tokens"] = value
            break
    for key, name in (
        ("temperature", "gen_ai.request.temperature"),
        ("top_p", "gen_ai.request.top_p"),
    ):
        value = body.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            settings[name] = float(value)
    return settings


def usage_attributes(usage: Usage, attributes: dict[str, Any]) -> None:
    attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
    attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if usage.cached_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens
    if usage.cache_write_tokens:
        attributes["gen_ai.usage.cache_write.input_tokens"] = usage.cache_write_tokens
    if usage.reasoning_tokens:
        attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens


# An answer's model, id and finish reasons are found with `bytes.find` (C speed, no parse of a
# maybe large body) and one anchored match for the string after the key. Top-level keys come
# first in every dialect's answer and in each stream chunk; a key inside the answer's text is
# escaped (\\"model\\") and never matches.
_STRING_AFTER_KEY = re.compile(rb'[ \t\r\n]*:[ \t\r\n]*"([^"\\]{1,256})"')
_HEAD: Final = 2048  # where an answer's top-level "id" and "model" are looked for
_FINISH_KEYS: Final = (b'"finish_reason"', b'"stop_reason"')


def head_string(data: bytes, key: bytes) -> str | None:
    """The string value of the first `key` (b'"model"') in the answer's head; None when absent
    or null."""
    at = data.find(key, 0, _HEAD)
    if at < 0:
        return None
    m = _STRING_AFTER_KEY.match(data, at + len(key))
    return m.group(1).decode("utf-8", "replace") if m is not None else None


def answer_finish_reasons(data: bytes) -> tuple[str, ...]:
    """Every non-null `finish_reason` (OpenAI) or `stop_reason` (Anthropic), in order."""
    out: list[str] = []
    for key in _FINISH_KEYS:
        at = data.find(key)
        while at >= 0 and len(out) < 128:
            m = _STRING_AFTER_KEY.match(data, at + len(key))
            if m is not None and len(m.group(1)) <= 64:
                out.append(m.group(1).decode("ascii", "replace"))
            at = data.find(key, at + len(key))
        if out:
            break
    return tuple(out)


class Content:
    """A captured-content attribute until export: the message structure, texts already cut to
    `MAX_CONTENT_CHARS` in all; redacted and written as JSON in the export thread."""

    __slots__ = ("value",)

    def __init__(self, value: list[dict[str, Any]]) -> None:
        self.value = value

    def render(self) -> str:
        from aigw.redact import redact

        def clean(node: Any) -> Any:
            if isinstance(node, dict):
                return {
                    k: redact(v) if k in _TEXT_KEYS and isinstance(v, str) else clean(v)
                    for k, v in node.items()
                }
            if isinstance(node, list):
                return [clean(item) for item in node]
            return node

        return json.dumps(clean(self.value), ensure_ascii=False, separators=(",", ":"))


#: Keys of the GenAI message parts whose values are the model's or the user's text.
_TEXT_KEYS: Final = frozenset({"content", "arguments", "response"})


class _Budget:
    """What is left of `MAX_CONTENT_CHARS` for one attribute."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_CONTENT_CHARS

    def take(self, text: str) -> str | None:
        """`text`, cut to what is left (before the last whitespace within it: a token cut in
        half could be a secret the redactor no longer recognises); None when nothing is left."""
        if self.left <= 0:
            return None
        if len(text) <= self.left:
            self.left -= len(text)
            return text
        cut = text[: self.left]
        self.left = 0
        space = max(cut.rfind(" "), cut.rfind("\n"), cut.rfind("\t"))
        return (cut[:space] if space > 0 else "") + " [truncated]"


def input_messages(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system instructions, input messages) of a request in the GenAI conventions' shapes,
    from an OpenAI chat/completions/embeddings/responses or Anthropic messages body; texts cut
    to `MAX_CONTENT_CHARS` in all."""
    budget = _Budget()
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    instructions = body.get("system", body.get("instructions"))
    if instructions is not None:
        system = _parts(instructions, budget)
    raw = body.get("messages")
    if raw is None:
        raw = body.get("input", body.get("prompt"))
    if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], str)):
        parts = _parts(raw, budget)
        if parts:
            messages.append({"role": "user", "parts": parts})
    elif isinstance(raw, list):
        for item in raw:
            if budget.left <= 0:
                break
            if isinstance(item, dict):
                message = _message(item, budget)
                if message is not None:
                    messages.append(message)
    return system, messages


def output_messages(answer: bytes | str) -> list[dict[str, Any]]:
    """The answer in the GenAI conventions' output-message shape: one message per choice of a
    JSON answer (OpenAI chat/completions/responses, Anthropic messages), or the text of a
    stream; texts cut to `MAX_CONTENT_CHARS` in all."""
    budget = _Budget()
    if isinstance(answer, str):
        parts = _parts(answer, budget)
        return [{"role": "assistant", "parts": parts}] if parts else []
    try:
        data = jsonutil.loads(answer)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    out: list[dict[str, Any]] = []
    choices = data.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict):
                found = _message(message, budget) or {"role": "assistant", "parts": []}
            else:
                found = {"role": "assistant", "parts": _parts(choice.get("text"), budget)}
            if isinstance(choice.get("finish_reason"), str):
                found["finish_reason"] = choice["finish_reason"]
            out.append(found)
    elif isinstance(data.get("content"), list):  # Anthropic messages
        found = {"role": "assistant", "parts": _parts(data["content"], budget)}
        if isinstance(data.get("stop_reason"), str):
            found["finish_reason"] = data["stop_reason"]
        out.append(found)
    elif isinstance(data.get("output"), list):  # OpenAI responses
        for item in data["output"]:
            if isinstance(item, dict):
                message = _message(item, budget)
                if message is not None:
                    out.append(message)
    return out


def _message(item: Mapping[str, Any], budget: _Budget) -> dict[str, Any] | None:
    role = item.get("role")
    kind = item.get("type")
    if kind in ("function_call", "tool_use"):  # a responses/Anthropic tool call item
        return {"role": "assistant", "parts": [_tool_call(item, budget)]}
    if kind == "function_call_output":
        response = budget.take(_text_of(item.get("output")))
        return {
            "role": "tool",
            "parts": [
                {"type": "tool_call_response", "id": item.get("call_id"), "response": response}
            ],
        }
    if not isinstance(role, str):
        return None
    if role == "tool":
        response = budget.take(_text_of(item.get("content")))
        part = {"type": "tool_call_response", "id": item.get("tool_call_id"), "response": response}
        return {"role": role, "parts": [part]}
    parts = _parts(item.get("content"), budget)
    calls = item.get("tool_calls")
    if isinstance(calls, list):
        parts.extend(_tool_call(call, budget) for call in calls if isinstance(call, dict))
    return {"role": role, "parts": parts}


def _parts(content: Any, budget: _Budget) -> list[dict[str, Any]]:
    """Message parts of a content value: a string, a list of strings, or a list of blocks."""
    if isinstance(content, str):
        text = budget.take(content)
        return [{"type": "text", "content": text}] if text is not None else []
    parts: list[dict[str, Any]] = []
    if not isinstance(content, list):
        return parts
    for block in content:
        if budget.left <= 0:
            break
        if isinstance(block, str):
            parts.extend(_parts(block, budget))
        elif isinstance(block, dict):
            kind = block.get("type")
            if isinstance(block.get("text"), str):
                text = budget.take(block["text"])
                if text is not None:
                    parts.append({"type": "text", "content": text})
            elif kind == "tool_use":
                parts.append(_tool_call(block, budget))
            elif kind == "tool_result":
                response = budget.take(_text_of(block.get("content")))
                parts.append(
                    {
                        "type": "tool_call_response",
                        "id": block.get("tool_use_id"),
                        "response": response,
                    }
                )
            elif isinstance(kind, str):
                parts.append({"type": kind})  # an image, audio, file...: its kind, not its data
    return parts


def _tool_call(call: Mapping[str, Any], budget: _Budget) -> dict[str, Any]:
    function = call.get("function")
    source = function if isinstance(function, dict) else call
    arguments = source.get("arguments", source.get("input"))
    if not isinstance(arguments, str) and arguments is not None:
        arguments = jsonutil.dumps(arguments).decode()
    return {
        "type": "tool_call",
        "id": call.get("id", call.get("call_id")),
        "name": source.get("name"),
        "arguments": budget.take(arguments) if arguments is not None else None,
    }


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    return ""


# --- export --------------------------------------------------------------------------------
