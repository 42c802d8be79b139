"""Anthropic Messages ⇄ chat, both sides of the gateway.

Client side (a Messages client, a chat target): `to_chat` turns a `POST /v1/messages` body into a
chat body; `from_chat` and `StreamFromChat` turn the chat answer back into a `message` object or
its event stream (`message_start`, `ping`, `content_block_start/delta/stop`, `message_delta`,
`message_stop`); `error_body`/`error_event` write every gateway error in Anthropic's shape.

Provider side (a chat request, a Messages-only target such as api.anthropic.com):
`request_from_chat` builds the Messages request; `response_to_chat` and `StreamToChat` turn the
answer back into chat. `usage()` reads an Anthropic `usage` object; `StreamUsage` reads the usage
of a stream passed through natively.

What has no equivalent on the other side, and what happens to it:

- Messages -> chat. `thinking` / `redacted_thinking` blocks of earlier turns are dropped (a chat
  upstream cannot check their signatures, and most refuse reasoning in their input); the
  `thinking` setting and `output_config.effort` are dropped (`reasoning_effort` is refused by
  chat models that do not reason); `top_k` is dropped (OpenAI refuses unknown fields; it is a
  sampling hint); `cache_control` is dropped (chat has no cache breakpoints). `is_error` on a
  tool result prefixes its text with "Error: ". Images and PDFs inside a tool result go in a
  user message right after the tool messages (chat tool messages carry text only). Server tools
  (`web_search_…`, `bash_…`…), `mcp_servers` and `container` are refused with a 400 naming the
  field: they run on Anthropic's side. `max_tokens` becomes `max_completion_tokens` (OpenAI's
  current name; `max_tokens` is refused by its reasoning models).
- chat -> Messages. System and developer messages, wherever they are, are joined with "\\n" into
  `system` (Anthropic has one system prompt); `temperature` above 1 is clamped to 1; a missing
  `max_completion_tokens`/`max_tokens` becomes `DEFAULT_MAX_TOKENS` (Anthropic requires one);
  `response_format` `json_schema` becomes `output_config.format` (structured outputs), and
  `json_object`, `n` > 1, `logprobs`, audio output and non-function tools are refused with a 400
  naming the field. Sampling hints with no Messages equivalent (`seed`, `presence_penalty`,
  `frequency_penalty`, `logit_bias`, `reasoning_effort`…) are ignored, as Anthropic's own
  OpenAI compatibility layer does. Anthropic fields a chat client may add (`thinking`, `top_k`)
  are passed on.

Thinking from a chat upstream (`reasoning_content`, or `reasoning`) becomes `thinking` blocks
only when the Messages request enabled thinking (as Anthropic answers); they carry an empty
`signature`, which the SDKs accept: a chat upstream has nothing to sign. Sent back, such a block is
dropped again on the way to a chat target, but a native Anthropic target would refuse it.

Hot path: a translated stream event costs one small dict walk and one orjson call; the bytes
around the JSON of each delta are built once per content block.

The translation lives in `client` (a Messages client, a chat target), `target` (a chat request,
a Messages target) and `wire` (the error shapes and the usage accounting both share); this
package is their one public face.
"""

from __future__ import annotations

from typing import Final

from aigw.dialects.messages.client import (
    PING,
    StreamFromChat,
    count_tokens_to_chat,
    from_chat,
    to_chat,
    wants_thinking,
)
from aigw.dialects.messages.target import (
    DEFAULT_MAX_TOKENS,
    StreamToChat,
    StreamUsage,
    finish_reason,
    request_from_chat,
    response_to_chat,
)
from aigw.dialects.messages.wire import (
    ERROR_TYPES,
    chat_usage_json,
    error_body,
    error_event,
    error_to_chat,
    error_type,
    usage,
    usage_json,
)

API: Final = "messages"

__all__ = [
    "API",
    "DEFAULT_MAX_TOKENS",
    "ERROR_TYPES",
    "PING",
    "StreamFromChat",
    "StreamToChat",
    "StreamUsage",
    "chat_usage_json",
    "count_tokens_to_chat",
    "error_body",
    "error_event",
    "error_to_chat",
    "error_type",
    "finish_reason",
    "from_chat",
    "request_from_chat",
    "response_to_chat",
    "to_chat",
    "usage",
    "usage_json",
    "wants_thinking",
]
