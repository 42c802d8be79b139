"""The Responses request turned into a chat body (`to_chat`); see `aigw.dialects.responses`."""

from __future__ import annotations

from typing import Any, Final

from aigw.errors import InvalidRequestError

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
_STATEFUL_SET: Final = frozenset(STATEFUL)

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


def stateless(body: dict[str, Any]) -> tuple[dict[str, Any], InvalidRequestError | None]:
    """`body` without its stateful parameters, and the refusal a translation gives them (None
    when it sets none). The request is still translated for the hooks, quota and cache to read,
    but only a target that speaks the Responses API natively may answer it (the state is its)."""
    if not body.keys() & _STATEFUL_SET:  # the common case: nothing to take out
        return body, None
    refusal = None
    for name in STATEFUL:
        value = body.get(name)
        if value is not None and value is not False:
            refusal = _stateful(name)
            break
    return {k: v for k, v in body.items() if k not in _STATEFUL_SET}, refusal


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
