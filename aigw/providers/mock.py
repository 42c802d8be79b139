"""The built-in mock provider: deterministic OpenAI-shaped answers with no network.

For demos, offline tests and benchmarks. It echoes the last user message (or answers a fixed
text), streams word by word, counts usage (one token per word, at least one), embeds text into a
deterministic unit vector, and can add latency and fail a fraction of requests with HTTP 500.
It answers the Anthropic Messages API (`messages`, `messages/count_tokens`) natively too.

Its answers are bounded like a real upstream's: a stream is made event by event as it is read
(a long echo never sits in memory whole), `dimensions` is at most `MAX_DIMENSIONS`, and an
embeddings answer over `server.max_upstream_body` fails as the HTTP transport would (502).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import struct
import time
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from typing import Any

from aigw import sse
from aigw.config import MockOptions, ProviderConfig, format_size
from aigw.dialects import messages, responses
from aigw.errors import InvalidRequestError, MalformedRequestError, UpstreamError, error_body
from aigw.providers import mock_media
from aigw.providers.base import MAX_BODY, Provider, StreamedBody, UpstreamResponse

_JSON = {"content-type": "application/json"}
_SSE = {"content-type": "text/event-stream"}
EMBEDDING_DIMENSIONS = 16
#: The largest `dimensions` the mock embeds into (OpenAI's largest model has 3072).
MAX_DIMENSIONS = 8192
#: Fewest bytes one number of an embedding takes in JSON (`0.1234, `) and in base64.
_FLOAT_BYTES = {False: 8, True: 5}


def count_tokens(text: str) -> int:
    """The mock's tokenizer: one token per whitespace-separated word, at least one."""
    return max(1, len(text.split()))


class MockResponse(UpstreamResponse):
    __slots__ = ("_body", "_chunks", "_delay", "_latency")

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        *,
        body: bytes = b"",
        chunks: Iterable[bytes] | None = None,
        latency: float = 0.0,
        delay: float = 0.0,
    ) -> None:
        super().__init__(status, headers)
        self._body = body
        self._chunks = chunks
        self._latency = latency
        self._delay = delay

    async def read(self) -> bytes:
        if self._chunks is not None:
            return b"".join(self._chunks)
        return self._body

    async def iter_chunks(self) -> AsyncGenerator[bytes, None]:
        chunks: Iterable[bytes] = self._chunks if self._chunks is not None else [self._body]
        for i, chunk in enumerate(chunks):
            if i and self._delay:
                await asyncio.sleep(self._delay)
            yield chunk

    def close(self) -> None:
        return None


class MockProvider(Provider):
    def __init__(self, config: ProviderConfig, *, max_body: int = MAX_BODY) -> None:
        super().__init__(config.name, max_body=max_body)
        self.options: MockOptions = config.mock
        self._rng = random.Random(self.options.seed)

    async def probe(self) -> None:
        return None

    async def forward(
        self,
        endpoint: str,
        body: bytes | StreamedBody,
        *,
        content_type: str,
        timeout: float,
        client_headers: Sequence[tuple[bytes, bytes]] = (),
        trace_headers: bytes = b"",
    ) -> UpstreamResponse:
        """The pass-through endpoints (`aigw.providers.mock_media`); latency and failures as
        for `send()`: a failed request leaves a streamed body unread (still replayable)."""
        opts = self.options
        if opts.latency:
            await asyncio.sleep(min(opts.latency, timeout))
        if opts.failure_rate and self._rng.random() < opts.failure_rate:
            return MockResponse(
                500, _JSON, body=error_body("mock failure", "server_error", None, "mock_failure")
            )
        try:
            media = await mock_media.answer(endpoint, body, content_type)
        except MalformedRequestError:
            raise  # the body broke its own framing: the caller's error, as over HTTP
        except InvalidRequestError as exc:
            return MockResponse(
                400, _JSON, body=error_body(f"mock cannot answer: {exc}", exc.type, exc.param)
            )
        headers = {"content-type": media.content_type}
        if media.chunks is not None:
            return MockResponse(200, headers, chunks=media.chunks, delay=opts.chunk_delay)
        return MockResponse(media.status, headers, body=media.body)

    async def send(
        self,
        endpoint: str,
        body: bytes,
        *,
        stream: bool,
        timeout: float,
        client_headers: Sequence[tuple[bytes, bytes]] = (),
        trace_headers: bytes = b"",
    ) -> UpstreamResponse:
        opts = self.options
        if opts.latency:
            await asyncio.sleep(min(opts.latency, timeout))
        if opts.failure_rate and self._rng.random() < opts.failure_rate:
            return MockResponse(
                500, _JSON, body=error_body("mock failure", "server_error", None, "mock_failure")
            )
        try:
            request = json.loads(body)
            if endpoint == "embeddings":
                return MockResponse(200, _JSON, body=self._embeddings(request))
            if endpoint == responses.API:
                return self._responses(request, stream)
            if endpoint.partition("?")[0] in ("messages", "messages/count_tokens"):
                return self._messages(endpoint.partition("?")[0], request, stream)
            if endpoint not in ("chat/completions", "completions"):
                raise InvalidRequestError(f"Unknown endpoint {endpoint}")
            return self._completion(endpoint, request, stream)
        except (InvalidRequestError, ValueError, TypeError, AttributeError) as exc:
            return MockResponse(
                400, _JSON, body=error_body(f"mock cannot answer: {exc}", "invalid_request_error")
            )

    # --- answers ---------------------------------------------------------------------------

    def _completion(self, endpoint: str, request: dict[str, Any], stream: bool) -> MockResponse:
        chat = endpoint == "chat/completions"
        prompt_text = _prompt_text(request, chat)
        answer = self.options.answer if self.options.answer is not None else _echo(prompt_text)
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        words = answer.split() or ["ok"]
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(words):
            words = words[:limit]
            finish = "length"
        usage = {
            "prompt_tokens": count_tokens(prompt_text),
            "completion_tokens": len(words),
            "total_tokens": count_tokens(prompt_text) + len(words),
        }
        model = str(request.get("model", "mock"))
        rid = "chatcmpl-mock" + hashlib.sha1(prompt_text.encode()).hexdigest()[:20]
        created = int(time.time())
        if not stream:
            text = " ".join(words)
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                obj = "text_completion"
            payload = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
            return MockResponse(200, _JSON, body=json.dumps(payload).encode())

        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = (
            f'{{"id": "{rid}", "object": "{obj}",'
            f' "created": {created}, "model": {json.dumps(model)}, "choices": '
        )
        chunks = _stream_events(head, words, finish, usage if include_usage else None, chat=chat)
        return MockResponse(200, _SSE, chunks=chunks, delay=self.options.chunk_delay)

    def _responses(self, request: dict[str, Any], stream: bool) -> MockResponse:
        """A Responses request, answered natively: the chat logic's answer rendered as a
        `response` (or its event stream). The mock keeps no state, so the stateful parameters
        are accepted and change nothing."""
        try:
            chat = responses.to_chat(
                {k: v for k, v in request.items() if k not in responses.STATEFUL}
            )
        except InvalidRequestError as exc:
            return MockResponse(400, _JSON, body=exc.body())
        answer = self._completion("chat/completions", chat, stream)
        digest = hashlib.sha1(json.dumps(request, sort_keys=True).encode()).hexdigest()[:24]
        rid, created = "resp_mock" + digest, int(time.time())
        if not stream:
            body = responses.from_chat(
                json.loads(answer._body), request, response_id=rid, created_at=created
            )
            return MockResponse(200, _JSON, body=json.dumps(body).encode())
        events = _responses_events(
            answer._chunks or (),
            responses.StreamFromChat(request, response_id=rid, created_at=created),
        )
        return MockResponse(200, _SSE, chunks=events, delay=self.options.chunk_delay)

    def _messages(self, endpoint: str, request: Any, stream: bool) -> MockResponse:
        """The Anthropic Messages API, answered natively: the request is read as chat
        (`aigw.dialects.messages`), answered as chat, and written back as Messages."""
        try:
            if endpoint == "messages/count_tokens":
                chat = messages.count_tokens_to_chat(request)
                tokens = count_tokens(_prompt_text(chat, True))
                return MockResponse(200, _JSON, body=json.dumps({"input_tokens": tokens}).encode())
            chat = messages.to_chat(request)
        except InvalidRequestError as exc:
            return MockResponse(exc.status, _JSON, body=messages.error_body(exc))
        answer = self._completion("chat/completions", chat, stream)
        digest = hashlib.sha1(_prompt_text(chat, True).encode()).hexdigest()[:24]
        message_id = "msg_mock" + digest
        if not stream:
            message = messages.from_chat(json.loads(answer._body), request, message_id=message_id)
            return MockResponse(200, _JSON, body=json.dumps(message).encode())
        events = _messages_events(answer._chunks or (), request, message_id)
        return MockResponse(200, _SSE, chunks=events, delay=self.options.chunk_delay)

    def _embeddings(self, request: dict[str, Any]) -> bytes:
        raw = request.get("input")
        inputs: list[Any] = (
            raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        )
        dims = request.get("dimensions") or EMBEDDING_DIMENSIONS
        if not isinstance(dims, int) or not 0 < dims <= MAX_DIMENSIONS:
            raise InvalidRequestError(f"dimensions must be an integer from 1 to {MAX_DIMENSIONS}")
        as_base64 = request.get("encoding_format") == "base64"
        if len(inputs) * dims * _FLOAT_BYTES[as_base64] > self.max_body:
            # Refused before it is built, as the transport refuses a real upstream's answer.
            limit = format_size(self.max_body)
            raise UpstreamError(
                f"Upstream '{self.name}' answer exceeds server.max_upstream_body ({limit})"
            )
        data = []
        tokens = 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(str(t) for t in item)
            tokens += count_tokens(text) if isinstance(item, str) else max(1, len(item))
            vector = _unit_vector(text, int(dims))
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        payload = {
            "object": "list",
            "data": data,
            "model": str(request.get("model", "mock")),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return json.dumps(payload).encode()


def _stream_events(
    head: str, words: list[str], finish: str, usage: dict[str, int] | None, *, chat: bool
) -> Iterator[bytes]:
    """The SSE events of an answer, made one by one as the stream is read."""
    usage_field = ', "usage": null' if usage is not None else ""
    if chat:
        first = (
            '[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]'
        )
        yield f"data: {head}{first}{usage_field}}}\n\n".encode()
    for i, word in enumerate(words):
        piece = json.dumps(word if i == 0 else " " + word)
        if chat:
            choice_s = f'[{{"index": 0, "delta": {{"content": {piece}}}, "finish_reason": null}}]'
        else:
            choice_s = f'[{{"index": 0, "text": {piece}, "finish_reason": null}}]'
        yield f"data: {head}{choice_s}{usage_field}}}\n\n".encode()
    if chat:
        last = f'[{{"index": 0, "delta": {{}}, "finish_reason": "{finish}"}}]'
    else:
        last = f'[{{"index": 0, "text": "", "finish_reason": "{finish}"}}]'
    yield f"data: {head}{last}{usage_field}}}\n\n".encode()
    if usage is not None:
        yield f'data: {head}[], "usage": {json.dumps(usage)}}}\n\n'.encode()
    yield b"data: [DONE]\n\n"


def _responses_events(chat: Iterable[bytes], stream: responses.StreamFromChat) -> Iterator[bytes]:
    """The chat events as Responses events, one chat event at a time."""
    yield stream.start()
    for frame in chat:
        data = sse.data_of(frame)
        if data is None or data == b"[DONE]":
            continue
        events = stream.feed(json.loads(data))
        if events:
            yield events
    yield stream.finish(None)


def _messages_events(
    chat_events: Iterable[bytes], request: dict[str, Any], message_id: str
) -> Iterator[bytes]:
    """The mock's chat stream as Messages events, translated one by one as they are read."""
    stream = messages.StreamFromChat(request, message_id=message_id)
    yield stream.start()
    for event in chat_events:
        data = event[len(b"data: ") :].rstrip(b"\n")
        if data == b"[DONE]":
            break
        if piece := stream.feed(json.loads(data)):
            yield piece
    yield stream.finish(None)


def _prompt_text(request: dict[str, Any], chat: bool) -> str:
    if not chat:
        prompt = request.get("prompt", "")
        return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
    parts: list[str] = []
    for message in request.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return " ".join(parts)


def _echo(prompt_text: str) -> str:
    return (
        f"You said: {prompt_text}" if prompt_text.strip() else "Hello from the aigw mock provider."
    )


def _unit_vector(text: str, dims: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    while len(digest) < dims:
        digest += hashlib.sha256(digest).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:dims]]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [round(x / norm, 6) for x in raw]
