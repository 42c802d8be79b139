"""The built-in `validation` hook: checks a request body against the OpenAI schema.

It runs first on every proxied request, and `aigw validate --request FILE` uses the same
`validate_request()`. The first problem raises `InvalidRequestError` (400) whose `param` names
the field the way OpenAI does (`messages[2].content[0].text`), or `ModelNotFoundError` (404).

What it follows: the wire types of the `openai` SDK (`types/chat/completion_create_params.py`
and friends). A field is nullable exactly when the SDK types it `Optional`. It stays no stricter
than OpenAI itself: fields it does not know are forwarded unchanged, and so are content parts,
tools and response formats of types it does not know (vLLM's `video_url` parts, provider
built-in tools): their shape is the upstream's business.

Cost: one dict lookup per top-level key of the body; messages and parts are walked once;
error text is only built when something is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Final

from aigw.errors import InvalidRequestError, ModelNotFoundError
from aigw.hooks.base import Hook, RequestContext

__all__ = ["ValidationHook", "endpoint_for_body", "validate_request"]

#: A top-level field checker: (value, whole body) -> None, raising on a problem.
_FieldCheck = Callable[[Any, dict[str, Any]], None]

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_MAX_STOP: Final = 4
_NUMBER_TYPES: Final = frozenset({int, float})  # bool is excluded on purpose: True is not 1.0
_ONLY_STR: Final = frozenset({str})
_ONLY_INT: Final = frozenset({int})
_ONLY_LIST: Final = frozenset({list})
_MISSING: Final = object()


# --- describing values in messages (never echo free text: it may be a user's data)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    kind = type(value)
    if kind is int or kind is float:
        return repr(value)
    if kind is str:
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "an empty array" if not value else "an array"
    if isinstance(value, dict):
        return "an object"
    return kind.__name__


def _show(value: object) -> str:
    """Like `_describe`, but shows short strings: used for enum-like fields (role, type)."""
    if type(value) is str and value:
        return repr(value if len(value) <= 40 else value[:40] + "…")
    return _describe(value)


def _missing(param: str) -> InvalidRequestError:
    return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param)


def _invalid(param: str, expected: str, value: object) -> InvalidRequestError:
    return InvalidRequestError(f"'{param}' must be {expected}, got {_describe(value)}", param=param)


def _range_text(lo: float, hi: float | None) -> str:
    if hi is None:
        return f">= {lo}"
    return f"between {lo} and {hi}"


# --- checker factories for simple top-level fields


def _number(name: str, lo: float, hi: float) -> _FieldCheck:
    expected = f"a number {_range_text(lo, hi)}"

    def check(value: Any, body: dict[str, Any]) -> None:
        # NaN fails the comparison, so it is rejected too.
        if type(value) in _NUMBER_TYPES and lo <= value <= hi:
            return
        if value is None:  # every number field OpenAI has is nullable
            return
        raise _invalid(name, expected, value)

    return check


def _integer(name: str, lo: int, hi: int | None = None, *, nullable: bool = True) -> _FieldCheck:
    expected = f"an integer {_range_text(lo, hi)}"

    def check(value: Any, body: dict[str, Any]) -> None:
        if type(value) is int and value >= lo and (hi is None or value <= hi):
            return
        if value is None and nullable:
            return
        raise _invalid(name, expected, value)

    return check


def _boolean(name: str, *, nullable: bool) -> _FieldCheck:
    def check(value: Any, body: dict[str, Any]) -> None:
        if value is True or value is False or (value is None and nullable):
            return
        raise _invalid(name, "a boolean", value)

    return check


def _string(name: str, *, nullable: bool) -> _FieldCheck:
    def check(value: Any, body: dict[str, Any]) -> None:
        if type(value) is str or (value is None and nullable):
            return
        raise _invalid(name, "a string", value)

    return check


def _enum(name: str, choices: tuple[str, ...], *, nullable: bool) -> _FieldCheck:
    allowed = frozenset(choices)
    listed = ", ".join(repr(c) for c in choices)

    def check(value: Any, body: dict[str, Any]) -> None:
        if (type(value) is str and value in allowed) or (value is None and nullable):
            return
        raise InvalidRequestError(
            f"'{name}' must be one of {listed}, got {_show(value)}", param=name
        )

    return check


# --- shared top-level fields


def _check_stop(value: Any, body: dict[str, Any]) -> None:
    if value is None or type(value) is str:
        return
    if isinstance(value, list) and len(value) <= _MAX_STOP:
        for i, item in enumerate(value):
            if type(item) is not str:
                raise _invalid(f"stop[{i}]", "a string", item)
        return
    raise _invalid("stop", f"a string or an array of at most {_MAX_STOP} strings", value)


def _check_stream_options(value: Any, body: dict[str, Any]) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _invalid("stream_options", "an object or null", value)
    if body.get("stream") is not True:
        raise InvalidRequestError(
            "'stream_options' is only allowed when 'stream' is true", param="stream_options"
        )
    include_usage = value.get("include_usage", False)
    if include_usage is not True and include_usage is not False:
        raise _invalid("stream_options.include_usage", "a boolean", include_usage)


def _check_model(body: dict[str, Any], models: Collection[str]) -> None:
    model = body.get("model", _MISSING)
    if type(model) is str and model:
        if model in models:
            return
        raise ModelNotFoundError(model)
    if model is _MISSING:
        raise _missing("model")
    raise _invalid("model", "a non-empty string", model)


# --- completions / embeddings inputs


def _check_text_or_tokens(name: str, value: Any, *, empty_strings_ok: bool) -> None:
    """An array of strings, of token ids, or of non-empty token-id arrays (one kind throughout)."""
    expected = (
        "a string, an array of strings, an array of token ids (integers) "
        "or an array of token-id arrays"
    )
    if not isinstance(value, list) or not value:
        raise _invalid(name, expected, value)
    # set(map(type, …)) runs in C: token arrays can be thousands of items long.
    kinds = set(map(type, value))
    if kinds == _ONLY_STR:
        if not empty_strings_ok and "" in value:
            raise _invalid(f"{name}[{value.index('')}]", "a non-empty string", "")
        return
    if kinds == _ONLY_INT:
        return
    if kinds == _ONLY_LIST:
        for i, tokens in enumerate(value):
            if not tokens:
                raise _invalid(f"{name}[{i}]", "a non-empty array of token ids", tokens)
            if set(map(type, tokens)) != _ONLY_INT:
                j = next(j for j, t in enumerate(tokens) if type(t) is not int)
                raise _invalid(f"{name}[{i}][{j}]", "a token id (integer)", tokens[j])
        return
    first = type(value[0])
    kind_text = {str: "a string", int: "a token id (integer)", list: "an array of token ids"}
    if first not in kind_text:
        raise _invalid(
            f"{name}[0]", "a string, a token id (integer) or an array of token ids", value[0]
        )
    i = next(i for i, item in enumerate(value) if type(item) is not first)
    raise _invalid(f"{name}[{i}]", f"{kind_text[first]} like {name}[0]", value[i])


def _check_prompt(value: Any, body: dict[str, Any]) -> None:
    # The schema makes `prompt` nullable and allows "" (both mean "<|endoftext|>").
    if value is None or type(value) is str:
        return
    _check_text_or_tokens("prompt", value, empty_strings_ok=True)


def _check_input(value: Any, body: dict[str, Any]) -> None:
    if type(value) is str:
        if value:
            return
        raise _invalid("input", "a non-empty string", value)
    _check_text_or_tokens("input", value, empty_strings_ok=False)


# --- chat: content parts


def _require_str(obj: dict[str, Any], key: str, where: str) -> None:
    value = obj.get(key, _MISSING)
    if type(value) is str:
        return
    if value is _MISSING:
        raise _missing(f"{where}.{key}")
    raise _invalid(f"{where}.{key}", "a string", value)


def _require_object(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = obj.get(key, _MISSING)
    if isinstance(value, dict):
        return value
    if value is _MISSING:
        raise _missing(f"{where}.{key}")
    raise _invalid(f"{where}.{key}", "an object", value)


def _optional_str(obj: dict[str, Any], key: str, where: str) -> None:
    value = obj.get(key)
    if value is not None and type(value) is not str:
        raise _invalid(f"{where}.{key}", "a string", value)


def _part_text(part: dict[str, Any], where: str) -> None:
    _require_str(part, "text", where)


def _part_image_url(part: dict[str, Any], where: str) -> None:
    _require_str(_require_object(part, "image_url", where), "url", f"{where}.image_url")


def _part_input_audio(part: dict[str, Any], where: str) -> None:
    audio = _require_object(part, "input_audio", where)
    _require_str(audio, "data", f"{where}.input_audio")
    _require_str(audio, "format", f"{where}.input_audio")


def _part_file(part: dict[str, Any], where: str) -> None:
    file = _require_object(part, "file", where)
    for key in ("file_data", "file_id", "filename"):
        if key in file and type(file[key]) is not str:
            raise _invalid(f"{where}.file.{key}", "a string", file[key])


def _part_refusal(part: dict[str, Any], where: str) -> None:
    _require_str(part, "refusal", where)


_PART_CHECKS: Final[dict[str, Callable[[dict[str, Any], str], None]]] = {
    "text": _part_text,
    "image_url": _part_image_url,
    "input_audio": _part_input_audio,
    "file": _part_file,
    "refusal": _part_refusal,
}
_USER_PARTS: Final = ("text", "image_url", "input_audio", "file")
_TEXT_PARTS: Final = ("text",)
_ASSISTANT_PARTS: Final = ("text", "refusal")


def _check_parts(parts: list[Any], i: int, role: str, allowed: tuple[str, ...]) -> None:
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise _invalid(f"messages[{i}].content[{j}]", "a content part object", part)
        part_type = part.get("type", _MISSING)
        if type(part_type) is not str:
            where = f"messages[{i}].content[{j}].type"
            if part_type is _MISSING:
                raise _missing(where)
            raise _invalid(where, "a string", part_type)
        check = _PART_CHECKS.get(part_type)
        if check is None:
            continue  # a part type OpenAI does not define: the upstream decides
        if part_type not in allowed:
            raise InvalidRequestError(
                f"'messages[{i}].content[{j}].type' {part_type!r} parts are not allowed in "
                f"{role} messages (allowed: {', '.join(allowed)})",
                param=f"messages[{i}].content[{j}].type",
            )
        check(part, f"messages[{i}].content[{j}]")


def _check_required_content(
    msg: dict[str, Any], i: int, role: str, allowed: tuple[str, ...]
) -> None:
    content = msg.get("content", _MISSING)
    if type(content) is str:
        return
    if isinstance(content, list) and content:
        _check_parts(content, i, role, allowed)
        return
    if content is _MISSING:
        raise _missing(f"messages[{i}].content")
    raise _invalid(
        f"messages[{i}].content", "a string or a non-empty array of content parts", content
    )


# --- chat: messages by role


def _message_user(msg: dict[str, Any], i: int) -> None:
    _check_required_content(msg, i, "user", _USER_PARTS)


def _message_system(msg: dict[str, Any], i: int) -> None:
    _check_required_content(msg, i, "system", _TEXT_PARTS)


def _message_developer(msg: dict[str, Any], i: int) -> None:
    _check_required_content(msg, i, "developer", _TEXT_PARTS)


def _message_tool(msg: dict[str, Any], i: int) -> None:
    _require_str(msg, "tool_call_id", f"messages[{i}]")
    _check_required_content(msg, i, "tool", _TEXT_PARTS)


def _message_function(msg: dict[str, Any], i: int) -> None:
    if "name" not in msg:
        raise _missing(f"messages[{i}].name")
    _optional_str(msg, "content", f"messages[{i}]")


def _check_tool_calls(calls: Any, i: int) -> None:
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list) or not calls:
        # OpenAI rejects `tool_calls: []` (minItems 1); omit the field instead.
        raise _invalid(where, "a non-empty array of tool calls", calls)
    for k, call in enumerate(calls):
        at = f"{where}[{k}]"
        if not isinstance(call, dict):
            raise _invalid(at, "a tool call object", call)
        _require_str(call, "id", at)
        call_type = call.get("type", _MISSING)
        if call_type == "function":
            function = _require_object(call, "function", at)
            _require_str(function, "name", f"{at}.function")
            _require_str(function, "arguments", f"{at}.function")
        elif call_type == "custom":
            custom = _require_object(call, "custom", at)
            _require_str(custom, "name", f"{at}.custom")
            _require_str(custom, "input", f"{at}.custom")
        elif call_type is _MISSING:
            raise _missing(f"{at}.type")
        else:
            raise InvalidRequestError(
                f"'{at}.type' must be 'function' or 'custom', got {_show(call_type)}",
                param=f"{at}.type",
            )


def _message_assistant(msg: dict[str, Any], i: int) -> None:
    content = msg.get("content")
    has_content = False
    if type(content) is str:
        has_content = True
    elif isinstance(content, list):
        _check_parts(content, i, "assistant", _ASSISTANT_PARTS)
        has_content = bool(content)
    elif content is not None:
        raise _invalid(
            f"messages[{i}].content", "a string, an array of content parts or null", content
        )

    tool_calls = msg.get("tool_calls", _MISSING)
    if tool_calls is not _MISSING:
        _check_tool_calls(tool_calls, i)
    function_call = msg.get("function_call")
    if function_call is not None:
        if not isinstance(function_call, dict):
            raise _invalid(f"messages[{i}].function_call", "an object or null", function_call)
        _require_str(function_call, "name", f"messages[{i}].function_call")
        _require_str(function_call, "arguments", f"messages[{i}].function_call")
    refusal = msg.get("refusal")
    if refusal is not None and type(refusal) is not str:
        raise _invalid(f"messages[{i}].refusal", "a string or null", refusal)
    audio = msg.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            raise _invalid(f"messages[{i}].audio", "an object or null", audio)
        _require_str(audio, "id", f"messages[{i}].audio")

    if not (
        has_content
        or tool_calls is not _MISSING
        or function_call is not None
        or refusal is not None
        or audio is not None
    ):
        where = f"messages[{i}].content"
        raise InvalidRequestError(
            f"'{where}' is required for an assistant message unless it has 'tool_calls', "
            "'function_call', 'refusal' or 'audio'",
            param=where,
        )


_ROLE_CHECKS: Final[dict[str, Callable[[dict[str, Any], int], None]]] = {
    "system": _message_system,
    "developer": _message_developer,
    "user": _message_user,
    "assistant": _message_assistant,
    "tool": _message_tool,
    "function": _message_function,
}
_ROLES_TEXT: Final = ", ".join(repr(r) for r in _ROLE_CHECKS)


def _check_messages(value: Any, body: dict[str, Any]) -> None:
    if not isinstance(value, list) or not value:
        raise _invalid("messages", "a non-empty array of message objects", value)
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise _invalid(f"messages[{i}]", "a message object", msg)
        role = msg.get("role", _MISSING)
        # The type test comes first: an unhashable role must not reach the dict lookup.
        check = _ROLE_CHECKS.get(role) if type(role) is str else None
        if check is None:
            if role is _MISSING:
                raise _missing(f"messages[{i}].role")
            raise InvalidRequestError(
                f"'messages[{i}].role' must be one of {_ROLES_TEXT}, got {_show(role)}",
                param=f"messages[{i}].role",
            )
        name = msg.get("name", _MISSING)
        if name is not _MISSING and type(name) is not str:
            raise _invalid(f"messages[{i}].name", "a string", name)
        check(msg, i)


# --- chat: tools and formats


def _check_tools(value: Any, body: dict[str, Any]) -> None:
    if not isinstance(value, list) or not value:
        # OpenAI rejects both `tools: null` and `tools: []`; omit the field instead.
        raise _invalid("tools", "a non-empty array of tool objects", value)
    for k, tool in enumerate(value):
        at = f"tools[{k}]"
        if not isinstance(tool, dict):
            raise _invalid(at, "a tool object", tool)
        tool_type = tool.get("type", _MISSING)
        if tool_type == "function":
            function = _require_object(tool, "function", at)
            name = function.get("name", _MISSING)
            if type(name) is not str or not name:
                if name is _MISSING:
                    raise _missing(f"{at}.function.name")
                raise _invalid(f"{at}.function.name", "a non-empty string", name)
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                raise _invalid(f"{at}.function.parameters", "a JSON Schema object", parameters)
        elif tool_type == "custom":
            _require_str(_require_object(tool, "custom", at), "name", f"{at}.custom")
        elif tool_type is _MISSING:
            raise _missing(f"{at}.type")
        elif type(tool_type) is not str:
            raise _invalid(f"{at}.type", "a string", tool_type)
        # Other tool types (providers' built-in tools) are the upstream's business.


_TOOL_CHOICE_MODES: Final = frozenset({"none", "auto", "required"})


def _check_tool_choice(value: Any, body: dict[str, Any]) -> None:
    if type(value) is str:
        if value in _TOOL_CHOICE_MODES:
            return
        raise InvalidRequestError(
            f"'tool_choice' must be 'none', 'auto', 'required' or an object, got {_show(value)}",
            param="tool_choice",
        )
    if not isinstance(value, dict):
        raise _invalid("tool_choice", "'none', 'auto', 'required' or an object", value)
    choice_type = value.get("type", _MISSING)
    if choice_type == "function":
        _require_str(
            _require_object(value, "function", "tool_choice"), "name", "tool_choice.function"
        )
    elif choice_type is _MISSING:
        raise _missing("tool_choice.type")
    elif type(choice_type) is not str:
        raise _invalid("tool_choice.type", "a string", choice_type)


def _check_response_format(value: Any, body: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        raise _invalid("response_format", "an object with a 'type'", value)
    format_type = value.get("type", _MISSING)
    if format_type == "json_schema":
        _require_str(
            _require_object(value, "json_schema", "response_format"),
            "name",
            "response_format.json_schema",
        )
    elif format_type is _MISSING:
        raise _missing("response_format.type")
    elif type(format_type) is not str:
        raise _invalid("response_format.type", "a string", format_type)


# --- endpoint tables

_SAMPLING: Final[dict[str, _FieldCheck]] = {
    "temperature": _number("temperature", 0, 2),
    "top_p": _number("top_p", 0, 1),
    "presence_penalty": _number("presence_penalty", -2, 2),
    "frequency_penalty": _number("frequency_penalty", -2, 2),
    "max_tokens": _integer("max_tokens", 1),
    "n": _integer("n", 1, 128),
    "seed": _integer("seed", _INT64_MIN, _INT64_MAX),
    "stream": _boolean("stream", nullable=True),
    "stream_options": _check_stream_options,
    "stop": _check_stop,
    "user": _string("user", nullable=False),
}

_CHAT: Final[dict[str, _FieldCheck]] = {
    **_SAMPLING,
    "messages": _check_messages,
    "max_completion_tokens": _integer("max_completion_tokens", 1),
    "logprobs": _boolean("logprobs", nullable=True),
    "top_logprobs": _integer("top_logprobs", 0, 20),
    "tools": _check_tools,
    "tool_choice": _check_tool_choice,
    "parallel_tool_calls": _boolean("parallel_tool_calls", nullable=False),
    "response_format": _check_response_format,
}

_COMPLETIONS: Final[dict[str, _FieldCheck]] = {
    **_SAMPLING,
    "prompt": _check_prompt,
    # In the legacy API `logprobs` is a count, not a switch.
    "logprobs": _integer("logprobs", 0, 5),
    "best_of": _integer("best_of", 0, 20),
    "echo": _boolean("echo", nullable=True),
    "suffix": _string("suffix", nullable=True),
}

_EMBEDDINGS: Final[dict[str, _FieldCheck]] = {
    "input": _check_input,
    "encoding_format": _enum("encoding_format", ("float", "base64"), nullable=False),
    "dimensions": _integer("dimensions", 1, nullable=False),
    "user": _string("user", nullable=False),
}

#: endpoint -> (its required body field besides `model`, checkers of the fields it knows). The
#: pass-through endpoints are checked for what routing needs (their model); the upstream judges
#: the rest, and its 400 reaches the client as it is.
_ENDPOINTS: Final[dict[str, tuple[str, dict[str, _FieldCheck]]]] = {
    "chat/completions": ("messages", _CHAT),
    "completions": ("prompt", _COMPLETIONS),
    "embeddings": ("input", _EMBEDDINGS),
    "images/generations": ("prompt", {}),
    "audio/speech": ("input", {}),
    "audio/transcriptions": ("model", {}),
    "audio/translations": ("model", {}),
    "moderations": ("input", {}),
}


def validate_request(endpoint: str, body: dict[str, Any], models: Collection[str]) -> None:
    """Raise on the first problem of an OpenAI request body; return None when it is valid.

    `models` are the gateway's model names; pass a set (or dict keys) so the test is O(1).
    Raises `InvalidRequestError` (400, `param` names the field) or `ModelNotFoundError` (404).
    """
    spec = _ENDPOINTS.get(endpoint)
    if spec is None:
        raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {sorted(_ENDPOINTS)}")
    if not isinstance(body, dict):
        raise InvalidRequestError(
            f"The request body must be a JSON object, got {_describe(body)}", param=None
        )
    _check_model(body, models)
    required, checks = spec
    if required not in body:
        raise _missing(required)
    # Walk the body, not the rules: a request pays only for the fields it sends.
    for key, value in body.items():
        check = checks.get(key)
        if check is not None:
            check(value, body)


def endpoint_for_body(body: dict[str, Any]) -> str:
    """Guess the endpoint of a request body (for `aigw validate --request FILE`)."""
    if "input" in body:
        return "embeddings"
    if "prompt" in body:
        return "completions"
    return "chat/completions"


class ValidationHook(Hook):
    """The `validation` hook: rejects malformed requests before quota, cache and upstream."""

    modifies_request = False  # it only reads: the client's bytes can go upstream as they are
    deterministic = True

    def __init__(self, models: Collection[str]) -> None:
        super().__init__()
        #: The gateway's model names; replace (don't mutate in place) on config reload.
        self.models = models

    async def before_request(self, ctx: RequestContext) -> None:
        validate_request(ctx.endpoint, ctx.body, self.models)
