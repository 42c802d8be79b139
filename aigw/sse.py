"""The one reader and writer of server-sent events (the WHATWG `text/event-stream` format).

Every module that reads or writes SSE uses this one: the stream pass-through, the cache's
replay, the audit text of a streamed answer, the dialect translators and the in-band errors.

Reading follows the spec:
- lines end with CRLF, LF or a lone CR; an event ends at a blank line;
- a line is `field: value`, `field:value` (one optional space after the colon is dropped) or
  `field` alone (empty value); lines starting with `:` are comments;
- several `data:` lines make one data value joined with LF; `event:` names the event;
- an event with no `data:` line carries nothing and is skipped by `parse()`'s callers.

`Framer` cuts a byte stream into whole raw frames (each ending in the blank line) without
parsing them, so the pass-through forwards an upstream's bytes as they came (no re-encoding);
`parse()` reads one frame when its fields are needed. `encode()` writes one event.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

#: The largest SSE event (the bytes up to a blank line) a `Framer` waits for the end of.
MAX_EVENT: Final = 8 * 1024 * 1024

SEP: Final = b"\n\n"


class EventTooLarge(ValueError):
    """An event grew past the framer's limit without ending."""


@dataclass(frozen=True, slots=True)
class Event:
    data: bytes  # the data lines joined with LF (b"" when the event had none)
    event: str | None = None  # the event name (`event:` field)
    id: str | None = None
    has_data: bool = True  # False: the event had no data line at all


class Framer:
    """Cut bytes into whole frames. `feed()` returns the complete frames so far, each ending in
    `\n\n`, line ends normalised to LF; what is left waits for the next read. Only the new
    bytes are searched, so one long event costs linear time; a frame that passes `max_event`
    bytes without ending raises `EventTooLarge`."""

    __slots__ = ("_cr", "_pending", "max_event")

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self._pending = bytearray()
        self._cr = False  # the last read ended in "\r": its "\n" may start the next one
        self.max_event = max_event

    def feed(self, chunk: bytes) -> bytes:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._cr = True
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        pending = self._pending
        if pending:
            start = len(pending) - 1  # a separator may straddle the two reads
            pending += chunk
            end = pending.rfind(SEP, start)
            if end < 0:
                if len(pending) > self.max_event:
                    raise EventTooLarge(len(pending))
                return b""
            buf = bytes(pending)
            pending.clear()
        else:
            buf = chunk
            end = buf.rfind(SEP)
            if end < 0:
                if len(buf) > self.max_event:
                    raise EventTooLarge(len(buf))
                pending += buf
                return b""
        end += 2
        if end < len(buf):
            if len(buf) - end > self.max_event:
                raise EventTooLarge(len(buf) - end)
            pending += memoryview(buf)[end:]
            return buf[:end]
        return buf

    def flush(self) -> bytes:
        """What is left at the end of the stream: an unterminated last event, ended (some
        upstreams close without the final blank line)."""
        rest = bytes(self._pending)
        self._pending.clear()
        self._cr = False
        if not rest.strip():
            return b""
        return rest.rstrip(b"\n") + SEP

    @property
    def pending(self) -> int:
        """Bytes waiting for the end of their event."""
        return len(self._pending)


def _lf(data: bytes) -> bytes:
    if b"\r" not in data:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def frames(data: bytes) -> Iterator[bytes]:
    """The frames of `data` (whole events, as `Framer.feed` returns them), without the blank
    line that ended each."""
    for frame in data.split(SEP):
        if frame.strip(b"\n"):
            yield frame.strip(b"\n")


def parse(frame: bytes) -> Event:
    """Read one frame (with or without its ending blank line; LF line ends)."""
    data: list[bytes] = []
    name: str | None = None
    ident: str | None = None
    for line in frame.split(b"\n"):
        if not line or line[:1] == b":":
            continue  # blank or a comment
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
        elif field == b"id" and b"\0" not in value:
            ident = value.decode("utf-8", "replace")
    return Event(b"\n".join(data), name, ident, bool(data))


def events(data: bytes) -> Iterator[Event]:
    """Every event with data in a whole SSE body (LF or CRLF line ends)."""
    for frame in frames(_lf(data)):
        event = parse(frame)
        if event.has_data:
            yield event


def data_of(frame: bytes) -> bytes | None:
    """The data of one frame, or None when it has no data line. A fast path for the common
    `data: {...}` frame of one line; anything else goes through `parse()`."""
    if frame.startswith(b"data: ") and b"\n" not in frame.rstrip(b"\n"):
        return frame[6:].rstrip(b"\n")
    event = parse(frame)
    return event.data if event.has_data else None


def encode(data: bytes | str, event: str | None = None) -> bytes:
    """One event: `event:` (when named) and a `data:` line per line of `data`, then the blank
    line."""
    if isinstance(data, str):
        data = data.encode()
    head = b"event: " + event.encode() + b"\n" if event else b""
    if b"\n" in data or b"\r" in data:
        lines = _lf(data).split(b"\n")
        return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
    return head + b"data: " + data + SEP


DONE: Final = encode(b"[DONE]")
