"""StreamTap: SSE framing, usage pick-up and `"usage": null` stripping on the bytes of real
OpenAI-style streams, compact (OpenAI, vLLM, Ollama) and spaced (Python json.dumps) alike,
however the upstream's writes are cut into reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aigw.errors import UpstreamError
from aigw.streaming import StreamTap

USAGE = {"prompt_tokens": 7, "completion_tokens": 300, "total_tokens": 307}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


def stream(words: list[str], *, spaced: bool, usage_in_last_content: bool = False) -> bytes:
    """An upstream stream asked for usage: every chunk carries `"usage": null`, then the
    usage chunk (or, with `usage_in_last_content`, usage on the finish chunk), then [DONE]."""
    dumps = json.dumps if spaced else (lambda o: json.dumps(o, separators=(",", ":")))
    events = [chunk({"role": "assistant", "content": ""}, usage=None)]
    events += [chunk({"content": w}, usage=None) for w in words]
    if usage_in_last_content:
        events.append(chunk({}, "stop", usage=USAGE))
    else:
        events.append(chunk({}, "stop", usage=None))
        events.append({**chunk({}), "choices": [], "usage": USAGE})
    return b"".join(b"data: " + dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def feed_in_reads(tap: StreamTap, raw: bytes, size: int) -> bytes:
    out = [tap.feed(raw[i : i + size]) for i in range(0, len(raw), size)]
    out.append(tap.flush())
    return b"".join(out)


def payloads(body: bytes) -> list[Any]:
    events = [e for e in body.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events), events
    return [e[6:] if e[6:] == b"[DONE]" else json.loads(e[6:]) for e in events]


MAX_EVENT = 8 * 1024 * 1024  # aigw.streaming.MAX_EVENT, as the README documents it

# Words that look like the markers the tap searches for, inside the answer's text.
TRICKY = ['say "usage": {"x": 1}', '"finish_reason": "stop"', "data: [DONE]", "metadata: 1"]
WORDS = [f"w{i} " for i in range(300)] + TRICKY


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
@pytest.mark.parametrize("size", [7, 100, 4096, 1 << 20], ids=lambda n: f"reads-of-{n}")
@pytest.mark.parametrize("strip", [True, False], ids=["usage-not-asked", "usage-asked"])
@pytest.mark.parametrize("usage_in_last_content", [False, True], ids=["usage-chunk", "on-finish"])
def test_usage_is_picked_up_and_stripped_when_not_asked(
    spaced: bool, size: int, strip: bool, usage_in_last_content: bool
) -> None:
    raw = stream(WORDS, spaced=spaced, usage_in_last_content=usage_in_last_content)
    tap = StreamTap(strip_usage=strip, collect=True)
    out = feed_in_reads(tap, raw, size)
    assert tap.usage is not None
    assert (tap.usage.prompt_tokens, tap.usage.completion_tokens) == (7, 300)
    assert tap.done and tap.finished and tap.preamble == 1
    events = payloads(out)
    assert events[-1] == b"[DONE]"
    data = events[:-1]
    text = "".join(d["choices"][0]["delta"].get("content", "") for d in data if d["choices"])
    assert text == "".join(WORDS)  # the look-alikes in the text went through untouched
    if strip:
        assert b'"usage"' not in out.replace(b'\\"usage\\"', b"")  # as OpenAI: no usage key
        assert all(d["choices"] for d in data)  # the usage-only chunk is gone
        assert len(data) == len(WORDS) + 2
    else:
        assert out == raw  # asked for usage: every byte as the upstream sent it
    assert tap.chunks == len(payloads(raw))
    assert tap.events is not None and b"".join(e + b"\n\n" for e in tap.events) == out


def test_a_stream_cut_short_has_neither_finish_nor_done() -> None:
    raw = stream(["a ", "b "], spaced=False)
    cut = raw[: raw.index(b'"finish_reason":"stop"')]
    cut = cut[: cut.rindex(b"\n\n") + 2]
    tap = StreamTap(strip_usage=True)
    feed_in_reads(tap, cut, 50)
    assert not tap.finished and not tap.done and tap.usage is None
    assert tap.chunks == 3  # role chunk and two words


def test_finish_and_done_are_found_at_the_end_of_a_long_read() -> None:
    raw = stream([f"{i} " for i in range(2000)], spaced=False)
    assert len(raw) > 100_000
    tap = StreamTap(strip_usage=True)
    tap.feed(raw)
    assert tap.finished and tap.done and tap.usage is not None


def test_a_spaced_upstream_is_recognised_after_an_early_compact_event() -> None:
    # An empty first event says nothing about the upstream's JSON style.
    raw = b"data: {}\n\n" + stream(["a ", "b "], spaced=True)
    tap = StreamTap(strip_usage=True)
    out = feed_in_reads(tap, raw, 12)
    assert tap.usage is not None and tap.usage.total_tokens == 307
    assert b'"usage"' not in out


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64], ids=lambda n: f"reads-of-{n}")
def test_crlf_streams_frame_the_same_however_cut(size: int) -> None:
    # "\r\n" (and the "\r\n\r\n" separator) may straddle two reads.
    raw = stream(["a ", "b ", "c "], spaced=False)
    expected = StreamTap(strip_usage=True).feed(raw)
    tap = StreamTap(strip_usage=True)
    assert feed_in_reads(tap, raw.replace(b"\n", b"\r\n"), size) == expected
    assert tap.done and tap.finished and tap.usage is not None


def test_an_event_that_never_ends_is_refused_at_max_event() -> None:
    piece = b"a" * 65536
    tap = StreamTap(strip_usage=True)
    assert tap.feed(b"data: {}\n\n") == b"data: {}\n\n"
    fed = 0
    with pytest.raises(UpstreamError, match="SSE event over 8MiB without ending it"):
        tap.feed(b"data: ")
        while fed <= 2 * MAX_EVENT:  # bounded: the test cannot run away
            tap.feed(piece)
            fed += len(piece)
    assert fed < MAX_EVENT <= fed + len(piece)  # refused by the read that crossed it
    # An event just under the cap, however cut, still goes through whole.
    tap = StreamTap(strip_usage=True)
    event = b"data: " + b"b" * (MAX_EVENT - 100) + b"\n\n"
    assert feed_in_reads(tap, event, 65536) == event
    with pytest.raises(UpstreamError, match="SSE event over 8MiB"):
        StreamTap(strip_usage=True).feed(b"data: {}\n\ndata: " + b"c" * MAX_EVENT)


def test_the_kept_copy_of_a_long_stream_is_dropped_past_max_kept() -> None:
    raw = stream([f"w{i} " for i in range(100)], spaced=False)
    tap = StreamTap(strip_usage=False, collect=True, max_kept=len(raw))
    assert feed_in_reads(tap, raw, 100) == raw
    assert tap.events is not None and len(tap.events) == len(payloads(raw))
    tap = StreamTap(strip_usage=False, collect=True, max_kept=len(raw) - 1)
    assert feed_in_reads(tap, raw, 100) == raw  # the answer itself goes on, whole
    assert tap.events is None  # but nothing half is cached or audited
    assert tap.usage is not None and tap.done
