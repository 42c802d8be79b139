"""OpenAI Responses (`POST /v1/responses`) to and from the canonical chat form.

A Responses client whose target speaks only chat completions is served through this module:
`to_chat` turns its request into a chat body, `from_chat` turns a whole chat answer into a
`response` object, and `StreamFromChat` turns a chat stream, chunk by chunk, into the Responses
event stream (`response.created` ... `response.completed`, each event with its `sequence_number`).

What the translation does with each part of a Responses request, where the mapping is a choice:

- `instructions`, and `system`/`developer` messages, become chat `system` messages: every chat
  upstream knows `system`, and OpenAI's chat treats it as the developer role for the models that
  have one.
- `reasoning` items in `input` are dropped: they hold a previous turn's reasoning (summaries or
  encrypted content only OpenAI can read); chat has no field for it.
- `input_file` becomes chat's `file` part (`file_data`, `file_id`, `filename` mean the same in
  both APIs); a `file_url` or an `input_image` by `file_id` has no chat form and is refused.
- `tool_choice` and `parallel_tool_calls` go to chat only with tools (OpenAI's chat refuses them
  without); `metadata` is echoed in the answer but not sent (chat accepts it only with
  `store: true`, and nothing is stored here).
- Dropped because they cannot change the answer: `include` values about hosted tools, stored
  input images or encrypted reasoning (none of those exist on this path); `max_tool_calls` (it
  counts built-in tool calls only); `reasoning.summary` (nothing is summarised; raw reasoning is
  shown as below); `stream_options` (its only option turns off obfuscation padding, never added
  here); `truncation: auto` (when the input fits it is a no-op; when it does not, the upstream
  says so with its context-length error rather than answering something else).
- Refused with a 400 naming the field: the stateful parameters (`STATEFUL`, and `item_reference`
  input items), stored `prompt` templates, `context_management`, tools and tool choices other
  than functions, `reasoning.mode` other than standard, `n` other than 1, unknown `include`
  values, and the chat spellings of Responses parameters (`messages`, `max_tokens`, ...).
- Every other top-level field chat also understands passes through unchanged.

On the way back, `reasoning_content` (or `reasoning`) from a chat upstream becomes a `reasoning`
output item whose `content` is a `reasoning_text` part (streamed as `response.reasoning_text.*`):
it is the model's raw reasoning, which is what that part means in the Responses API, not a
summary. Refusals become `refusal` parts; a `length` or `content_filter` finish makes the response
`incomplete` (the stream then ends with `response.incomplete`, as OpenAI's does). The answer
echoes the request's parameters with OpenAI's defaults, reports `store: false` (nothing is
stored), and names the model the client asked for.
"""

from __future__ import annotations

from typing import Any, Final

from aigw import sse
from aigw.errors import GatewayError, InvalidRequestError
from aigw.exchange import Usage
from aigw.jsonutil import dumps

API: Final = "responses"

#: Refused (400 naming the parameter) when translated; they work only natively.
STATEFUL: Final = ("previous_response_id", "store", "background", "conversation")

#: Chat's spelling of a Responses parameter: refused, with the Responses name as the hint.
_CHAT_SPELLINGS: Final = {
    "messages": "input",
    "response_format": "text.format",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
    "functions": "tools",
    "function_call": "tool_choice",
    "logprobs": 'include: ["message.output_text.logprobs"]',
    "verbosity": "text.verbosity",
}

#: Responses-only fields the translation reads or drops itself (the rest pass through).
_HANDLED: Final = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "max_output_tokens",
        "reasoning",
        "stream",
        "stream_options",
        "include",
        "top_logprobs",
        "truncation",
        "metadata",
        "max_tool_calls",
        "prompt",
        "context_management",
        "n",
        *STATEFUL,
        *_CHAT_SPELLINGS,
    }
)

#: The fields whose mere presence needs a look (a refusal, maybe).
_CHECKED: Final = frozenset({*STATEFUL, *_CHAT_SPELLINGS})

_LOGPROBS_INCLUDE: Final = "message.output_text.logprobs"
#: `include` values that add data only hosted tools, stored inputs or OpenAI's encrypted
#: reasoning could produce: nothing on the chat path does, so they are dropped.
_INCLUDE_DROPPED: Final = frozenset(
    {
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
    }
)

_ROLES: Final = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
}
_TOOL_CHOICES: Final = ("auto", "none", "required")
#: chat finish reason -> Responses `incomplete_details.reason`
_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


# --- the request ---------------------------------------------------------------------------


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body for a Responses request. Raises `InvalidRequestError` naming
    the exact field (`param`) for a malformed request or a parameter chat cannot serve."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    unusual = body.keys() & _CHECKED
    for name in STATEFUL if unusual else ():
        value = body.get(name)
        if value is not None and value is not False:
            raise _stateful(name)
    model = body.get("model")
    if model is None:
        raise InvalidRequestError("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str) or not model:
        raise _invalid_type("model", "a non-empty string", model)
    for name, hint in _CHAT_SPELLINGS.items() if unusual else ():
        if name in body:
            raise InvalidRequestError(
                f"Unknown parameter: '{name}'. (Hint: the Responses API spells it '{hint}'.)",
                param=name,
            )

    chat: dict[str, Any] = {"model": model, "messages": _messages(body)}
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
        choice = body.get("tool_choice")
        if choice is not None:
            chat["tool_choice"] = _tool_choice(choice)
        parallel = body.get("parallel_tool_calls")
        if parallel is not None:
            if not isinstance(parallel, bool):
                raise _invalid_type("parallel_tool_calls", "a boolean", parallel)
            chat["parallel_tool_calls"] = parallel
    elif body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"])  # still validated; chat refuses it without tools
    _text(body.get("text"), chat)
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise _invalid_type("max_output_tokens", "an integer", limit)
        chat["max_completion_tokens"] = limit
    _reasoning(body.get("reasoning"), chat)
    _include(body, chat)
    _refuse_the_rest(body)
    for key, value in body.items():
        if key not in _HANDLED:
            chat[key] = value  # fields chat knows too (temperature, top_p, user, ...)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid_type("stream", "a boolean", stream)
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # response.completed carries usage
    return chat


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _invalid_type("instructions", "a string", instructions)
        if instructions:
            messages.append({"role": "system", "content": instructions})
    raw = body.get("input")
    if raw is None:
        if not messages:
            raise InvalidRequestError("Missing required parameter: 'input'.", param="input")
    elif isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            _item(messages, item, f"input[{i}]")
    else:
        raise _invalid_type("input", "a string or an array of input items", raw)
    if not messages:
        raise InvalidRequestError(
            "'input' has nothing chat completions can be asked: no message, function call or "
            "function call output.",
            param="input",
        )
    return messages


def _item(messages: list[dict[str, Any]], item: Any, where: str) -> None:
    """Append one input item to the chat messages (an assistant turn's message and function
    calls fold into one chat assistant message, as chat wants them)."""
    if not isinstance(item, dict):
        raise _invalid_type(where, "an input item object", item)
    kind = item.get("type")
    if kind is None:
        if "role" in item:
            kind = "message"
        elif "id" in item:
            kind = "item_reference"  # {"id": ...} alone refers to a stored item
        else:
            raise InvalidRequestError(
                f"Missing required parameter: '{where}.type' (or '{where}.role' for a message).",
                param=f"{where}.type",
            )
    if kind == "message":
        _message(messages, item, where)
    elif kind == "function_call":
        call_id = _required_str(item, "call_id", where)
        name = _required_str(item, "name", where)
        arguments = item.get("arguments")
        if not isinstance(arguments, str):
            raise _invalid_type(f"{where}.arguments", "a string", arguments)
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        call_id = _required_str(item, "call_id", where)
        output = item.get("output")
        if isinstance(output, list):
            content: Any = [
                _tool_output_part(p, f"{where}.output[{j}]") for j, p in enumerate(output)
            ]
        elif isinstance(output, str):
            content = output
        else:
            raise _invalid_type(f"{where}.output", "a string or an array of content parts", output)
        messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
    elif kind == "reasoning":
        return  # a previous turn's reasoning: chat has no place for it (see the docstring)
    elif kind == "item_reference":
        raise InvalidRequestError(
            f"'{where}' refers to a stored item, which needs OpenAI's stored state: it works only "
            "when the model's target speaks the Responses API natively, and this request is "
            "translated to chat completions.",
            param=where,
        )
    elif isinstance(kind, str):
        raise InvalidRequestError(
            f"'{where}.type': input items of type {kind!r} cannot be translated to chat "
            "completions (only messages, function_call, function_call_output and reasoning "
            "items can).",
            param=f"{where}.type",
        )
    else:
        raise _invalid_type(f"{where}.type", "a string", kind)


def _message(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    role = item.get("role")
    if role is None:
        raise InvalidRequestError(
            f"Missing required parameter: '{where}.role'.", param=f"{where}.role"
        )
    chat_role = _ROLES.get(role) if isinstance(role, str) else None
    if chat_role is None:
        raise InvalidRequestError(
            f"Invalid value for '{where}.role': {role!r}; expected 'user', 'assistant', "
            "'system' or 'developer'.",
            param=f"{where}.role",
        )
    content = item.get("content")
    if content is None:
        raise InvalidRequestError(
            f"Missing required parameter: '{where}.content'.", param=f"{where}.content"
        )
    if not isinstance(content, (str, list)):
        raise _invalid_type(f"{where}.content", "a string or an array of content parts", content)
    if chat_role == "assistant":
        text, refusal = _assistant_content(content, where)
        if text is None and refusal is None:
            text = ""  # chat wants content on an assistant message without tool calls
        last = messages[-1] if messages else None
        if (
            last is not None
            and last["role"] == "assistant"
            and last.get("tool_calls")
            and last.get("content") is None
            and "refusal" not in last
        ):
            target = last  # the same turn's function calls came first
        else:
            target = {"role": "assistant", "content": None}
            messages.append(target)
        target["content"] = text
        if refusal is not None:
            target["refusal"] = refusal
        return
    if isinstance(content, str):
        messages.append({"role": chat_role, "content": content})
        return
    parts = [
        _system_part(p, f"{where}.content[{j}]")
        if chat_role == "system"
        else _user_part(p, f"{where}.content[{j}]")
        for j, p in enumerate(content)
    ]
    if len(parts) == 1 and parts[0]["type"] == "text":
        messages.append({"role": chat_role, "content": parts[0]["text"]})  # widest support
    else:
        messages.append({"role": chat_role, "content": parts})


def _part_type(part: Any, where: str) -> str:
    if not isinstance(part, dict):
        raise _invalid_type(where, "a content part object", part)
    kind = part.get("type")
    if kind is None:
        raise InvalidRequestError(
            f"Missing required parameter: '{where}.type'.", param=f"{where}.type"
        )
    if not isinstance(kind, str):
        raise _invalid_type(f"{where}.type", "a string", kind)
    return kind


def _text_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    text = part.get("text")
    if not isinstance(text, str):
        raise _invalid_type(f"{where}.text", "a string", text)
    return {"type": "text", "text": text}


def _user_part(part: Any, where: str) -> dict[str, Any]:
    kind = _part_type(part, where)
    if kind == "input_text":
        return _text_part(part, where)
    if kind == "input_image":
        if part.get("file_id") is not None:
            raise InvalidRequestError(
                f"'{where}.file_id': an image by file id cannot be translated to chat "
                "completions; send it as 'image_url' (a URL or a base64 data URL).",
                param=f"{where}.file_id",
            )
        url = part.get("image_url")
        if url is None:
            raise InvalidRequestError(
                f"Missing required parameter: '{where}.image_url'.", param=f"{where}.image_url"
            )
        if not isinstance(url, str):
            raise _invalid_type(f"{where}.image_url", "a string", url)
        image: dict[str, Any] = {"url": url}
        detail = part.get("detail")
        if detail is not None:
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if part.get("file_url") is not None:
            raise InvalidRequestError(
                f"'{where}.file_url': a file by URL cannot be translated to chat completions; "
                "send its content as 'file_data' (a base64 data URL).",
                param=f"{where}.file_url",
            )
        file = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k) is not None}
        if "file_data" not in file and "file_id" not in file:
            raise InvalidRequestError(
                f"Missing required parameter: '{where}.file_data' (or '{where}.file_id').",
                param=f"{where}.file_data",
            )
        return {"type": "file", "file": file}
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict):
            raise _invalid_type(f"{where}.input_audio", "an object", audio)
        return {"type": "input_audio", "input_audio": audio}
    raise InvalidRequestError(
        f"Invalid value for '{where}.type': {kind!r}; a user message takes 'input_text', "
        "'input_image', 'input_file' or 'input_audio' parts.",
        param=f"{where}.type",
    )


def _system_part(part: Any, where: str) -> dict[str, Any]:
    kind = _part_type(part, where)
    if kind != "input_text":
        raise InvalidRequestError(
            f"Invalid value for '{where}.type': {kind!r}; a system or developer message takes "
            "only 'input_text' parts when translated to chat completions.",
            param=f"{where}.type",
        )
    return _text_part(part, where)


def _tool_output_part(part: Any, where: str) -> dict[str, Any]:
    kind = _part_type(part, where)
    if kind != "input_text":
        raise InvalidRequestError(
            f"Invalid value for '{where}.type': {kind!r}; chat completions takes only text as "
            "a tool's output ('input_text' parts).",
            param=f"{where}.type",
        )
    return _text_part(part, where)


def _assistant_content(content: str | list[Any], where: str) -> tuple[str | None, str | None]:
    """A previous assistant turn's text and refusal (chat keeps them apart)."""
    if isinstance(content, str):
        return content, None
    texts: list[str] = []
    refusals: list[str] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = _part_type(part, here)
        if kind in ("output_text", "input_text"):
            texts.append(_text_part(part, here)["text"])
        elif kind == "refusal":
            refusal = part.get("refusal")
            if not isinstance(refusal, str):
                raise _invalid_type(f"{here}.refusal", "a string", refusal)
            refusals.append(refusal)
        else:
            raise InvalidRequestError(
                f"Invalid value for '{here}.type': {kind!r}; an assistant message takes "
                "'output_text' and 'refusal' parts.",
                param=f"{here}.type",
            )
    return ("".join(texts) if texts else None), ("".join(refusals) if refusals else None)


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _invalid_type("tools", "an array of tools", raw)
    tools = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _invalid_type(where, "a tool object", tool)
        kind = tool.get("type")
        if kind != "function":
            if kind is None:
                raise InvalidRequestError(
                    f"Missing required parameter: '{where}.type'.", param=f"{where}.type"
                )
            raise InvalidRequestError(
                f"'{where}.type': tools of type {kind!r} cannot be translated to chat "
                "completions; only 'function' tools can (the others run inside OpenAI's "
                "Responses API).",
                param=f"{where}.type",
            )
        function: dict[str, Any] = {"name": _required_str(tool, "name", where)}
        description = tool.get("description")
        if description is not None:
            function["description"] = description
        parameters = tool.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise _invalid_type(f"{where}.parameters", "a JSON schema object", parameters)
            function["parameters"] = parameters
        strict = tool.get("strict")
        if strict is not None:
            function["strict"] = strict
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: Any) -> Any:
    if isinstance(raw, str):
        if raw not in _TOOL_CHOICES:
            raise InvalidRequestError(
                f"Invalid value for 'tool_choice': {raw!r}; expected 'auto', 'none', "
                "'required' or a function.",
                param="tool_choice",
            )
        return raw
    if not isinstance(raw, dict):
        raise _invalid_type("tool_choice", "a string or an object", raw)
    kind = raw.get("type")
    if kind == "function":
        return {"type": "function", "function": {"name": _required_str(raw, "name", "tool_choice")}}
    if kind == "allowed_tools":
        mode = raw.get("mode")
        if mode not in ("auto", "required"):
            raise InvalidRequestError(
                f"Invalid value for 'tool_choice.mode': {mode!r}; expected 'auto' or 'required'.",
                param="tool_choice.mode",
            )
        listed = raw.get("tools")
        if not isinstance(listed, list):
            raise _invalid_type("tool_choice.tools", "an array of tools", listed)
        allowed = []
        for i, tool in enumerate(listed):
            where = f"tool_choice.tools[{i}]"
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise InvalidRequestError(
                    f"Invalid value for '{where}': only function tools can be allowed when "
                    "translated to chat completions.",
                    param=where,
                )
            allowed.append(
                {"type": "function", "function": {"name": _required_str(tool, "name", where)}}
            )
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": allowed}}
    raise InvalidRequestError(
        f"Invalid value for 'tool_choice.type': {kind!r}; only 'function' and 'allowed_tools' "
        "choices can be translated to chat completions.",
        param="tool_choice.type",
    )


def _text(raw: Any, chat: dict[str, Any]) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise _invalid_type("text", "an object", raw)
    verbosity = raw.get("verbosity")
    if verbosity is not None:
        chat["verbosity"] = verbosity
    fmt = raw.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise _invalid_type("text.format", "an object", fmt)
    kind = fmt.get("type")
    if kind == "text":
        return
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
        return
    if kind == "json_schema":
        name = _required_str(fmt, "name", "text.format")
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            if schema is None:
                raise InvalidRequestError(
                    "Missing required parameter: 'text.format.schema'.", param="text.format.schema"
                )
            raise _invalid_type("text.format.schema", "a JSON schema object", schema)
        spec: dict[str, Any] = {"name": name, "schema": schema}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        chat["response_format"] = {"type": "json_schema", "json_schema": spec}
        return
    raise InvalidRequestError(
        f"Invalid value for 'text.format.type': {kind!r}; expected 'text', 'json_schema' or "
        "'json_object'.",
        param="text.format.type",
    )


def _reasoning(raw: Any, chat: dict[str, Any]) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise _invalid_type("reasoning", "an object", raw)
    mode = raw.get("mode")
    if mode is not None and mode != "standard":
        raise InvalidRequestError(
            f"'reasoning.mode': {mode!r} cannot be translated to chat completions.",
            param="reasoning.mode",
        )
    effort = raw.get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort


def _include(body: dict[str, Any], chat: dict[str, Any]) -> None:
    raw = body.get("include")
    logprobs = False
    top = body.get("top_logprobs")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool)):
        raise _invalid_type("top_logprobs", "an integer", top)
    if raw is not None:
        if not isinstance(raw, list):
            raise _invalid_type("include", "an array of strings", raw)
        for i, value in enumerate(raw):
            if value == _LOGPROBS_INCLUDE:
                logprobs = True
            elif value not in _INCLUDE_DROPPED:
                raise InvalidRequestError(
                    f"Invalid value for 'include[{i}]': {value!r} cannot be served when the "
                    "request is translated to chat completions.",
                    param=f"include[{i}]",
                )
    if logprobs or top:  # alternatives asked for: their logprobs come with them
        chat["logprobs"] = True
        if top:
            chat["top_logprobs"] = top


def _refuse_the_rest(body: dict[str, Any]) -> None:
    if body.get("prompt") is not None:
        raise InvalidRequestError(
            "'prompt' refers to a prompt template stored at OpenAI: it works only when the "
            "model's target speaks the Responses API natively, and this request is translated "
            "to chat completions.",
            param="prompt",
        )
    if body.get("context_management") is not None:
        raise InvalidRequestError(
            "'context_management' (server-side compaction) cannot be translated to chat "
            "completions.",
            param="context_management",
        )
    truncation = body.get("truncation")
    if truncation not in (None, "auto", "disabled"):
        raise InvalidRequestError(
            f"Invalid value for 'truncation': {truncation!r}; expected 'auto' or 'disabled'.",
            param="truncation",
        )
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidRequestError(
            "'n': a response has one answer; ask several times for several.", param="n"
        )


def _stateful(name: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"'{name}' needs OpenAI's stored state: it works only when the model's target speaks "
        "the Responses API natively, and this request is translated to chat completions.",
        param=name,
    )


def _required_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        raise InvalidRequestError(
            f"Missing required parameter: '{where}.{key}'.", param=f"{where}.{key}"
        )
    if not isinstance(value, str) or not value:
        raise _invalid_type(f"{where}.{key}", "a non-empty string", value)
    return value


def _invalid_type(param: str, expected: str, got: Any) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {expected}, but got {_kind(got)} instead.",
        param=param,
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --- the answer ----------------------------------------------------------------------------


def from_chat(
    answer: dict[str, Any], request: dict[str, Any], *, response_id: str, created_at: int
) -> dict[str, Any]:
    """The `response` object for a whole chat completion answering `request` (the client's
    Responses body)."""
    ids = _Ids(response_id)
    output: list[dict[str, Any]] = []
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    if not isinstance(choice, dict):
        choice = {}
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    finish = choice.get("finish_reason")
    finish = finish if isinstance(finish, str) else None
    status = "incomplete" if finish in _INCOMPLETE else "completed"
    reasoning = _reasoning_text(message)
    if reasoning:
        output.append(_reasoning_item(ids.item("rs", len(output)), reasoning))
    content = message.get("content")
    text = content if isinstance(content, str) else _joined_text(content)
    refusal = message.get("refusal")
    refusal = refusal if isinstance(refusal, str) and refusal else None
    calls = message.get("tool_calls")
    calls = calls if isinstance(calls, list) else []
    if text or refusal or not (calls or output):
        parts: list[dict[str, Any]] = []
        if text or not refusal:
            parts.append(_output_text(text or "", _logprobs(choice.get("logprobs"))))
        if refusal:
            parts.append({"type": "refusal", "refusal": refusal})
        output.append(_message_item(ids.item("msg", len(output)), parts, status))
    for call in calls:
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        index = len(output)
        output.append(
            _call_item(
                ids.item("fc", index),
                _str(call.get("id")) or ids.item("call", index),
                _str(function.get("name")),
                _str(function.get("arguments")),
                "completed",
            )
        )
    response = _skeleton(request, response_id, created_at)
    response["status"] = status
    response["output"] = output
    if finish in _INCOMPLETE:
        response["incomplete_details"] = {"reason": _INCOMPLETE[finish]}
    response["usage"] = _usage_json(Usage.from_json(answer.get("usage")))
    return response


class StreamFromChat:
    """A chat completion stream, chunk by chunk, as the Responses event stream.

    `start()` writes `response.created` and `response.in_progress`; `feed()` one parsed chat
    chunk's events (items open as their first delta arrives: reasoning, then the message, then
    one `function_call` per chat tool call, each closed when the chat finish reason comes);
    `finish()` the closing `response.completed` (or `response.incomplete`) with the usage;
    `fail()` a `response.failed` and an `error` event for a failure after the first byte.
    Function calls stay open until the finish reason, so an upstream that interleaves the
    deltas of parallel calls still yields whole arguments. Only choice 0 is read (`to_chat`
    never asks for more)."""

    __slots__ = (
        "_call_by_index",
        "_calls",
        "_created_at",
        "_ended",
        "_finish",
        "_ids",
        "_message",
        "_output",
        "_reasoning",
        "_request",
        "_response_id",
        "_seq",
        "_started",
        "_usage_raw",
    )

    def __init__(self, request: dict[str, Any], *, response_id: str, created_at: int) -> None:
        self._request = request
        self._response_id = response_id
        self._created_at = created_at
        self._ids = _Ids(response_id)
        self._seq = 0
        self._started = False
        self._ended = False
        #: the output items in order: a dict once closed, the open item's state before
        self._output: list[dict[str, Any] | _Message | _Reasoning | _Call] = []
        self._message: _Message | None = None
        self._reasoning: _Reasoning | None = None
        self._calls: list[_Call] = []  # open function calls
        self._call_by_index: dict[int, _Call] = {}
        self._finish: str | None = None
        self._usage_raw: Any = None

    # -- lifecycle --

    def start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        response = _skeleton(self._request, self._response_id, self._created_at)
        return self._event({"type": "response.created", "response": response}) + self._event(
            {"type": "response.in_progress", "response": response}
        )

    def feed(self, chunk: dict[str, Any]) -> bytes:
        if self._ended or self._finish is not None:
            if not self._ended and chunk.get("usage"):
                self._usage_raw = chunk["usage"]
            return b""
        out = b"" if self._started else self.start()
        usage = chunk.get("usage")
        if usage:
            self._usage_raw = usage  # read once, at the end
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return out
        choice = choices[0]
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            return out
        delta = choice.get("delta")
        if delta and isinstance(delta, dict):
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                out += self._reasoning_delta(reasoning)
            content = delta.get("content")
            if content and isinstance(content, str):
                message = self._message
                logprobs = choice.get("logprobs")
                if message is not None and message.kind == "output_text" and not logprobs:
                    # the hot path: the event's pre-built prefix, the delta, the number
                    message.pieces.append(content)
                    seq = self._seq
                    self._seq = seq + 1
                    out += (
                        message.head
                        + dumps(content)
                        + b',"sequence_number":'
                        + str(seq).encode()
                        + b"}\n\n"
                    )
                else:
                    out += self._content_delta("output_text", content, logprobs)
            refusal = delta.get("refusal")
            if refusal and isinstance(refusal, str):
                out += self._content_delta("refusal", refusal, None)
            calls = delta.get("tool_calls")
            if calls and isinstance(calls, list):
                for position, call in enumerate(calls):
                    if isinstance(call, dict):
                        out += self._call_delta(call, position)
        finish = choice.get("finish_reason")
        if finish:
            self._finish = finish = str(finish)
            out += self._close_all("incomplete" if finish in _INCOMPLETE else "completed")
        return out

    def finish(self, usage: Usage | None) -> bytes:
        """The closing events; `usage` is the answer's usage when the caller read it (else the
        one the chunks carried, else null)."""
        if self._ended:
            return b""
        out = b"" if self._started else self.start()
        out += self._close_all("completed")
        if not self._output:  # an answer with nothing in it still has its (empty) message
            out += self._content_delta("output_text", "", None) + self._close_all("completed")
        self._ended = True
        if usage is None:
            usage = Usage.from_json(self._usage_raw)
        response = _skeleton(self._request, self._response_id, self._created_at)
        response["output"] = self._items("completed")
        response["usage"] = _usage_json(usage)
        finish = self._finish
        if finish in _INCOMPLETE:
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": _INCOMPLETE[finish]}
            return out + self._event({"type": "response.incomplete", "response": response})
        response["status"] = "completed"
        return out + self._event({"type": "response.completed", "response": response})

    def fail(self, err: GatewayError) -> bytes:
        """A failure after the first byte: `response.failed` (the output so far, open items
        `incomplete`, and the error) then an `error` event. The `error` event also carries the
        error object under `error`, on which the openai SDKs raise."""
        if self._ended:
            return b""
        out = b"" if self._started else self.start()
        self._ended = True
        response = _skeleton(self._request, self._response_id, self._created_at)
        response["status"] = "failed"
        response["output"] = self._items("incomplete")
        response["error"] = {
            "code": _failure_code(err),
            "message": err.message,
            "param": err.param,
            "type": err.type,
        }
        response["usage"] = _usage_json(Usage.from_json(self._usage_raw))
        out += self._event({"type": "response.failed", "response": response})
        error = {"type": err.type, "code": err.code, "message": err.message, "param": err.param}
        return out + self._event(
            {
                "type": "error",
                "code": err.code,
                "message": err.message,
                "param": err.param,
                "error": error,
            }
        )

    # -- items --

    def _reasoning_delta(self, text: str) -> bytes:
        out = b""
        item = self._reasoning
        if item is None:
            out += self._close_message("completed")
            index = len(self._output)
            item = _Reasoning(self._ids.item("rs", index), index)
            self._reasoning = item
            self._output.append(item)
            out += self._event(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {"id": item.id, "type": "reasoning", "summary": [], "content": []},
                }
            )
            out += self._event(
                {
                    "type": "response.content_part.added",
                    "item_id": item.id,
                    "output_index": index,
                    "content_index": 0,
                    "part": {"type": "reasoning_text", "text": ""},
                }
            )
        item.pieces.append(text)
        return out + self._event(
            {
                "type": "response.reasoning_text.delta",
                "item_id": item.id,
                "output_index": item.index,
                "content_index": 0,
                "delta": text,
            }
        )

    def _content_delta(self, kind: str, text: str, logprobs: Any) -> bytes:
        """A delta of the message's text or refusal, opening the message or a new part."""
        out = b""
        message = self._message
        if message is None:
            out += self._close_reasoning()
            index = len(self._output)
            message = _Message(self._ids.item("msg", index), index)
            self._message = message
            self._output.append(message)
            out += self._event(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {
                        "id": message.id,
                        "type": "message",
                        "status": "in_progress",
                        "role": "assistant",
                        "content": [],
                    },
                }
            )
        if message.kind != kind:
            out += self._close_part(message)
            message.kind = kind
            part: dict[str, Any] = (
                _output_text("", [])
                if kind == "output_text"
                else {"type": "refusal", "refusal": ""}
            )
            out += self._event(
                {
                    "type": "response.content_part.added",
                    "item_id": message.id,
                    "output_index": message.index,
                    "content_index": len(message.parts),
                    "part": part,
                }
            )
            message.head = (
                b"event: response.output_text.delta\ndata: "
                b'{"type":"response.output_text.delta","item_id":'
                + dumps(message.id)
                + b',"output_index":'
                + str(message.index).encode()
                + b',"content_index":'
                + str(len(message.parts)).encode()
                + b',"logprobs":[],"delta":'
            )
        if not text:
            return out
        message.pieces.append(text)
        if kind == "refusal":
            return out + self._event(
                {
                    "type": "response.refusal.delta",
                    "item_id": message.id,
                    "output_index": message.index,
                    "content_index": len(message.parts),
                    "delta": text,
                }
            )
        probs = _logprobs(logprobs)
        message.logprobs.extend(probs)
        return out + self._event(
            {
                "type": "response.output_text.delta",
                "item_id": message.id,
                "output_index": message.index,
                "content_index": len(message.parts),
                "logprobs": [_delta_logprob(p) for p in probs],
                "delta": text,
            }
        )

    def _call_delta(self, delta: dict[str, Any], position: int) -> bytes:
        index = delta.get("index")
        if not isinstance(index, int):
            index = position
        function = delta.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        arguments = function.get("arguments")
        out = b""
        call = self._call_by_index.get(index)
        if call is None:
            out += self._close_reasoning() + self._close_message("completed")
            output_index = len(self._output)
            call = _Call(
                self._ids.item("fc", output_index),
                output_index,
                _str(delta.get("id")) or self._ids.item("call", output_index),
            )
            self._call_by_index[index] = call
            self._calls.append(call)
            self._output.append(call)
        if name and isinstance(name, str) and not call.opened:
            call.name = name
        if not call.opened and call.name:
            call.opened = True
            out += self._event(
                {
                    "type": "response.output_item.added",
                    "output_index": call.index,
                    "item": _call_item(call.id, call.call_id, call.name, "", "in_progress"),
                }
            )
            if call.pieces:  # arguments that came before the name
                out += self._arguments_delta(call, "".join(call.pieces))
        if arguments and isinstance(arguments, str):
            call.pieces.append(arguments)
            if call.opened:
                out += self._arguments_delta(call, arguments)
        return out

    def _arguments_delta(self, call: _Call, text: str) -> bytes:
        return self._event(
            {
                "type": "response.function_call_arguments.delta",
                "item_id": call.id,
                "output_index": call.index,
                "delta": text,
            }
        )

    def _close_all(self, status: str) -> bytes:
        return self._close_reasoning() + self._close_message(status) + self._close_calls(status)

    def _close_reasoning(self) -> bytes:
        item = self._reasoning
        if item is None:
            return b""
        self._reasoning = None
        text = "".join(item.pieces)
        out = self._event(
            {
                "type": "response.reasoning_text.done",
                "item_id": item.id,
                "output_index": item.index,
                "content_index": 0,
                "text": text,
            }
        )
        out += self._event(
            {
                "type": "response.content_part.done",
                "item_id": item.id,
                "output_index": item.index,
                "content_index": 0,
                "part": {"type": "reasoning_text", "text": text},
            }
        )
        done = _reasoning_item(item.id, text)
        self._output[item.index] = done
        return out + self._event(
            {"type": "response.output_item.done", "output_index": item.index, "item": done}
        )

    def _close_part(self, message: _Message) -> bytes:
        kind = message.kind
        if kind is None:
            return b""
        text = "".join(message.pieces)
        message.pieces = []
        content_index = len(message.parts)
        if kind == "output_text":
            part = _output_text(text, message.logprobs)
            message.logprobs = []
            out = self._event(
                {
                    "type": "response.output_text.done",
                    "item_id": message.id,
                    "output_index": message.index,
                    "content_index": content_index,
                    "logprobs": [_delta_logprob(p) for p in part["logprobs"]],
                    "text": text,
                }
            )
        else:
            part = {"type": "refusal", "refusal": text}
            out = self._event(
                {
                    "type": "response.refusal.done",
                    "item_id": message.id,
                    "output_index": message.index,
                    "content_index": content_index,
                    "refusal": text,
                }
            )
        message.parts.append(part)
        message.kind = None
        return out + self._event(
            {
                "type": "response.content_part.done",
                "item_id": message.id,
                "output_index": message.index,
                "content_index": content_index,
                "part": part,
            }
        )

    def _close_message(self, status: str) -> bytes:
        message = self._message
        if message is None:
            return b""
        self._message = None
        out = self._close_part(message)
        done = _message_item(message.id, message.parts, status)
        self._output[message.index] = done
        return out + self._event(
            {"type": "response.output_item.done", "output_index": message.index, "item": done}
        )

    def _close_calls(self, status: str) -> bytes:
        out = b""
        for call in self._calls:
            if not call.opened:  # never named: announce it now, so its done event has an add
                call.opened = True
                out += self._event(
                    {
                        "type": "response.output_item.added",
                        "output_index": call.index,
                        "item": _call_item(call.id, call.call_id, call.name, "", "in_progress"),
                    }
                )
                if call.pieces:
                    out += self._arguments_delta(call, "".join(call.pieces))
            arguments = "".join(call.pieces)
            out += self._event(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": call.id,
                    "output_index": call.index,
                    "arguments": arguments,
                }
            )
            done = _call_item(call.id, call.call_id, call.name, arguments, status)
            self._output[call.index] = done
            out += self._event(
                {"type": "response.output_item.done", "output_index": call.index, "item": done}
            )
        self._calls = []
        return out

    def _items(self, open_status: str) -> list[dict[str, Any]]:
        """The output as it stands; items still open are rendered with `open_status`."""
        items: list[dict[str, Any]] = []
        for item in self._output:
            if isinstance(item, dict):
                items.append(item)
            elif isinstance(item, _Reasoning):
                items.append(_reasoning_item(item.id, "".join(item.pieces)))
            elif isinstance(item, _Message):
                parts = list(item.parts)
                if item.kind == "output_text":
                    parts.append(_output_text("".join(item.pieces), item.logprobs))
                elif item.kind == "refusal":
                    parts.append({"type": "refusal", "refusal": "".join(item.pieces)})
                items.append(_message_item(item.id, parts, open_status))
            else:
                items.append(
                    _call_item(item.id, item.call_id, item.name, "".join(item.pieces), open_status)
                )
        return items

    def _event(self, payload: dict[str, Any]) -> bytes:
        payload["sequence_number"] = self._seq
        self._seq += 1
        return sse.encode(dumps(payload), event=payload["type"])


class _Message:
    __slots__ = ("head", "id", "index", "kind", "logprobs", "parts", "pieces")

    def __init__(self, item_id: str, index: int) -> None:
        self.id = item_id
        self.index = index
        self.parts: list[dict[str, Any]] = []  # closed content parts
        self.kind: str | None = None  # the open part: "output_text" | "refusal" | None
        self.pieces: list[str] = []  # the open part's deltas
        self.logprobs: list[dict[str, Any]] = []  # the open text part's logprobs
        self.head = b""  # the output_text.delta event up to its delta value


class _Reasoning:
    __slots__ = ("id", "index", "pieces")

    def __init__(self, item_id: str, index: int) -> None:
        self.id = item_id
        self.index = index
        self.pieces: list[str] = []


class _Call:
    __slots__ = ("call_id", "id", "index", "name", "opened", "pieces")

    def __init__(self, item_id: str, index: int, call_id: str) -> None:
        self.id = item_id
        self.index = index
        self.call_id = call_id
        self.name = ""
        self.opened = False  # output_item.added sent (waits for the name)
        self.pieces: list[str] = []  # the arguments' deltas


class _Ids:
    """Output item ids derived from the response id: `msg_<suffix>_<n>`, `fc_...`, `rs_...`."""

    __slots__ = ("suffix",)

    def __init__(self, response_id: str) -> None:
        self.suffix = response_id.removeprefix("resp_")

    def item(self, prefix: str, index: int) -> str:
        return f"{prefix}_{self.suffix}_{index}"


def _skeleton(request: dict[str, Any], response_id: str, created_at: int) -> dict[str, Any]:
    """A `response` object echoing the request's parameters (OpenAI's defaults where absent),
    status `in_progress`, no output yet."""
    text = request.get("text")
    text = dict(text) if isinstance(text, dict) else {}
    if text.get("format") is None:
        text["format"] = {"type": "text"}
    reasoning = request.get("reasoning")
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    parallel = request.get("parallel_tool_calls")
    metadata = request.get("metadata")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "model": request.get("model"),
        "output": [],
        "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
        "previous_response_id": request.get("previous_response_id"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": request.get("safety_identifier"),
        "service_tier": request.get("service_tier"),
        "store": False,
        "temperature": _number(request.get("temperature"), 1.0),
        "text": text,
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_logprobs": request.get("top_logprobs") or 0,
        "top_p": _number(request.get("top_p"), 1.0),
        "truncation": request.get("truncation") or "disabled",
        "usage": None,
        "user": request.get("user"),
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


def _number(value: Any, default: float) -> Any:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _joined_text(content: Any) -> str:
    """Chat content given as parts (some upstreams answer so): the text parts joined."""
    if not isinstance(content, list):
        return ""
    return "".join(
        p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def _reasoning_text(message: dict[str, Any]) -> str:
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _output_text(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": parts,
    }


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def _logprobs(raw: Any) -> list[dict[str, Any]]:
    """Chat's `choice.logprobs` as Responses `output_text.logprobs` (same fields; `bytes` a
    list)."""
    if not isinstance(raw, dict):
        return []
    content = raw.get("content")
    if not isinstance(content, list):
        return []
    out = []
    for entry in content:
        if not isinstance(entry, dict):
            continue
        top = entry.get("top_logprobs")
        out.append(
            {
                "token": _str(entry.get("token")),
                "bytes": entry.get("bytes") or [],
                "logprob": entry.get("logprob") or 0.0,
                "top_logprobs": [
                    {
                        "token": _str(t.get("token")),
                        "bytes": t.get("bytes") or [],
                        "logprob": t.get("logprob") or 0.0,
                    }
                    for t in (top if isinstance(top, list) else [])
                    if isinstance(t, dict)
                ],
            }
        )
    return out


def _delta_logprob(entry: dict[str, Any]) -> dict[str, Any]:
    """A logprob as the delta/done events carry it (no `bytes`)."""
    return {
        "token": entry["token"],
        "logprob": entry["logprob"],
        "top_logprobs": [
            {"token": t["token"], "logprob": t["logprob"]} for t in entry["top_logprobs"]
        ],
    }


def _failure_code(err: GatewayError) -> str:
    """`response.error.code` takes OpenAI's own codes: a rate limit says so, the rest is a
    server error (the `error` event that follows carries the gateway's exact code)."""
    return (
        "rate_limit_exceeded"
        if err.status == 429 and err.type != "insufficient_quota"
        else "server_error"
    )


def _usage_json(value: Usage | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {
        "input_tokens": value.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": value.cached_tokens,
            "cache_write_tokens": value.cache_write_tokens,
        },
        "output_tokens": value.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": value.reasoning_tokens},
        "total_tokens": value.total_tokens,
    }


# --- usage ---------------------------------------------------------------------------------


def usage(data: object) -> Usage | None:
    """A Responses `usage` object in the canonical accounting (`input_tokens` already includes
    the cached tokens, `output_tokens` the reasoning tokens); None when absent or malformed."""
    if not isinstance(data, dict):
        return None
    try:
        prompt = int(data.get("input_tokens") or 0)
        completion = int(data.get("output_tokens") or 0)
        total = int(data.get("total_tokens") or (prompt + completion))
        cached = written = reasoning = 0
        details = data.get("input_tokens_details")
        if isinstance(details, dict):
            cached = int(details.get("cached_tokens") or 0)
            written = int(details.get("cache_write_tokens") or 0)
        details = data.get("output_tokens_details")
        if isinstance(details, dict):
            reasoning = int(details.get("reasoning_tokens") or 0)
    except (TypeError, ValueError, OverflowError):
        return None
    if min(prompt, completion, total, cached, written, reasoning) < 0:
        return None  # a negative count would credit the tenant's quota
    return Usage(prompt, completion, total, cached, written, reasoning)


#: The events whose `response` carries the final usage of a native Responses stream.
_FINAL_EVENTS: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})


def usage_of_event(event: object) -> Usage | None:
    """The usage in one parsed native stream event (`response.completed`, `.incomplete` or
    `.failed`); None for any other event."""
    if not isinstance(event, dict) or event.get("type") not in _FINAL_EVENTS:
        return None
    response = event.get("response")
    return usage(response.get("usage")) if isinstance(response, dict) else None
