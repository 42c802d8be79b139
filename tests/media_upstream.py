"""A loopback upstream for the pass-through endpoints (images, speech, transcriptions and
translations, moderations): a real aiohttp server on 127.0.0.1 that answers as OpenAI does and
records what it received and sent.

- a multipart upload is read with aiohttp's own multipart reader, its file hashed as it arrives
  (never held), so a test compares the hash with the client's;
- `refuse_status`: every request is refused with that status as soon as its headers are in,
  before any of its body is read (what a target with a full queue or a gateway in front does);
- speech streams its audio (or, with `stream_format: sse`, its events) in pieces and holds the
  rest until `release` is set, so a test sees the first piece reach the client before the
  upstream has sent the whole answer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

#: The longest speech holds the rest of its answer for a release that does not come.
HOLD_TIMEOUT = 10.0
SPEECH_PIECES = (b"ID3\x04audio-frame-1 " * 100, b"audio-frame-2 " * 300, b"audio-frame-3")
IMAGE_USAGE = {
    "input_tokens": 10,
    "output_tokens": 4160,
    "total_tokens": 4170,
    "input_tokens_details": {"text_tokens": 10, "image_tokens": 0},
}
TRANSCRIPTION_USAGE = {
    "type": "tokens",
    "input_tokens": 12,
    "output_tokens": 3,
    "total_tokens": 15,
    "input_token_details": {"audio_tokens": 12, "text_tokens": 0},
}
SPEECH_USAGE = {"input_tokens": 4, "output_tokens": 30, "total_tokens": 34}


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]  # a JSON body, or a form's fields (its file as size and sha256)


@dataclass
class MediaUpstream:
    refuse_status: int | None = None
    seen: list[Seen] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)  # each answer's body, as written
    release: asyncio.Event = field(default_factory=asyncio.Event)
    holding = False  # speech sent its first piece and waits for `release`
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> MediaUpstream:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/v1/images/generations", self.images)
        app.router.add_post("/v1/audio/speech", self.speech)
        app.router.add_post("/v1/audio/transcriptions", self.transcribe)
        app.router.add_post("/v1/audio/translations", self.transcribe)
        app.router.add_post("/v1/moderations", self.moderations)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _json(self, payload: dict[str, Any]) -> web.Response:
        raw = json.dumps(payload).encode()
        self.sent.append(raw)
        return web.Response(body=raw, content_type="application/json")

    async def _read_json(self, request: web.Request, path: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(await request.read())
        self.seen.append(Seen(path, dict(request.headers), body))
        return body

    def _refusal(self, request: web.Request) -> web.Response | None:
        if self.refuse_status is None:
            return None
        self.seen.append(Seen(request.path.removeprefix("/v1/"), dict(request.headers), {}))
        error = {"message": "busy", "type": "server_error", "param": None, "code": None}
        return web.json_response({"error": error}, status=self.refuse_status)

    async def images(self, request: web.Request) -> web.Response:
        if refusal := self._refusal(request):
            return refusal
        body = await self._read_json(request, "images/generations")
        image = base64.b64encode(f"png of {body['prompt']}".encode()).decode()
        return self._json(
            {
                "created": 1700000000,
                "data": [{"b64_json": image, "revised_prompt": body["prompt"]}],
                "usage": IMAGE_USAGE,
            }
        )

    async def moderations(self, request: web.Request) -> web.Response:
        if refusal := self._refusal(request):
            return refusal
        body = await self._read_json(request, "moderations")
        flagged = "kill" in json.dumps(body["input"])
        categories = {"violence": flagged, "hate": False}
        return self._json(
            {
                "id": "modr-1",
                "model": body.get("model", "omni-moderation-latest"),
                "results": [
                    {
                        "flagged": flagged,
                        "categories": categories,
                        "category_scores": {"violence": 0.99 if flagged else 0.01, "hate": 0.0},
                        "category_applied_input_types": {"violence": ["text"], "hate": ["text"]},
                    }
                ],
            }
        )

    async def speech(self, request: web.Request) -> web.StreamResponse:
        if refusal := self._refusal(request):
            return refusal
        body = await self._read_json(request, "audio/speech")
        sse = body.get("stream_format") == "sse"
        if sse:
            pieces = [
                b"data: "
                + json.dumps(
                    {"type": "speech.audio.delta", "audio": base64.b64encode(p).decode()}
                ).encode()
                + b"\n\n"
                for p in SPEECH_PIECES
            ]
            done = {"type": "speech.audio.done", "usage": SPEECH_USAGE}
            pieces.append(b"data: " + json.dumps(done).encode() + b"\n\n")
        else:
            pieces = list(SPEECH_PIECES)
        content_type = "text/event-stream" if sse else "audio/mpeg"
        out = web.StreamResponse(headers={"Content-Type": content_type})
        await out.prepare(request)
        written = b""
        try:
            await out.write(pieces[0])
            written += pieces[0]
            # The rest only once the client has the first piece (or after HOLD_TIMEOUT).
            self.holding = True
            async with asyncio.timeout(HOLD_TIMEOUT):
                await self.release.wait()
            self.holding = False
            for piece in pieces[1:]:
                await out.write(piece)
                written += piece
            await out.write_eof()
        except TimeoutError:
            self.holding = False
            await out.write_eof()
        finally:
            self.sent.append(written)
        return out

    async def transcribe(self, request: web.Request) -> web.Response:
        if refusal := self._refusal(request):  # before reading any of the body
            return refusal
        path = request.path.removeprefix("/v1/")
        fields: dict[str, Any] = {}
        digest = hashlib.sha256()
        size = 0
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader)
            if part.filename:
                while piece := await part.read_chunk(64 * 1024):
                    digest.update(piece)
                    size += len(piece)
                fields[part.name or ""] = {"filename": part.filename, "size": size}
            else:
                fields[part.name or ""] = (await part.read()).decode()
        fields["sha256"] = digest.hexdigest()
        self.seen.append(Seen(path, dict(request.headers), fields))
        return self._json(
            {"text": f"{size} bytes heard by {fields.get('model')}", "usage": TRANSCRIPTION_USAGE}
        )
