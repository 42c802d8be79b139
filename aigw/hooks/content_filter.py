"""The built-in `content_filter` hook: deny/allow regexes and a prompt length limit.

Options (YAML `{content_filter: {…}}`):

- `deny`: regexes (Python `re` syntax); a request whose text matches any of them is rejected.
- `allow`: regexes; when given, some text of the request must match at least one of them.
- `max_prompt_chars`: most characters of request text in total; 0 = no limit.
- `check_answers`: also check non-streamed answers against `deny` (streams are not checked:
  the client already has the bytes when the answer is complete).

The text of a request is every message's content (strings and `text` parts, whatever the role),
a completion `prompt` (string or strings) or an embedding `input` (string or strings). A
rejection is `ContentFilteredError` (400, code `content_filtered`) naming the rule, raised in
`before_request`, so the request never reaches quota, cache or upstream.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from aigw.errors import ContentFilteredError
from aigw.hooks.base import Hook, RequestContext, ResponseInfo
from aigw.hooks.texts import answer_texts, request_texts

_PARAM = {
    "chat/completions": "messages",
    "completions": "prompt",
    "embeddings": "input",
    "moderations": "input",
    "images/generations": "prompt",
    "audio/speech": "input",
    "audio/transcriptions": "prompt",
    "audio/translations": "prompt",
}


def _compile(kind: str, patterns: object) -> list[tuple[str, re.Pattern[str]]]:
    if patterns is None:
        return []
    if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        raise ValueError(f"content_filter: {kind} must be a list of regexes, got {patterns!r}")
    out: list[tuple[str, re.Pattern[str]]] = []
    for i, pattern in enumerate(patterns):
        if not isinstance(pattern, str):
            raise ValueError(f"content_filter: {kind}[{i}] must be a string, got {pattern!r}")
        try:
            out.append((pattern, re.compile(pattern)))
        except re.error as exc:
            raise ValueError(
                f"content_filter: {kind}[{i}] is not a valid regex {pattern!r}: {exc}"
            ) from None
    return out


class ContentFilterHook(Hook):
    modifies_request = False
    deterministic = True

    def __init__(
        self,
        *,
        deny: Sequence[str] | None = None,
        allow: Sequence[str] | None = None,
        max_prompt_chars: int = 0,
        check_answers: bool = False,
    ) -> None:
        if (
            not isinstance(max_prompt_chars, int)
            or isinstance(max_prompt_chars, bool)
            or max_prompt_chars < 0
        ):
            raise ValueError(
                "content_filter: max_prompt_chars must be an integer >= 0 (0 = no limit), "
                f"got {max_prompt_chars!r}"
            )
        if not isinstance(check_answers, bool):
            raise ValueError(
                f"content_filter: check_answers must be true or false, got {check_answers!r}"
            )
        self.deny = _compile("deny", deny)
        self.allow = _compile("allow", allow)
        super().__init__(
            deny=[p for p, _ in self.deny],
            allow=[p for p, _ in self.allow],
            max_prompt_chars=max_prompt_chars,
            check_answers=check_answers,
        )
        self.max_prompt_chars = max_prompt_chars
        self.check_answers = check_answers

    async def before_request(self, ctx: RequestContext) -> None:
        self.check_request(ctx.endpoint, ctx.body)

    async def after_response(self, ctx: RequestContext, response: ResponseInfo) -> None:
        if self.check_answers and self.deny and response.body is not None:
            self.check_answer(ctx.endpoint, response.body)

    def check_request(self, endpoint: str, body: dict[str, Any]) -> None:
        """Raise ContentFilteredError when the request breaks a rule."""
        texts = request_texts(endpoint, body)
        param = _PARAM.get(endpoint, "messages")
        if self.max_prompt_chars:
            total = sum(len(t) for t in texts)
            if total > self.max_prompt_chars:
                raise ContentFilteredError(
                    f"Request blocked by content filter rule max_prompt_chars: the prompt has "
                    f"{total} characters, more than the limit of {self.max_prompt_chars}.",
                    param=param,
                )
        for i, (pattern, rx) in enumerate(self.deny):
            for text in texts:
                if rx.search(text):
                    raise ContentFilteredError(
                        f"Request blocked by content filter rule deny[{i}] ({pattern!r}).",
                        param=param,
                    )
        if self.allow and not any(rx.search(t) for _, rx in self.allow for t in texts):
            raise ContentFilteredError(
                "Request blocked by content filter rule allow: the prompt matches none of "
                f"the {len(self.allow)} allowed pattern(s).",
                param=param,
            )

    def check_answer(self, endpoint: str, body: bytes) -> None:
        if endpoint == "embeddings":
            return
        texts = answer_texts(body) or []
        for i, (pattern, rx) in enumerate(self.deny):
            for text in texts:
                if rx.search(text):
                    raise ContentFilteredError(
                        f"Answer blocked by content filter rule deny[{i}] ({pattern!r})."
                    )
