"""The mock provider's answers to the pass-through endpoints, deterministic and offline:

- `images/generations`: `n` (1-10) tiny valid PNGs, one colour drawn from the prompt, as
  `b64_json` or (the default) a `data:image/png;base64,…` URL; no usage, like dall-e's answers;
- `audio/speech`: valid audio of the requested `response_format` (mp3, opus, aac, flac, wav,
  pcm; all 24 kHz mono), 0.3 s per input word (at most `MAX_SPEECH_SECONDS`), streamed in
  pieces as it is read; wav and pcm carry a 400 Hz tone, the compressed formats silence;
  `stream_format: sse` sends `speech.audio.delta` events and a `speech.audio.done` with usage;
- `audio/transcriptions` and `audio/translations`: the multipart form is read as it arrives
  (a streamed body is never held whole), and the text names the uploaded file's size and
  SHA-256, so a caller can tell the file arrived whole; `json` (with token usage), `text`,
  `srt`, `vtt` or `verbose_json` (with duration usage);
- `moderations`: OpenAI's shape, one result per input; an input is flagged in a category when
  it contains one of that category's trigger words (`TRIGGERS`).

Sizes are bounded: form fields (`MAX_FIELD`), parts (`MAX_PARTS`), speech length, images.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from aigw.errors import InvalidRequestError
from aigw.providers.base import StreamedBody

#: Endpoints the mock answers through `forward()`.
MEDIA_ENDPOINTS: Final = (
    "images/generations",
    "audio/speech",
    "audio/transcriptions",
    "audio/translations",
    "moderations",
)
MAX_SPEECH_SECONDS: Final = 10.0
MAX_IMAGES: Final = 10
MAX_FIELD: Final = 64 * 1024  # a multipart field that is not a file
MAX_PARTS: Final = 64
MAX_PART_HEAD: Final = 16 * 1024

#: Moderation categories and the words that flag an input in them (whole words, any case).
TRIGGERS: Final[dict[str, tuple[str, ...]]] = {
    "harassment": ("idiot", "loser"),
    "harassment/threatening": ("threaten",),
    "hate": ("hate",),
    "hate/threatening": (),
    "illicit": ("steal", "counterfeit"),
    "illicit/violent": ("bomb",),
    "self-harm": ("self-harm",),
    "self-harm/intent": (),
    "self-harm/instructions": (),
    "sexual": ("nsfw",),
    "sexual/minors": (),
    "violence": ("kill", "attack"),
    "violence/graphic": ("gore",),
}
_TRIGGER_WORDS: Final = {w: c for c, words in TRIGGERS.items() for w in words}

SPEECH_FORMATS: Final = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
_RATE: Final = 24_000  # samples per second of every speech answer


@dataclass(slots=True)
class MediaAnswer:
    status: int
    content_type: str
    body: bytes = b""
    chunks: Iterator[bytes] | None = None  # a streamed answer, made as it is read


async def answer(endpoint: str, body: bytes | StreamedBody, content_type: str) -> MediaAnswer:
    """The answer to one pass-through request; raises `InvalidRequestError` for a bad one."""
    if endpoint in ("audio/transcriptions", "audio/translations"):
        form = await _read_form(_chunks(body), _boundary(content_type))
        return _transcription(form, translate=endpoint == "audio/translations")
    raw = body if isinstance(body, bytes) else b"".join([c async for c in body.chunks()])
    try:
        request = json.loads(raw)
    except ValueError:
        raise InvalidRequestError("The request body is not valid JSON.") from None
    if not isinstance(request, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    if endpoint == "images/generations":
        return _images(request)
    if endpoint == "audio/speech":
        return _speech(request)
    if endpoint == "moderations":
        return _moderations(request)
    raise InvalidRequestError(f"Unknown endpoint {endpoint}")


async def _chunks(body: bytes | StreamedBody) -> AsyncIterator[bytes]:
    if isinstance(body, bytes):
        yield body
    else:
        async for data in body.chunks():
            yield data


def _json(payload: Any) -> MediaAnswer:
    return MediaAnswer(200, "application/json", json.dumps(payload).encode())


def _words(text: str) -> int:
    return max(1, len(text.split()))  # the mock's tokenizer (`mock.count_tokens`)


# --- images ------------------------------------------------------------------------------------


def _images(request: dict[str, Any]) -> MediaAnswer:
    prompt = request.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequestError("prompt must be a non-empty string", param="prompt")
    n = request.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES:
        raise InvalidRequestError(f"n must be an integer from 1 to {MAX_IMAGES}", param="n")
    fmt = request.get("response_format") or "url"
    if fmt not in ("url", "b64_json"):
        raise InvalidRequestError(
            "response_format must be url or b64_json", param="response_format"
        )
    image = base64.b64encode(png(hashlib.sha256(prompt.encode()).digest()[:3])).decode()
    item = {"b64_json": image} if fmt == "b64_json" else {"url": f"data:image/png;base64,{image}"}
    item["revised_prompt"] = prompt
    return _json({"created": int(time.time()), "data": [dict(item) for _ in range(n)]})


def png(rgb: bytes, size: int = 8) -> bytes:
    """A `size`x`size` PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    rows = (b"\x00" + rgb * size) * size  # filter byte 0 per row
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# --- speech ------------------------------------------------------------------------------------


def _speech(request: dict[str, Any]) -> MediaAnswer:
    text = request.get("input")
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequestError("input must be a non-empty string", param="input")
    if not isinstance(request.get("voice"), (str, dict)):
        raise InvalidRequestError("voice is required", param="voice")
    fmt = request.get("response_format") or "mp3"
    if fmt not in SPEECH_FORMATS:
        choices = ", ".join(SPEECH_FORMATS)
        raise InvalidRequestError(
            f"response_format must be one of {choices}", param="response_format"
        )
    speed = request.get("speed", 1.0)
    if speed is None:
        speed = 1.0
    if not isinstance(speed, (int, float)) or isinstance(speed, bool) or not 0.25 <= speed <= 4:
        raise InvalidRequestError("speed must be from 0.25 to 4.0", param="speed")
    stream_format = request.get("stream_format") or "audio"
    if stream_format not in ("audio", "sse"):
        raise InvalidRequestError("stream_format must be audio or sse", param="stream_format")
    words = _words(text)
    seconds = min(MAX_SPEECH_SECONDS, 0.3 * words / speed)
    audio = _ENCODERS[fmt](max(1, round(seconds * _RATE)))
    if stream_format == "sse":
        usage = {"input_tokens": words, "output_tokens": math.ceil(seconds * 20)}
        return MediaAnswer(200, "text/event-stream", chunks=_speech_events(audio, usage))
    return MediaAnswer(200, SPEECH_FORMATS[fmt], chunks=audio)


def _speech_events(audio: Iterator[bytes], usage: dict[str, int]) -> Iterator[bytes]:
    for piece in audio:
        delta = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
        yield b"data: " + json.dumps(delta).encode() + b"\n\n"
    done = {
        "type": "speech.audio.done",
        "usage": {**usage, "total_tokens": usage["input_tokens"] + usage["output_tokens"]},
    }
    yield b"data: " + json.dumps(done).encode() + b"\n\n"


_PIECE_SAMPLES: Final = 4800  # 0.2 s of audio per streamed piece: a whole number of tone periods
_TONE: Final = b"".join(
    struct.pack("<h", round(3000 * math.sin(2 * math.pi * i / 60))) for i in range(60)
)  # one period of 400 Hz at 24 kHz


def _pcm(samples: int) -> Iterator[bytes]:
    piece = _TONE * (_PIECE_SAMPLES // 60)
    full, rest = divmod(samples, _PIECE_SAMPLES)
    for _ in range(full):
        yield piece
    if rest:
        yield piece[: 2 * rest]


def _wav(samples: int) -> Iterator[bytes]:
    size = 2 * samples
    yield (
        b"RIFF"
        + struct.pack("<I", 36 + size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, _RATE, 2 * _RATE, 2, 16)
        + b"data"
        + struct.pack("<I", size)
    )
    yield from _pcm(samples)


def _frames(frame: Callable[[int], bytes], count: int, per_piece: int) -> Iterator[bytes]:
    for start in range(0, count, per_piece):
        yield b"".join(frame(i) for i in range(start, min(count, start + per_piece)))


# MPEG-2 Layer III, 32 kbit/s, 24 kHz, mono, no CRC: 96-byte frames of 576 samples; side info
# all zero (no main data) decodes as silence.
_MP3_FRAME: Final = b"\xff\xf3\x44\xc0" + bytes(92)


def _mp3(samples: int) -> Iterator[bytes]:
    return _frames(lambda _: _MP3_FRAME, math.ceil(samples / 576), 50)


# ADTS, AAC-LC, 24 kHz, mono: a 7-byte header and a raw block holding one silent single channel
# element (max_sfb 0) and the end element: 11-byte frames of 1024 samples.
_AAC_FRAME: Final = b"\xff\xf1\x58\x40\x01\x7f\xfc" + b"\x01\x40\x20\x07"


def _aac(samples: int) -> Iterator[bytes]:
    return _frames(lambda _: _AAC_FRAME, math.ceil(samples / 1024), 50)


_FLAC_BLOCK: Final = 4096


def _flac(samples: int) -> Iterator[bytes]:
    """16-bit mono silence in fixed 4096-sample blocks (the last one shorter), each a CONSTANT
    subframe of zero; STREAMINFO carries the MD5 of the decoded samples, as `flac -t` checks."""
    count = math.ceil(samples / _FLAC_BLOCK)
    info = struct.pack(">HH", _FLAC_BLOCK, _FLAC_BLOCK) + bytes(6)  # frame sizes unknown
    info += struct.pack(">Q", (_RATE << 44) | (0 << 41) | (15 << 36) | samples)
    md5 = hashlib.md5(usedforsecurity=False)
    zeros = bytes(2 * _FLAC_BLOCK)
    for start in range(0, samples, _FLAC_BLOCK):
        md5.update(zeros[: 2 * min(_FLAC_BLOCK, samples - start)])
    info += md5.digest()
    yield b"fLaC" + b"\x80" + len(info).to_bytes(3, "big") + info

    def frame(i: int) -> bytes:
        size = min(_FLAC_BLOCK, samples - i * _FLAC_BLOCK)
        # sync + fixed blocking; 4096 samples (0xC) or a size given after the frame number
        # (0x7: 16 bits, minus one); 24 kHz (0x7); mono, 16 bits
        head = b"\xff\xf8" + (b"\xc7" if size == _FLAC_BLOCK else b"\x77") + b"\x08"
        head += chr(i).encode("utf-8")  # the frame number, UTF-8 coded
        if size != _FLAC_BLOCK:
            head += struct.pack(">H", size - 1)
        head += bytes([_crc8(head)])
        data = head + b"\x00\x00\x00"  # CONSTANT subframe, value 0
        return data + struct.pack(">H", _crc16(data))

    yield from _frames(frame, count, 20)


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


# Opus in Ogg: OpusHead and OpusTags pages, then pages of 50 packets of 20 ms each; every packet
# is the CELT silence frame (TOC 0xF8: full band, 20 ms, mono, one frame).
_OPUS_SILENCE: Final = b"\xf8\xff\xfe"
_OPUS_PRE_SKIP: Final = 312


def _opus(samples: int) -> Iterator[bytes]:
    # Decoders drop the first `pre-skip` samples (48 kHz) and stop at the last page's granule
    # position: enough packets to cover both, and that granule at exactly the requested end.
    end = _OPUS_PRE_SKIP + 2 * samples
    packets = math.ceil(end / 960)
    serial = 0x6D6F636B  # "mock"
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, _OPUS_PRE_SKIP, _RATE, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 4) + b"aigw" + struct.pack("<I", 0)
    yield _ogg_page([head], serial, 0, 0, 0x02) + _ogg_page([tags], serial, 1, 0, 0)
    sequence = 2
    for start in range(0, packets, 50):
        count = min(50, packets - start)
        granule = min((start + count) * 960, end)  # 48 kHz samples decoded by this page's end
        last = start + count >= packets
        yield _ogg_page([_OPUS_SILENCE] * count, serial, sequence, granule, 0x04 if last else 0)
        sequence += 1


def _ogg_page(packets: list[bytes], serial: int, sequence: int, granule: int, kind: int) -> bytes:
    lacing = b"".join(bytes([255] * (len(p) // 255) + [len(p) % 255]) for p in packets)
    head = b"OggS" + struct.pack("<BBqIII", 0, kind, granule, serial, sequence, 0)
    page = head + bytes([len(lacing)]) + lacing + b"".join(packets)
    crc = _ogg_crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]


_OGG_TABLE: list[int] = []


def _ogg_crc(data: bytes) -> int:
    table = _OGG_TABLE
    if not table:
        for i in range(256):
            r = i << 24
            for _ in range(8):
                r = (
                    ((r << 1) ^ 0x04C11DB7) & 0xFFFFFFFF
                    if r & 0x80000000
                    else (r << 1) & 0xFFFFFFFF
                )
            table.append(r)
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    return crc


_ENCODERS: Final[dict[str, Callable[[int], Iterator[bytes]]]] = {
    "mp3": _mp3,
    "opus": _opus,
    "aac": _aac,
    "flac": _flac,
    "wav": _wav,
    "pcm": _pcm,
}


# --- transcriptions ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Upload:
    filename: str
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


@dataclass(slots=True)
class _Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, _Upload] = field(default_factory=dict)

    def value(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else default


_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_DISPOSITION = re.compile(r'\b(name|filename)="((?:[^"\\]|\\.)*)"', re.IGNORECASE)


def _boundary(content_type: str) -> bytes:
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequestError("The request must be multipart/form-data.")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise InvalidRequestError("The multipart Content-Type has no boundary.")
    return (match.group(1) or match.group(2)).encode("utf-8", "surrogateescape")


async def _read_form(chunks: AsyncIterator[bytes], boundary: bytes) -> _Form:
    """Parse multipart/form-data (RFC 7578) as it arrives: files are hashed, never kept."""
    form = _Form()
    buf = bytearray()
    first = b"--" + boundary
    marker = b"\r\n--" + boundary  # what ends a part's data
    state = "preamble"
    name = ""
    upload: _Upload | None = None
    value = bytearray()
    parts = 0

    def data(piece: bytes | bytearray) -> None:
        if upload is not None:
            upload.size += len(piece)
            upload.digest.update(piece)
        else:
            value.extend(piece)
            if len(value) > MAX_FIELD:
                raise InvalidRequestError(f"The form field {name!r} is over {MAX_FIELD} bytes.")

    async for chunk in chunks:
        if state == "epilogue":
            continue  # read to the end (the body's own checks run), dropped
        buf += chunk
        while True:
            if state == "preamble":
                at = buf.find(first)
                if at < 0:
                    if len(buf) > MAX_PART_HEAD:
                        raise InvalidRequestError("The multipart body has no opening boundary.")
                    break
                del buf[: at + len(first)]
                state = "after"
            elif state == "after":  # just past a boundary: CRLF (a part follows) or "--" (end)
                if len(buf) < 2:
                    break
                if buf[:2] == b"--":
                    state = "epilogue"
                    buf.clear()
                    break
                if buf[:2] != b"\r\n":
                    raise InvalidRequestError("The multipart body is malformed.")
                del buf[:2]
                state = "head"
            elif state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_PART_HEAD:
                        raise InvalidRequestError("A multipart part's headers are too long.")
                    break
                parts += 1
                if parts > MAX_PARTS:
                    raise InvalidRequestError(f"The form has more than {MAX_PARTS} parts.")
                name, filename = _disposition(bytes(buf[:end]))
                del buf[: end + 4]
                upload = None
                value.clear()
                if filename is not None:
                    upload = form.files[name] = _Upload(filename)
                state = "data"
            else:  # data
                end = buf.find(marker)
                if end < 0:
                    keep = len(marker) - 1  # a marker may straddle this chunk and the next
                    if len(buf) > keep:
                        data(buf[: len(buf) - keep])
                        del buf[: len(buf) - keep]
                    break
                data(buf[:end])
                del buf[: end + len(marker)]
                if upload is None:
                    text = value.decode("utf-8", "replace")
                    form.fields.setdefault(name, []).append(text)
                state = "after"
    if state != "epilogue":
        raise InvalidRequestError("The multipart body ends before its closing boundary.")
    return _finish_form(form)


def _disposition(head: bytes) -> tuple[str, str | None]:
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, _, rest = line.partition(":")
        if key.strip().lower() == "content-disposition":
            found = {k.lower(): v.replace('\\"', '"') for k, v in _DISPOSITION.findall(rest)}
            if "name" in found:
                return found["name"], found.get("filename")
    raise InvalidRequestError("A multipart part has no Content-Disposition name.")


def _finish_form(form: _Form) -> _Form:
    if form.value("model") is None:
        raise InvalidRequestError("model is required", param="model")
    if "file" not in form.files:
        raise InvalidRequestError("file is required", param="file")
    return form


def _transcription(form: _Form, *, translate: bool) -> MediaAnswer:
    upload = form.files["file"]
    fmt = form.value("response_format", "json")
    if fmt not in ("json", "text", "srt", "vtt", "verbose_json"):
        raise InvalidRequestError(
            "response_format must be json, text, srt, vtt or verbose_json", param="response_format"
        )
    text = (
        f"Mock {'translation' if translate else 'transcript'} of {upload.filename}: "
        f"{upload.size} bytes, sha256 {upload.digest.hexdigest()}."
    )
    seconds = round(max(0.1, upload.size / 32_000), 2)  # as if 16 kHz 16-bit mono
    if fmt == "text":
        return MediaAnswer(200, "text/plain; charset=utf-8", text.encode() + b"\n")
    if fmt in ("srt", "vtt"):
        stamp = _timestamp(seconds, "," if fmt == "srt" else ".")
        zero = _timestamp(0, "," if fmt == "srt" else ".")
        cue = f"{zero} --> {stamp}\n{text}\n\n"
        out = f"1\n{cue}" if fmt == "srt" else f"WEBVTT\n\n{cue}"
        return MediaAnswer(200, "text/plain; charset=utf-8", out.encode())
    if fmt == "json":
        prompt = _words(form.value("prompt", "") or "") if form.value("prompt") else 0
        audio = math.ceil(seconds * 10)  # one audio token per 100 ms
        output = _words(text)
        usage = {
            "type": "tokens",
            "input_tokens": prompt + audio,
            "input_token_details": {"text_tokens": prompt, "audio_tokens": audio},
            "output_tokens": output,
            "total_tokens": prompt + audio + output,
        }
        return _json({"text": text, "usage": usage})
    segment = {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": seconds,
        "text": text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": -0.1,
        "compression_ratio": 1.0,
        "no_speech_prob": 0.0,
    }
    verbose: dict[str, Any] = {
        "task": "translate" if translate else "transcribe",
        "language": "english" if translate else form.value("language", "english"),
        "duration": seconds,
        "text": text,
        "segments": [segment],
    }
    if "word" in form.fields.get("timestamp_granularities[]", []):
        words = text.split()
        step = seconds / len(words)
        verbose["words"] = [
            {"word": w, "start": round(i * step, 3), "end": round((i + 1) * step, 3)}
            for i, w in enumerate(words)
        ]
    verbose["usage"] = {"type": "duration", "seconds": math.ceil(seconds)}
    return _json(verbose)


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return (
        f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"
    )


# --- moderations -------------------------------------------------------------------------------


def _moderations(request: dict[str, Any]) -> MediaAnswer:
    raw = request.get("input")
    if isinstance(raw, str):
        inputs: list[tuple[str, list[str]]] = [(raw, ["text"])]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        inputs = [(x, ["text"]) for x in raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, dict) for x in raw):
        # Multi-modal: one result for the whole list of parts.
        texts = [str(p.get("text", "")) for p in raw if p.get("type") == "text"]
        kinds = sorted({"image" if p.get("type") == "image_url" else "text" for p in raw})
        inputs = [(" ".join(texts), kinds)]
    else:
        raise InvalidRequestError(
            "input must be a string, a list of strings or a list of parts", param="input"
        )
    if len(inputs) > 32:
        raise InvalidRequestError("input has more than 32 items", param="input")
    model = str(request.get("model") or "omni-moderation-latest")
    results = [_moderation(text, kinds) for text, kinds in inputs]
    digest = hashlib.sha1(json.dumps(raw).encode()).hexdigest()[:24]
    return _json({"id": f"modr-mock{digest}", "model": model, "results": results})


def _moderation(text: str, kinds: list[str]) -> dict[str, Any]:
    hit = {_TRIGGER_WORDS[w] for w in re.findall(r"[\w-]+", text.lower()) if w in _TRIGGER_WORDS}
    categories = {c: c in hit for c in TRIGGERS}
    return {
        "flagged": bool(hit),
        "categories": categories,
        "category_scores": {c: 0.97 if c in hit else 0.0001 for c in TRIGGERS},
        "category_applied_input_types": {c: kinds for c in TRIGGERS},
    }
