"""The one SSE reader and writer (`aigw.sse`), by the WHATWG spec: line ends, fields with and
without the space, comments, multi-line data, events cut anywhere across reads."""

from __future__ import annotations

import pytest

from aigw import sse

STREAM = (
    b": a comment the reader skips\n"
    b"event: message_start\n"
    b'data: {"a": 1}\n'
    b"\n"
    b'data:{"no":"space"}\n'
    b"\n"
    b"id: 7\n"
    b"data: line one\n"
    b"data: line two\n"
    b"data\n"
    b"\n"
    b"event: ping\n"
    b"\n"
    b"data: [DONE]\n"
    b"\n"
)
EXPECTED = [
    sse.Event(b'{"a": 1}', "message_start", None, True),
    sse.Event(b'{"no":"space"}', None, None, True),
    sse.Event(b"line one\nline two\n", None, "7", True),
    sse.Event(b"", "ping", None, False),
    sse.Event(b"[DONE]", None, None, True),
]


def read_all(data: bytes, cut: list[int], max_event: int = sse.MAX_EVENT) -> list[sse.Event]:
    framer = sse.Framer(max_event)
    out = b""
    start = 0
    for end in [*cut, len(data)]:
        out += framer.feed(data[start:end])
        start = end
    out += framer.flush()
    return [sse.parse(frame) for frame in sse.frames(out)]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_reads_the_same_however_the_reads_are_cut(ending: bytes) -> None:
    data = STREAM.replace(b"\n", ending)
    assert read_all(data, []) == EXPECTED
    for cut in range(1, len(data)):  # every split into two reads
        assert read_all(data, [cut]) == EXPECTED, cut
    assert read_all(data, list(range(1, len(data)))) == EXPECTED  # one byte per read


def test_a_stream_that_ends_without_the_last_blank_line_still_gives_its_event() -> None:
    assert read_all(b'data: {"last": true}', []) == [sse.Event(b'{"last": true}')]
    assert read_all(b'data: {"last": true}\r', []) == [sse.Event(b'{"last": true}')]


def test_frames_keep_the_bytes_as_they_came_only_line_ends_normalised() -> None:
    framer = sse.Framer()
    assert framer.feed(b"data:  two spaces\r\n\r\ndata: x") == b"data:  two spaces\n\n"
    assert framer.pending == len(b"data: x")
    assert sse.parse(b"data:  two spaces").data == b" two spaces"  # only one space is dropped


def test_an_event_that_never_ends_is_refused_past_the_limit() -> None:
    framer = sse.Framer(max_event=100)
    framer.feed(b"data: " + b"x" * 90)
    with pytest.raises(sse.EventTooLarge):
        framer.feed(b"x" * 20)
    assert read_all(b"data: " + b"y" * 80 + b"\n\n", [40], max_event=100)[0].data == b"y" * 80


def test_events_skips_frames_without_data() -> None:
    assert [e.data for e in sse.events(STREAM)] == [
        b'{"a": 1}',
        b'{"no":"space"}',
        b"line one\nline two\n",
        b"[DONE]",
    ]


def test_data_of_reads_one_frame_fast_or_by_the_spec() -> None:
    assert sse.data_of(b'data: {"x":1}\n\n') == b'{"x":1}'
    assert sse.data_of(b'data:{"x":1}') == b'{"x":1}'
    assert sse.data_of(b"event: ping\n\n") is None
    assert sse.data_of(b"data: a\ndata: b\n\n") == b"a\nb"


@pytest.mark.parametrize(
    ("data", "event"),
    [(b'{"x": 1}', None), (b"two\nlines", "delta"), ("text", "message_stop"), (b"", None)],
)
def test_encode_reads_back_as_what_was_written(data: bytes | str, event: str | None) -> None:
    written = sse.encode(data, event)
    assert written.endswith(b"\n\n")
    [frame] = list(sse.frames(written))
    got = sse.parse(frame)
    want = data.encode() if isinstance(data, str) else data
    assert (got.data, got.event) == (want, event)


def test_done_is_the_openai_terminator() -> None:
    assert sse.DONE == b"data: [DONE]\n\n"
