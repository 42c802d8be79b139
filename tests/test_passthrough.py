"""The pass-through endpoints below the proxy: `Provider.forward()` of the openai provider to a
real aiohttp upstream (multipart uploads streamed, never held whole), and the mock provider's
answers, driven by the official `openai` SDK through a tiny aiohttp app that serves a provider
the way the gateway will (`serve_provider`)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import shutil
import struct
import subprocess
import tracemalloc
import wave
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp import BodyPartReader, web

from aigw.config import MockOptions, ProviderConfig, Secret
from aigw.errors import MalformedRequestError, RequestTooLargeError
from aigw.providers.base import PASS_THROUGH_ENDPOINTS, Provider, StreamedBody
from aigw.providers.mock import MockProvider
from aigw.providers.mock_media import SPEECH_FORMATS, TRIGGERS
from aigw.providers.openai import OpenAIProvider

MiB = 1024 * 1024
CHUNK = 64 * 1024
KEY = "sk-provider-key-123"


@pytest.fixture(autouse=True)
def _no_env_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


# --- servers -------------------------------------------------------------------------------------


async def start_app(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/v1"


def provider_app(provider: Provider, *, max_bytes: int = 64 * MiB) -> web.Application:
    """What the gateway does with a pass-through request, minus auth and limits: a multipart
    body streamed through `forward()`, any other read whole; the answer streamed back."""

    async def handle(request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["endpoint"]
        content_type = request.headers.get("Content-Type", "")
        body: bytes | StreamedBody
        if content_type.startswith("multipart/"):
            body = StreamedBody(
                request.content.iter_chunked(CHUNK),
                length=request.content_length,
                max_bytes=max_bytes,
            )
        else:
            body = await request.read()
        resp = await provider.forward(
            endpoint,
            body,
            content_type=content_type,
            timeout=30,
            client_headers=request.raw_headers,
        )
        out = web.StreamResponse(status=resp.status, headers=dict(resp.headers))
        length = resp.body_length()
        if length is not None:
            out.content_length = length
        await out.prepare(request)
        try:
            async for piece in resp.iter_chunks():
                await out.write(piece)
        finally:
            resp.close()
        await out.write_eof()
        return out

    app = web.Application()
    app.router.add_post("/v1/{endpoint:.+}", handle)
    return app


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner, url = await start_app(app)
        runners.append(runner)
        return url

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def providers() -> AsyncIterator[Callable[..., Provider]]:
    made: list[Provider] = []

    def make(kind: str = "openai", **kwargs: Any) -> Provider:
        config = ProviderConfig(name=kind, type=kind, **kwargs)
        provider: Provider = OpenAIProvider(config) if kind == "openai" else MockProvider(config)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


@pytest.fixture(params=["mock", "openai-to-mock"])
async def media_url(request: Any, servers: Any, providers: Any) -> str:
    """A base URL serving the mock's pass-through answers: the mock provider itself, or an
    openai provider in front of it (so every answer crosses the HTTP transport too)."""
    url: str = await servers(provider_app(providers("mock")))
    if request.param == "openai-to-mock":
        url = await servers(provider_app(providers("openai", base_url=url, api_key=Secret(KEY))))
    return url


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key="sk-tenant", max_retries=0, timeout=30)


# --- forward(): multipart uploads to a real server -----------------------------------------------


class Upload:
    """A multipart/form-data body made chunk by chunk: a `model` field, then a `file` of `size`
    pseudo-random bytes, never all in memory; hashes the file as it goes."""

    boundary = "aigw-boundary-7f3a"

    def __init__(self, size: int, *, seed: int = 7) -> None:
        self.size = size
        self.rng = random.Random(seed)
        self.file_sha = hashlib.sha256()
        self.taken = 0
        b = self.boundary
        self.head = (
            f'--{b}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="talk.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{b}--\r\n".encode()

    @property
    def length(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        self.taken += len(self.head)
        left = self.size
        while left:
            data = self.rng.randbytes(min(CHUNK, left))
            left -= len(data)
            self.file_sha.update(data)
            self.taken += len(data)
            yield data
        self.taken += len(self.tail)
        yield self.tail


def hashing_upstream(seen: list[dict[str, Any]]) -> web.Application:
    """A real multipart server (aiohttp's reader): hashes the file part as it reads it."""

    async def transcribe(request: web.Request) -> web.Response:
        fields: dict[str, str] = {}
        digest = hashlib.sha256()
        size = 0
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader)
            if part.filename:
                while piece := await part.read_chunk(CHUNK):
                    digest.update(piece)
                    size += len(piece)
            else:
                fields[part.name or ""] = (await part.read()).decode()
        seen.append(
            {
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "fields": fields,
            }
        )
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    app = web.Application()
    app.router.add_post("/v1/audio/transcriptions", transcribe)
    return app


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_multipart_upload_arrives_whole_and_is_never_held(
    servers: Any, providers: Any, declared: bool
) -> None:
    seen: list[dict[str, Any]] = []
    url = await servers(hashing_upstream(seen))
    provider = providers("openai", base_url=url, api_key=Secret(KEY))
    upload = Upload(12 * MiB)  # many reads of the client, many writes to the upstream
    body = StreamedBody(
        aiter(upload), length=upload.length if declared else None, max_bytes=16 * MiB
    )
    client_headers = [
        (b"Authorization", b"Bearer sk-tenant"),
        (b"OpenAI-Organization", b"org-42"),
        (b"X-Aigw-Tenant", b"team-a"),
        (b"Content-Type", b"text/plain"),  # the gateway's content_type argument wins
    ]
    tracemalloc.start()
    try:
        resp = await provider.forward(
            "audio/transcriptions",
            body,
            content_type=upload.content_type,
            timeout=30,
            client_headers=client_headers,
        )
        answer = json.loads(await resp.read())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status == 200
    assert answer == {"size": 12 * MiB, "sha256": upload.file_sha.hexdigest()}
    # Both ends run in this process: the peak is their socket reads and buffers (~0.8 MiB,
    # the same for 5 or 20 MiB files), never the file.
    assert peak < 2 * MiB
    (request,) = seen
    assert request["fields"] == {"model": "whisper-1"}
    headers = request["headers"]
    assert headers["authorization"] == f"Bearer {KEY}"  # the provider's key, never the tenant's
    assert headers["openai-organization"] == "org-42"
    assert "x-aigw-tenant" not in headers
    assert headers["content-type"] == upload.content_type
    assert headers["accept"] == "*/*"
    if declared:
        assert headers["content-length"] == str(upload.length)
    else:
        assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers


async def test_forward_with_a_bytes_body_and_a_bad_content_type(
    servers: Any, providers: Any
) -> None:
    seen: list[dict[str, Any]] = []
    url = await servers(hashing_upstream(seen))
    provider = providers("openai", base_url=url, api_key=Secret(KEY))
    upload = Upload(100_000)
    whole = b"".join([piece async for piece in upload])
    resp = await provider.forward(
        "audio/transcriptions", whole, content_type=upload.content_type, timeout=10
    )
    assert json.loads(await resp.read()) == {"size": 100_000, "sha256": upload.file_sha.hexdigest()}
    assert seen[0]["headers"]["content-length"] == str(len(whole))
    from aigw.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="Content-Type header is invalid"):
        await provider.forward(
            "audio/transcriptions",
            whole,
            content_type="multipart/form-data; boundary=x\r\nX-Injected: 1",
            timeout=10,
        )
    assert len(seen) == 1


async def test_an_upload_over_the_limit_is_cut_and_the_upstream_call_aborted(
    servers: Any, providers: Any
) -> None:
    seen: list[dict[str, Any]] = []
    url = await servers(hashing_upstream(seen))
    provider = providers("openai", base_url=url, api_key=Secret(KEY))
    upload = Upload(5 * MiB)
    body = StreamedBody(aiter(upload), length=None, max_bytes=MiB)
    with pytest.raises(RequestTooLargeError):
        await provider.forward(
            "audio/transcriptions", body, content_type=upload.content_type, timeout=10
        )
    assert MiB < upload.taken <= MiB + CHUNK
    assert seen == []  # the upstream never had a whole request


# --- the mock's answers through the openai SDK ---------------------------------------------------


async def test_sdk_transcriptions_of_a_file_that_arrived_whole(media_url: str) -> None:
    data = random.Random(3).randbytes(3 * MiB + 17)
    expected = f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}"
    async with sdk(media_url) as client:
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=("talk.wav", data, "audio/wav")
        )
        assert result.text == f"Mock transcript of talk.wav: {expected}."
        usage = result.model_dump()["usage"]
        assert usage["type"] == "tokens"
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
        text = await client.audio.transcriptions.create(
            model="whisper-1", file=("talk.wav", data), response_format="text"
        )
        assert expected in text
        srt = await client.audio.transcriptions.create(
            model="whisper-1", file=("talk.wav", data), response_format="srt"
        )
        assert srt.startswith("1\n00:00:00,000 --> 00:01:38,300\n") and expected in srt
        verbose = await client.audio.transcriptions.create(
            model="whisper-1",
            file=("talk.wav", data),
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            language="de",
        )
        assert verbose.language == "de" and verbose.duration == 98.3
        assert verbose.words and verbose.words[-1].end == 98.3
        assert verbose.segments and expected in verbose.segments[0].text
        with pytest.raises(openai.BadRequestError) as exc:
            await client.audio.transcriptions.create(
                model="whisper-1",
                file=("a.wav", b"x"),
                response_format="xml",  # type: ignore[arg-type]
            )
        assert exc.value.body["param"] == "response_format"  # type: ignore[index]


@pytest.mark.parametrize("fmt", list(SPEECH_FORMATS))
async def test_sdk_speech_streams_valid_audio(media_url: str, fmt: str) -> None:
    async with (
        sdk(media_url) as client,
        client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice="alloy",
            input="one two three four",
            response_format=fmt,  # type: ignore[arg-type]
        ) as response,
    ):
        assert response.headers["content-type"] == SPEECH_FORMATS[fmt]
        pieces = [piece async for piece in response.iter_bytes()]
    audio = b"".join(pieces)
    seconds = check_audio(fmt, audio)
    assert 1.2 <= seconds < 1.3  # 0.3 s a word, rounded up to the format's frames


async def test_sdk_images_and_moderations(media_url: str) -> None:
    async with sdk(media_url) as client:
        images = await client.images.generate(
            model="dall-e-3", prompt="a red fox", n=2, response_format="b64_json"
        )
        assert images.data and len(images.data) == 2
        png = base64.b64decode(images.data[0].b64_json or "")
        assert check_png(png) == (8, 8)
        assert images.data[0].revised_prompt == "a red fox"
        assert images.usage is None  # dall-e answers carry no usage
        by_url = await client.images.generate(model="dall-e-2", prompt="a red fox")
        assert by_url.data and (by_url.data[0].url or "").startswith("data:image/png;base64,")
        with pytest.raises(openai.BadRequestError) as exc:
            await client.images.generate(model="dall-e-2", prompt="x", n=11)
        assert exc.value.body["param"] == "n"  # type: ignore[index]

        moderation = await client.moderations.create(
            model="omni-moderation-latest", input=["I will kill them", "a nice day"]
        )
        flagged, clean = moderation.results
        assert flagged.flagged and flagged.categories.violence
        assert flagged.category_scores.violence > 0.9
        assert not flagged.categories.hate
        assert not clean.flagged and not any(clean.categories.model_dump().values())
        single = await client.moderations.create(input="just a steal")
        assert single.results[0].categories.illicit and single.model == "omni-moderation-latest"


# --- the mock provider directly ------------------------------------------------------------------


async def read(resp: Any) -> bytes:
    return b"".join([piece async for piece in resp.iter_chunks()])


async def test_the_mock_reads_a_form_split_anywhere(providers: Any) -> None:
    mock = providers("mock")
    upload = Upload(3000)
    whole = b"".join([piece async for piece in upload])
    expected = f"3000 bytes, sha256 {upload.file_sha.hexdigest()}"
    for size in (1, 2, 3, 7, 40, 41, 42, 97, 1000, len(whole)):

        async def pieces(size: int = size) -> AsyncIterator[bytes]:
            for i in range(0, len(whole), size):
                yield whole[i : i + size]

        body = StreamedBody(pieces(), length=len(whole), max_bytes=MiB)
        resp = await mock.forward(
            "audio/transcriptions", body, content_type=upload.content_type, timeout=5
        )
        assert json.loads(await read(resp))["text"].endswith(f"{expected}."), size


@pytest.mark.parametrize(
    ("endpoint", "body", "content_type", "param"),
    [
        ("images/generations", b'{"model": "x"}', "application/json", "prompt"),
        ("images/generations", b'{"prompt": "p", "response_format": "gif"}', "", "response_format"),
        ("audio/speech", b'{"input": "hi", "voice": "alloy", "speed": 9}', "", "speed"),
        ("audio/speech", b'{"input": "hi"}', "", "voice"),
        (
            "audio/speech",
            b'{"input": "hi", "voice": "a", "response_format": "ogg"}',
            "",
            "response_format",
        ),
        ("moderations", b'{"input": 3}', "", "input"),
        ("moderations", b"[1]", "", None),
        ("audio/transcriptions", b"--b\r\n\r\n", "multipart/form-data; boundary=b", None),
        ("audio/transcriptions", b"x", "application/json", None),
        ("audio/transcriptions", b"--b--", "multipart/form-data; boundary=b", "model"),
        ("embeddings", b"{}", "", None),
    ],
)
async def test_the_mock_answers_bad_requests_400(
    providers: Any, endpoint: str, body: bytes, content_type: str, param: str | None
) -> None:
    resp = await providers("mock").forward(endpoint, body, content_type=content_type, timeout=5)
    assert resp.status == 400
    error = json.loads(await read(resp))["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


async def test_the_mock_bounds_form_fields_and_keeps_body_errors(providers: Any) -> None:
    mock = providers("mock")
    big = b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n' + b"x" * (65 * 1024)
    resp = await mock.forward(
        "audio/transcriptions", big, content_type="multipart/form-data; boundary=b", timeout=5
    )
    assert resp.status == 400 and b"over 65536 bytes" in await read(resp)

    async def short() -> AsyncIterator[bytes]:
        yield b"--b\r\n"

    body = StreamedBody(short(), length=100, max_bytes=MiB)
    with pytest.raises(MalformedRequestError, match="ended before its Content-Length"):
        await mock.forward(
            "audio/transcriptions", body, content_type="multipart/form-data; boundary=b", timeout=5
        )


async def test_a_failing_mock_leaves_a_streamed_body_replayable(providers: Any) -> None:
    mock = providers("mock", mock=MockOptions(failure_rate=1.0, seed=1))
    upload = Upload(1000)
    body = StreamedBody(aiter(upload), length=upload.length, max_bytes=MiB)
    resp = await mock.forward(
        "audio/transcriptions", body, content_type=upload.content_type, timeout=5
    )
    assert resp.status == 500
    assert body.replayable and upload.taken == 0  # another target can still have it


def test_every_pass_through_endpoint_is_answered_by_the_mock() -> None:
    from aigw.providers.mock_media import MEDIA_ENDPOINTS

    assert set(PASS_THROUGH_ENDPOINTS) <= set(MEDIA_ENDPOINTS)
    assert set(PASS_THROUGH_ENDPOINTS.values()) == {"images", "audio", "moderations"}


def test_moderation_triggers_are_known_categories() -> None:
    from aigw.providers.mock_media import _moderation

    for category, words in TRIGGERS.items():
        for word in words:
            result = _moderation(f"well {word.upper()} then", ["text"])
            assert result["flagged"] and result["categories"][category], word


async def test_speech_is_made_and_streamed_piece_by_piece(providers: Any) -> None:
    body = b'{"input": "%s", "voice": "alloy", "response_format": "wav"}' % (b"word " * 100)
    resp = await providers("mock").forward("audio/speech", body, content_type="", timeout=5)
    stream = resp.iter_chunks()
    header = await anext(stream)
    assert header.startswith(b"RIFF") and len(header) == 44
    pieces = [header] + [piece async for piece in stream]
    assert len(pieces) == 51 and max(map(len, pieces)) == 9600  # 0.2 s a piece
    assert check_audio("wav", b"".join(pieces)) == 10.0  # at most MAX_SPEECH_SECONDS


async def test_translations_are_read_like_transcriptions(providers: Any) -> None:
    upload = Upload(5000)
    whole = b"".join([piece async for piece in upload])
    resp = await providers("mock").forward(
        "audio/translations", whole, content_type=upload.content_type, timeout=5
    )
    text = json.loads(await read(resp))["text"]
    assert (
        text == f"Mock translation of talk.wav: 5000 bytes, sha256 {upload.file_sha.hexdigest()}."
    )


async def test_speech_as_sse_events_with_usage(providers: Any) -> None:
    body = b'{"input": "a b c", "voice": "alloy", "response_format": "pcm", "stream_format": "sse"}'
    resp = await providers("mock").forward("audio/speech", body, content_type="", timeout=5)
    assert resp.headers["content-type"] == "text/event-stream"
    events = [
        json.loads(line[6:])
        for line in (await read(resp)).split(b"\n\n")
        if line.startswith(b"data: ")
    ]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    assert check_audio("pcm", audio) == 0.9
    assert events[-1]["type"] == "speech.audio.done"
    assert events[-1]["usage"] == {"input_tokens": 3, "output_tokens": 18, "total_tokens": 21}


# --- format checks, written apart from the encoder -----------------------------------------------


def check_png(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pos, size = 8, (0, 0)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        if kind == b"IHDR":
            size = struct.unpack(">II", payload[:8])
        if kind == b"IDAT":
            assert len(zlib.decompress(payload)) == size[1] * (1 + 3 * size[0])
        pos += 12 + length
    assert kind == b"IEND"
    return size


def crc(data: bytes, poly: int, width: int) -> int:
    """MSB-first CRC, zero initial value, no final xor (FLAC's CRC-8/16 and Ogg's CRC-32)."""
    top, mask, value = 1 << (width - 1), (1 << width) - 1, 0
    for byte in data:
        value ^= byte << (width - 8)
        for _ in range(8):
            value = ((value << 1) ^ poly) & mask if value & top else (value << 1) & mask
    return value


def check_audio(fmt: str, audio: bytes) -> float:
    """Check the container/frames of `audio` and return its length in seconds."""
    if fmt == "pcm":
        return len(audio) / 2 / 24000
    if fmt == "wav":
        with wave.open(io.BytesIO(audio)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
            frames = w.readframes(w.getnframes())
            assert len(frames) == 2 * w.getnframes() == len(audio) - 44
            assert max(struct.unpack(f"<{len(frames) // 2}h", frames)) > 1000  # a tone
            seconds = w.getnframes() / 24000
    elif fmt == "mp3":
        assert len(audio) % 96 == 0
        for i in range(0, len(audio), 96):  # MPEG-2 layer III, 32 kbit/s, 24 kHz, mono
            assert audio[i : i + 4] == b"\xff\xf3\x44\xc0"
        seconds = len(audio) // 96 * 576 / 24000
    elif fmt == "aac":
        pos = frames_ = 0
        while pos < len(audio):
            header = int.from_bytes(audio[pos : pos + 7], "big")
            assert header >> 44 == 0xFFF and (header >> 40) & 0x7 == 0x1  # sync, no CRC
            assert (header >> 38) & 3 == 1 and (header >> 34) & 0xF == 6  # AAC-LC, 24 kHz
            assert (header >> 30) & 7 == 1  # mono
            pos += (header >> 13) & 0x1FFF
            frames_ += 1
        assert pos == len(audio)
        seconds = frames_ * 1024 / 24000
    elif fmt == "flac":
        assert audio[:4] == b"fLaC" and audio[4] == 0x80  # the last (only) block: STREAMINFO
        info = audio[8:42]
        packed = int.from_bytes(info[10:18], "big")
        assert packed >> 44 == 24000 and (packed >> 41) & 7 == 0 and (packed >> 36) & 31 == 15
        total = packed & ((1 << 36) - 1)
        frames = samples = 0
        pos = 42
        while pos < len(audio):
            assert audio[pos : pos + 2] == b"\xff\xf8" and audio[pos + 4] == frames
            code = audio[pos + 2] >> 4
            assert code in (0xC, 0x7) and audio[pos + 2] & 0xF == 0x7  # 24 kHz
            size = 4096 if code == 0xC else int.from_bytes(audio[pos + 5 : pos + 7], "big") + 1
            head = 5 if code == 0xC else 7
            assert crc(audio[pos : pos + head], 0x07, 8) == audio[pos + head]
            end = pos + head + 1 + 3  # header, CRC-8, a CONSTANT subframe
            assert crc(audio[pos:end], 0x8005, 16) == int.from_bytes(audio[end : end + 2], "big")
            frames, samples, pos = frames + 1, samples + size, end + 2
        assert samples == total
        seconds = total / 24000
    else:
        assert fmt == "opus"
        pos, pages, granule = 0, [], 0
        while pos < len(audio):
            assert audio[pos : pos + 4] == b"OggS"
            segments = audio[pos + 26]
            size = 27 + segments + sum(audio[pos + 27 : pos + 27 + segments])
            page = audio[pos : pos + size]
            zeroed = page[:22] + bytes(4) + page[26:]
            assert crc(zeroed, 0x04C11DB7, 32) == int.from_bytes(page[22:26], "little")
            granule = int.from_bytes(page[6:14], "little")
            pages.append(page[27 + segments :])
            pos += size
        assert pages[0].startswith(b"OpusHead") and pages[1].startswith(b"OpusTags")
        assert audio[5] == 2 and audio[pos - size + 5] == 4  # first and last page flags
        pre_skip = int.from_bytes(pages[0][10:12], "little")
        seconds = (granule - pre_skip) / 48000
    magic = shutil.which("file")
    if magic is not None:  # an independent reader of the container, where the system has one
        kind = subprocess.run([magic, "-b", "-"], input=audio, capture_output=True, check=True)
        word = {"mp3": "MPEG ADTS, layer III", "aac": "MPEG ADTS, AAC", "flac": "FLAC audio",
                "opus": "Ogg data, Opus", "wav": "WAVE audio"}[fmt]  # fmt: skip
        assert word in kind.stdout.decode(), kind.stdout
    return seconds
