"""Server-sent-event pass-through: frame upstream bytes into whole events, pick out usage.

Events are forwarded as whole frames (so an in-band error event can never be spliced into the
middle of one), one write per upstream read. Only events that carry a non-null `usage` are
parsed as JSON; every other chunk is passed through as bytes.

Memory stays flat however long a stream runs: what waits for its end is one unfinished event,
at most `MAX_EVENT` bytes (an upstream that never ends its event gets an `UpstreamError`, 502
before the first byte, an in-band error after), and the copy kept for the cache or an audit
hook is dropped once it passes `max_kept` bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from aigw import jsonutil, sse
from aigw.config import format_size
from aigw.errors import UpstreamError
from aigw.exchange import Usage

#: The largest SSE event (the bytes up to a blank line) the gateway waits for the end of.
MAX_EVENT: Final = sse.MAX_EVENT
#: The default of `StreamTap(max_kept=)`: `server.max_upstream_body`'s default.
MAX_KEPT: Final = 64 * 1024 * 1024

_SEP = sse.SEP
_USAGE_KEY = b'"usage"'
# When the client did not ask for usage, OpenAI sends no usage key at all; upstream we asked for
# it, so every chunk carries `"usage": null`, which is cut out again (cheap bytes.replace).
_NULL_USAGE = (b',"usage":null', b', "usage": null')
_KEY_LEN = len(_USAGE_KEY)
# A real usage object (quotes inside the answer's text are escaped, so text never matches).
_USAGE_OBJECT = (b'"usage":{', b'"usage": {')
# A choice's real finish reason (content chunks carry `"finish_reason":null`).
_FINISH = (b'"finish_reason":"', b'"finish_reason": "')
#: A chat stream's last event, with or without the space.
DONE_MARKERS = (b"data: [DONE]", b"data:[DONE]")
# The finish chunk and [DONE] are among a stream's last events (only usage comes between):
# look for them in the end of each read, not through all of it.
_TAIL = 8192


class StreamTap:
    __slots__ = (
        "_done_markers",
        "_framer",
        "_spaced",
        "_usage_of",
        "chunks",
        "done",
        "events",
        "finished",
        "kept",
        "max_kept",
        "preamble",
        "strip_usage",
        "usage",
    )

    def __init__(
        self,
        *,
        strip_usage: bool,
        collect: bool = False,
        max_kept: int = MAX_KEPT,
        usage_of: Callable[[dict[str, Any]], Usage | None] | None = None,
        done_markers: tuple[bytes, ...] = DONE_MARKERS,
    ) -> None:
        """`usage_of` reads the usage of one parsed event that carries a usage object (default:
        chat's `usage` field); `done_markers` mark a stream's last event (default: `[DONE]`).
        Both are set for a native stream of another dialect."""
        self._usage_of = usage_of or _chat_usage
        self._done_markers = done_markers
        # The unfinished event: "\r\n" already made "\n", except a "\r" at its very end.
        self._framer = sse.Framer(MAX_EVENT)
        self._spaced = False  # the upstream writes JSON with spaces (`"key": value`)
        self.strip_usage = strip_usage
        self.usage: Usage | None = None
        #: Every event, kept only when someone needs the whole answer (cache, audit bodies).
        #: Dropped (None again) once the stream passes `max_kept` bytes: too long to keep whole.
        self.events: list[bytes] | None = [] if collect else None
        self.kept = 0
        self.max_kept = max_kept
        #: `data:` events seen ([DONE] included): the completion-token estimate when a stream
        #: ends without usage is this minus `preamble`, `finished` and `done`.
        self.chunks = 0
        #: 1 when the first event is a role chunk without text (OpenAI, vLLM), else 0
        self.preamble = 0
        #: a finish_reason arrived; its chunk carries no text
        self.finished = False
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """Take upstream bytes; return the whole events to forward now (maybe b"").

        Raises UpstreamError when an event grows past `MAX_EVENT` without ending."""
        try:
            complete = self._framer.feed(chunk)
        except sse.EventTooLarge:
            raise _event_too_large() from None
        if not complete:
            return b""
        # Count event lines, not "data:" substrings: the text itself may say "metadata:", but a
        # raw newline never occurs inside an event's JSON.
        events = complete.count(b"\ndata:") + complete.startswith(b"data:")
        if events and not self.chunks:
            self.preamble = _role_only(complete)
        self.chunks += events
        spaced = self._spaced
        if not spaced and b'": ' in complete[:512]:
            # A spaced upstream (Python's json.dumps) shows it in its first key. Looked for in
            # every read's head until seen, so an early `data: {}` does not hide it; text that
            # happens to hold `": ` only costs the spaced passes, never a missed usage.
            spaced = self._spaced = True
        tail = max(0, len(complete) - _TAIL)
        if not self.finished and (
            complete.find(_FINISH[0], tail) >= 0
            or (spaced and complete.find(_FINISH[1], tail) >= 0)
        ):
            self.finished = True
        if not self.done:
            for marker in self._done_markers:
                if complete.find(marker, tail) >= 0:
                    self.done = True
                    break
        if self.strip_usage:  # cut every `"usage": null` first: one C pass each
            complete = complete.replace(_NULL_USAGE[0], b"")
            if spaced:
                complete = complete.replace(_NULL_USAGE[1], b"")
        if complete.rfind(_USAGE_OBJECT[0]) >= 0 or (
            spaced and complete.rfind(_USAGE_OBJECT[1]) >= 0
        ):
            complete = self._pick_usage(complete)
        if self.events is not None:
            self.kept += len(complete)
            if self.kept > self.max_kept:
                self.events = None  # not cached, no text for audit: the answer goes on
            else:
                self.events.extend(e for e in complete.split(_SEP) if e)
        return complete

    def cut(self, excess: int) -> None:
        """The last `excess` data events fed were not delivered (the stream was cut inside a
        read): count and keep only what the client got."""
        self.chunks -= excess
        events = self.events
        while excess > 0 and events:
            if events.pop().startswith(b"data:"):
                excess -= 1

    def flush(self) -> bytes:
        """Whatever is left at the end of the stream (an unterminated last event)."""
        rest = self._framer.flush()
        return self.feed(rest) if rest else b""

    def _pick_usage(self, complete: bytes) -> bytes:
        """Take the usage out of the events that carry a real usage object (usually one, the
        last), found with bytes.find."""
        for marker in _USAGE_OBJECT:
            pos = 0
            while True:
                idx = complete.find(marker, pos)
                if idx < 0:
                    break
                start = complete.rfind(_SEP, 0, idx)
                start = 0 if start < 0 else start + 2
                end = complete.find(_SEP, idx)
                end = len(complete) if end < 0 else end + 2
                replacement = self._usage_event(complete[start:end])
                complete = complete[:start] + replacement + complete[end:]
                pos = start + len(replacement)
        return complete

    def _usage_event(self, event: bytes) -> bytes:
        """Record the usage of one event; return what the client gets of it (maybe nothing)."""
        data = _event_json(event)
        usage = self._usage_of(data) if data is not None else None
        if data is None or usage is None:
            return event
        self.usage = usage
        if not self.strip_usage:
            return event
        if not data.get("choices"):
            return b""  # the usage-only chunk the client did not ask for
        data.pop("usage", None)
        return sse.encode(jsonutil.dumps(data))


def _chat_usage(data: dict[str, Any]) -> Usage | None:
    return Usage.from_json(data.get("usage"))


def _event_too_large() -> UpstreamError:
    return UpstreamError(
        f"The upstream sent an SSE event over {format_size(MAX_EVENT)} without ending it"
    )


def _role_only(complete: bytes) -> int:
    """1 when the first data event announces the role without any text, else 0. Ollama puts
    text in its first chunk already; completions streams have no role chunk."""
    start = complete.find(b"data:")
    end = complete.find(_SEP, start)
    event = complete[start:end]
    if b'"role"' not in event:
        return 0
    empty = b'"content"' not in event or b'"content":""' in event or b'"content": ""' in event
    return 1 if empty else 0


def _event_json(event: bytes) -> dict[str, Any] | None:
    payload = sse.data_of(event)
    if payload is None or payload == b"[DONE]":
        return None
    try:
        data = jsonutil.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def usage_from_body(body: bytes) -> Usage | None:
    """Usage of a non-streamed answer without parsing the whole (maybe large) body: OpenAI puts
    `usage` last, so its value runs from the last `"usage":` to the object's closing brace;
    anything else (another key after it, a look-alike in a string) falls back to a full parse."""
    idx = body.rfind(_USAGE_KEY)
    if idx > 0 and body[idx - 1 : idx] != b"\\":
        colon = body.find(b":", idx + _KEY_LEN)
        end = body.rfind(b"}")
        if 0 < colon < end:
            try:
                value = jsonutil.loads(body[colon + 1 : end])
            except ValueError:
                value = None
            usage = Usage.from_json(value)
            if usage is not None:
                return usage
    try:
        data = jsonutil.loads(body)
    except ValueError:
        return None
    return Usage.from_json(data.get("usage")) if isinstance(data, dict) else None
