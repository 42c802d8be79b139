"""The pass-through endpoints through the real gateway and its balancer: the official `openai`
SDK (and a raw socket where the SDK cannot show it) as the client, `tests.media_upstream` on
127.0.0.1 as the targets. Images, speech (streamed back as it comes), transcriptions and
translations (multipart, streamed up and never held), moderations; failover of an upload whose
first target refuses it before reading it; a 413 above `server.max_body_size` that stops
reading at the limit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from aigw.config import (
    Config,
    ModelConfig,
    ProviderConfig,
    QuotaConfig,
    TargetConfig,
)
from tests.conftest import RunningGateway, make_config
from tests.media_upstream import (
    IMAGE_USAGE,
    SPEECH_PIECES,
    SPEECH_USAGE,
    TRANSCRIPTION_USAGE,
    MediaUpstream,
)

MiB = 1024 * 1024
MEDIA = ("images", "audio", "moderations")
MODELS = ("gpt-image-1", "tts-1", "whisper-1", "omni-moderation-latest")


@pytest.fixture
async def media() -> AsyncIterator[Callable[..., Awaitable[MediaUpstream]]]:
    started: list[MediaUpstream] = []

    async def start(**options: Any) -> MediaUpstream:
        up = await MediaUpstream(**options).start()
        started.append(up)
        return up

    yield start
    for up in started:
        await up.stop()


def config(
    sock: Path, targets: list[tuple[str, int]], *, apis: tuple[str, ...] = MEDIA, **sections: Any
) -> Config:
    """Every media model over the given upstreams (base URL, weight), each target renaming the
    model to `up-<name>`; a token quota unless one is given."""
    sections.setdefault("quota", QuotaConfig(default=1_000_000))
    base = make_config({}, sock=sock, **sections)
    providers = {
        f"up{i}": ProviderConfig(
            name=f"up{i}", type="openai", base_url=url, apis=apis, timeout=10.0, connect_timeout=2.0
        )
        for i, (url, _) in enumerate(targets)
    }
    models = {
        name: ModelConfig(
            name=name,
            targets=tuple(
                TargetConfig(provider=f"up{i}", model=f"up-{name}", weight=weight)
                for i, (_, weight) in enumerate(targets)
            ),
        )
        for name in MODELS
    }
    return dataclasses.replace(base, providers=providers, models=models)


def sdk(gw: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=30)


async def quota_used(gw: RunningGateway) -> tuple[int, int, int]:
    [status] = await gw.gateway.limits.quota.status("default")
    return status.input_tokens, status.output_tokens, status.total_tokens


def usage_of(raw: dict[str, Any]) -> tuple[int, int, int]:
    return raw["input_tokens"], raw["output_tokens"], raw["total_tokens"]


# --- JSON in, JSON out -----------------------------------------------------------------------


async def test_images_generations(media: Any, start_gateway: Any, sock_dir: Path) -> None:
    up = await media()
    gw = await start_gateway(config(sock_dir, [(up.url, 1)]))
    async with sdk(gw) as client:
        raw = await client.images.with_raw_response.generate(
            model="gpt-image-1", prompt="a red fox", size="1024x1024", quality="low"
        )
    images = raw.parse()
    assert images.data and images.data[0].revised_prompt == "a red fox"
    assert raw.content == up.sent[0]  # as the upstream sent it
    assert raw.headers["x-aigw-provider"] == "up0" and raw.headers["x-request-id"]
    [seen] = up.seen
    assert seen.body == {
        "model": "up-gpt-image-1",
        "prompt": "a red fox",
        "size": "1024x1024",
        "quality": "low",
    }
    assert await quota_used(gw) == usage_of(IMAGE_USAGE)  # the answer's usage, recorded


async def test_moderations(media: Any, start_gateway: Any, sock_dir: Path) -> None:
    up = await media()
    gw = await start_gateway(config(sock_dir, [(up.url, 1)]))
    async with sdk(gw) as client:
        flagged = await client.moderations.create(
            model="omni-moderation-latest", input="I will kill them"
        )
        clean = await client.moderations.create(model="omni-moderation-latest", input="a nice day")
    assert flagged.results[0].flagged and flagged.results[0].categories.violence
    assert not clean.results[0].flagged
    assert flagged.model == "up-omni-moderation-latest"  # the upstream's answer, untouched
    assert [s.body["input"] for s in up.seen] == ["I will kill them", "a nice day"]
    assert await quota_used(gw) == (0, 0, 0)  # moderations carry no usage


# --- speech: the answer streamed back ----------------------------------------------------------


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
async def test_speech_is_streamed_back_as_it_comes(
    media: Any, start_gateway: Any, sock_dir: Path, stream_format: str
) -> None:
    up = await media()
    gw = await start_gateway(config(sock_dir, [(up.url, 1)]))
    extra = {"stream_format": "sse"} if stream_format == "sse" else {}
    async with (
        sdk(gw) as client,
        client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="one two three", **extra
        ) as response,
    ):
        pieces = response.iter_bytes()
        first = await anext(pieces)
        # The upstream holds the rest of its answer: the first piece came through alone.
        assert up.holding
        up.release.set()
        body = first + b"".join([piece async for piece in pieces])
        content_type = response.headers["content-type"]
    assert body == up.sent[0]
    assert content_type == ("text/event-stream" if stream_format == "sse" else "audio/mpeg")
    assert up.seen[0].body["model"] == "up-tts-1"
    if stream_format == "sse":
        assert b"".join(SPEECH_PIECES)[:10] not in body  # base64 in events
        assert await quota_used(gw) == usage_of(SPEECH_USAGE)  # the last event's usage
    else:
        assert body == b"".join(SPEECH_PIECES)
        assert await quota_used(gw) == (0, 0, 0)


# --- transcriptions: multipart uploads streamed up ---------------------------------------------


def audio_file(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # audio.translations
@pytest.mark.parametrize("endpoint", ["transcriptions", "translations"])
async def test_a_large_upload_reaches_the_upstream_whole(
    media: Any, start_gateway: Any, sock_dir: Path, endpoint: str
) -> None:
    up = await media()
    gw = await start_gateway(config(sock_dir, [(up.url, 1)]))
    data = audio_file(5 * MiB + 123)  # many reads of 64 KiB
    async with sdk(gw) as client:
        api = getattr(client.audio, endpoint)
        extra = {"language": "de"} if endpoint == "transcriptions" else {}
        result = await api.create(
            model="whisper-1", file=("talk.wav", data, "audio/wav"), prompt="names", **extra
        )
    assert result.text == f"{len(data)} bytes heard by up-whisper-1"
    [seen] = up.seen
    assert seen.path == f"audio/{endpoint}"
    assert seen.body["sha256"] == hashlib.sha256(data).hexdigest()
    assert seen.body["file"] == {"filename": "talk.wav", "size": len(data)}
    assert seen.body["model"] == "up-whisper-1" and seen.body["prompt"] == "names"
    assert seen.body.get("language") == extra.get("language")
    assert await quota_used(gw) == usage_of(TRANSCRIPTION_USAGE)


async def test_an_upload_fails_over_when_its_first_target_refuses_before_reading_it(
    media: Any, start_gateway: Any, sock_dir: Path
) -> None:
    busy, good = await media(refuse_status=503), await media()
    gw = await start_gateway(config(sock_dir, [(busy.url, 100), (good.url, 1)]))
    data = audio_file(3 * MiB)
    async with sdk(gw) as client:
        for _ in range(2):
            result = await client.audio.transcriptions.create(
                model="whisper-1", file=("talk.wav", data, "audio/wav")
            )
            assert result.text == f"{len(data)} bytes heard by up-whisper-1"
    assert len(busy.seen) == 2  # each upload went to the busy target first
    assert [s.body["sha256"] for s in good.seen] == [hashlib.sha256(data).hexdigest()] * 2


async def test_an_upload_fails_over_when_its_first_target_is_down(
    media: Any, start_gateway: Any, sock_dir: Path
) -> None:
    good = await media()
    gone = await media()
    await gone.stop()  # nothing listens there any more
    gw = await start_gateway(config(sock_dir, [(gone.url, 100), (good.url, 1)]))
    data = audio_file(MiB)
    async with sdk(gw) as client:
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=("talk.wav", data, "audio/wav")
        )
    assert result.text == f"{len(data)} bytes heard by up-whisper-1"
    assert good.seen[0].body["sha256"] == hashlib.sha256(data).hexdigest()


# --- 413: an upload above server.max_body_size -------------------------------------------------

CHUNK = 64 * 1024  # what the gateway reads of a client at once, and what this client writes
BOUNDARY = "aigw-413"


def form_parts(size: int, *, file_first: bool = False) -> list[bytes]:
    model = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
    ).encode()
    file_head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    data = [random.Random(size).randbytes(CHUNK)] * (size // CHUNK)
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    if file_first:
        return [file_head, *data, b"\r\n" + model, tail[2:]]
    return [model + file_head, *data, tail]


async def upload_raw(
    gw: RunningGateway, parts: list[bytes], *, declared: bool
) -> tuple[int, bytes]:
    """Send a multipart upload over a plain socket, a chunk at a time, each only once the
    previous one left this client's (small) socket buffer, until the gateway answers or closes.
    Returns how many body bytes the client managed to send, and what it got back."""
    import socket

    port = gw.gateway.bound_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    writer.transport.set_write_buffer_limits(high=CHUNK)
    length = sum(map(len, parts))
    framing = f"Content-Length: {length}" if declared else "Transfer-Encoding: chunked"
    writer.write(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: aigw\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing}\r\n\r\n".encode()
    )

    async def answer() -> bytes:
        got = b""
        with contextlib.suppress(ConnectionError):
            while piece := await reader.read(65536):
                got += piece
        return got

    answered = asyncio.ensure_future(answer())
    sent = 0
    try:
        for part in parts:
            if answered.done():
                break
            writer.write(part if declared else b"%x\r\n%b\r\n" % (len(part), part))
            try:
                await writer.drain()
            except ConnectionError:
                break
            sent += len(part)
            await asyncio.sleep(0)  # the gateway's turn, as a network between them would give
        return sent, await asyncio.wait_for(answered, 10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("declared", "file_first", "limit"),
    [(True, False, MiB), (False, False, MiB), (False, True, 256 * 1024)],
    ids=["content-length", "chunked", "file-first"],
)
async def test_an_upload_over_the_limit_is_refused_and_stops_early(
    media: Any, start_gateway: Any, sock_dir: Path, declared: bool, file_first: bool, limit: int
) -> None:
    up = await media()
    gw = await start_gateway(config(sock_dir, [(up.url, 1)], server={"max_body_size": limit}))
    parts = form_parts(16 * MiB, file_first=file_first)
    sent, answer = await upload_raw(gw, parts, declared=declared)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), answer[:200]
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    # Read no further than the limit: what the client got out is at most the limit and a few
    # chunks in flight (socket buffers), never its 16 MiB.
    assert sent <= (limit if not declared else 0) + 3 * CHUNK, sent
    assert up.seen == []  # no target got a whole request
    for balancer in gw.gateway.runtime.balancers:
        assert [t.in_flight for t in balancer.targets] == [0]  # every lease given back
    async with sdk(gw) as client:  # and the gateway is fine
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", b"x" * 1000, "audio/wav")
        )
    assert result.text == "1000 bytes heard by up-whisper-1"


async def test_every_endpoint_fails_over_through_the_balancer_and_is_counted(
    media: Any, start_gateway: Any, sock_dir: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    busy, good = await media(refuse_status=500), await media()
    good.release.set()  # speech answers at once
    gw = await start_gateway(config(sock_dir, [(busy.url, 100), (good.url, 1)]))
    async with sdk(gw) as client:
        images = await client.images.generate(model="gpt-image-1", prompt="a fox")
        speech = await client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
        text = await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", b"x" * 100, "audio/wav")
        )
        moderation = await client.moderations.create(model="omni-moderation-latest", input="hi")
    assert images.data and images.data[0].revised_prompt == "a fox"
    assert speech.content == b"".join(SPEECH_PIECES)
    assert text.text == "100 bytes heard by up-whisper-1"
    assert not moderation.results[0].flagged
    paths = ["images/generations", "audio/speech", "audio/transcriptions", "moderations"]
    assert [s.path for s in busy.seen] == [s.path for s in good.seen] == paths
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
        families = list(text_string_to_metric_families(await r.text()))
    done = {
        (
            sample.labels["model"],
            sample.labels["target"],
            sample.labels["status"],
            sample.labels["endpoint"],
        ): sample.value
        for family in families
        if family.name == "aigw_requests"
        for sample in family.samples
        if sample.name == "aigw_requests_total"
    }
    assert done == {
        (model, f"up1/up-{model}", "200", path): 1.0
        for model, path in zip(MODELS, paths, strict=True)
    }
    assert await quota_used(gw) == tuple(
        a + b for a, b in zip(usage_of(IMAGE_USAGE), usage_of(TRANSCRIPTION_USAGE), strict=True)
    )
