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
  The pipeline takes the stateful parameters out first (`stateless`): a request that sets one
  still goes, as it came, to a target that speaks the Responses API natively, and gets their
  400 only when the model has none.
- Every other top-level field chat also understands passes through unchanged.

On the way back, `reasoning_content` (or `reasoning`) from a chat upstream becomes a `reasoning`
output item whose `content` is a `reasoning_text` part (streamed as `response.reasoning_text.*`):
it is the model's raw reasoning, which is what that part means in the Responses API, not a
summary. Refusals become `refusal` parts; a `length` or `content_filter` finish makes the response
`incomplete` (the stream then ends with `response.incomplete`, as OpenAI's does). The answer
echoes the request's parameters with OpenAI's defaults, reports `store: false` (nothing is
stored), and names the model the client asked for.

The translation lives in `request` (the Responses request to chat) and `answer` (chat answers
and streams back to Responses objects and events); this package's face is the whole API.
"""

from __future__ import annotations

from aigw.dialects.responses.answer import StreamFromChat, from_chat, usage, usage_of_event
from aigw.dialects.responses.request import API, STATEFUL, stateless, to_chat

__all__ = [
    "API",
    "STATEFUL",
    "StreamFromChat",
    "from_chat",
    "stateless",
    "to_chat",
    "usage",
    "usage_of_event",
]
