"""The built-in `audit` hook: one JSON line per request in a size-rotated file.

    {"time": "2024-05-01T12:00:00.123Z", "request_id": "…", "tenant": "team-a",
     "endpoint": "chat/completions", "dialect": "chat", "model": "gpt-4o-mini",
     "target": "openai/gpt-4o-mini", "upstream_request_id": "req_…", "status": 200,
     "stream": false, "cache": "miss", "prompt_tokens": 12, "completion_tokens": 30,
     "total_tokens": 42, "latency_ms": 812.4, "error": null}

`endpoint` is the API of the body the hooks saw (a Responses or Messages request is seen in its
chat form), `dialect` the API the client spoke: chat, responses or messages.

With `log_bodies` the line also has `prompt` (the text of every message, completion prompt or
embedding input) and `answer` (the answer text; never embedding vectors). With `redact_pii`
(the default) prompt, answer and error message pass through `aigw.redact.redact` first.

The event loop only appends a record to a bounded queue (O(1), no I/O, no formatting). A
background thread formats, redacts and writes records in batches. A full queue drops records
(counted in `stats().dropped`); a file that cannot be written loses those lines (counted in
`stats().failed`) and logs one warning on the `aigw.audit` logger per outage. A request never
fails because of the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import platformdirs

from aigw.config import SIZE_HINT, parse_size
from aigw.errors import GatewayError
from aigw.hooks.base import Hook, RequestContext, ResponseInfo, Usage
from aigw.hooks.texts import answer_texts, request_texts
from aigw.paths import APP
from aigw.redact import redact

logger = logging.getLogger("aigw.audit")

DEFAULT_MAX_BYTES: Final = 50 * 1024 * 1024
DEFAULT_BACKUPS: Final = 5
DEFAULT_QUEUE_SIZE: Final = 10_000
_BATCH: Final = 512
_STOP: Final = object()


def default_audit_path() -> Path:
    return Path(platformdirs.user_log_dir(APP)) / "audit.jsonl"


@dataclass(frozen=True, slots=True)
class AuditStats:
    written: int  # lines in the file
    dropped: int  # lines lost because the queue was full
    failed: int  # lines lost because the file could not be written


class _Record:
    """What the event loop hands the writer thread; formatted there."""

    __slots__ = (
        "answer_body",
        "answer_text",
        "cache",
        "dialect",
        "endpoint",
        "error",
        "latency_ms",
        "model",
        "prompt_body",
        "request_id",
        "status",
        "stream",
        "target",
        "tenant",
        "time",
        "upstream_request_id",
        "usage",
    )

    def __init__(
        self,
        ctx: RequestContext,
        wall: float,
        latency_ms: float,
        status: int,
        usage: Usage | None,
        error: str | None,
    ) -> None:
        self.time = wall
        self.request_id = ctx.request_id
        self.tenant = ctx.tenant
        self.endpoint = ctx.endpoint
        self.dialect = ctx.dialect
        self.model = ctx.model
        self.target = ctx.target
        self.upstream_request_id = ctx.upstream_request_id
        self.status = status
        self.stream = ctx.stream
        self.cache = ctx.cache
        self.usage = usage
        self.latency_ms = latency_ms
        self.error = error
        # The body dict is not touched once the request is done, so the writer may read it.
        self.prompt_body: dict[str, Any] | None = None
        self.answer_body: bytes | None = None
        self.answer_text: str | None = None


class AuditHook(Hook):
    modifies_request = False
    observes_only = True  # one line per request, with the status the client got

    def __init__(
        self,
        *,
        path: str | os.PathLike[str] | None = None,
        redact_pii: bool = True,
        log_bodies: bool = False,
        max_bytes: int | str = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # Options come from YAML: check them here so `aigw validate` can report them.
        _check_bool("redact_pii", redact_pii)
        _check_bool("log_bodies", log_bodies)
        size = parse_size(max_bytes)
        if size is None or size < 1:
            raise ValueError(
                f"audit: max_bytes must be a size >= 1 byte ({SIZE_HINT}), got {max_bytes!r}"
            )
        _check_int("backups", backups, 0)
        _check_int("queue_size", queue_size, 1)
        _check_path(path)
        super().__init__(
            path=path,
            redact_pii=redact_pii,
            log_bodies=log_bodies,
            max_bytes=max_bytes,
            backups=backups,
        )
        self.path = Path(path).expanduser() if path is not None else default_audit_path()
        self.redact_pii = redact_pii
        self.log_bodies = log_bodies
        self.max_bytes = size
        self.backups = backups
        # Stream text costs the proxy work per chunk: ask for it only when it is logged.
        # (Set through __dict__ because the base declares it as a ClassVar.)
        self.__dict__["wants_stream_text"] = log_bodies
        self._clock = clock
        self._monotonic = monotonic
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._closed = False
        # Writer-thread state.
        self._file: Any = None
        self._size = 0
        self._warned = False
        self._written = 0
        self._failed = 0
        # Event-loop state.
        self._dropped = 0

    # --- hook interface (event loop) ----------------------------------------------------

    async def after_response(self, ctx: RequestContext, response: ResponseInfo) -> None:
        record = _Record(
            ctx,
            self._clock(),
            (self._monotonic() - ctx.started) * 1000.0,
            response.status,
            response.usage or ctx.usage,
            None,
        )
        if self.log_bodies:
            record.prompt_body = ctx.body
            record.answer_body = response.body
            record.answer_text = response.text
        self._submit(record)

    async def on_error(self, ctx: RequestContext, error: Exception) -> None:
        if isinstance(error, GatewayError):
            status, message = error.status, error.message
        else:
            status, message = 500, f"{type(error).__name__}: {error}"
        record = _Record(
            ctx,
            self._clock(),
            (self._monotonic() - ctx.started) * 1000.0,
            status,
            ctx.usage,
            message,
        )
        if self.log_bodies:
            record.prompt_body = ctx.body
        self._submit(record)

    async def flush(self) -> None:
        """Wait until every record handed over so far is written (or failed)."""
        if self._thread is not None:
            await asyncio.to_thread(self._queue.join)

    async def close(self) -> None:
        """Write what is queued, then stop the writer thread and close the file."""
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        await asyncio.to_thread(self._stop_and_join, thread)

    def stats(self) -> AuditStats:
        return AuditStats(self._written, self._dropped, self._failed)

    def _submit(self, record: _Record) -> None:
        if self._closed:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aigw-audit", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            if not self._dropped:
                logger.warning("audit queue full: dropping audit lines until the writer catches up")
            self._dropped += 1

    def _stop_and_join(self, thread: threading.Thread) -> None:
        self._queue.put(_STOP)  # blocks only while the writer drains a full queue
        thread.join()

    # --- writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines: list[bytes] = []
            for item in batch:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Record):
                    try:
                        lines.append(self._format(item))
                    except Exception:  # a record we cannot format must not kill the writer
                        logger.exception("audit: could not format a record")
                        self._failed += 1
            if lines:
                self._write(lines)
            for _ in batch:
                self._queue.task_done()
        self._close_file()

    def _format(self, r: _Record) -> bytes:
        u = r.usage
        clean = redact if self.redact_pii else _identity
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(r.time, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "request_id": r.request_id,
            "tenant": r.tenant,
            "endpoint": r.endpoint,
            "dialect": r.dialect,
            "model": r.model,
            "target": r.target,
            "upstream_request_id": r.upstream_request_id,
            "status": r.status,
            "stream": r.stream,
            "cache": r.cache,
            "prompt_tokens": u.prompt_tokens if u else None,
            "completion_tokens": u.completion_tokens if u else None,
            "total_tokens": u.total_tokens if u else None,
            "latency_ms": round(r.latency_ms, 1),
            "error": clean(r.error) if r.error else None,
        }
        if self.log_bodies:
            prompt = prompt_text(r.endpoint, r.prompt_body) if r.prompt_body else None
            answer = r.answer_text
            if answer is None and r.answer_body is not None:
                answer = answer_text(r.endpoint, r.answer_body)
            line["prompt"] = clean(prompt) if prompt else prompt
            line["answer"] = clean(answer) if answer else answer
        return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    def _write(self, lines: list[bytes]) -> None:
        pending: list[bytes] = []
        pending_size = 0
        written_before = self._written
        try:
            if self._file is None:
                self._open()
            for line in lines:
                if self._size + pending_size + len(line) > self.max_bytes and (
                    self._size + pending_size
                ):
                    self._file.write(b"".join(pending))
                    self._written += len(pending)
                    pending, pending_size = [], 0
                    self._rotate()
                pending.append(line)
                pending_size += len(line)
            self._file.write(b"".join(pending))
            self._file.flush()
            self._size += pending_size
            self._written += len(pending)
            self._warned = False
        except OSError as exc:
            self._failed += len(lines) - (self._written - written_before)
            self._close_file()
            if not self._warned:
                self._warned = True
                logger.warning(
                    "audit log %s cannot be written (%s); audit lines are dropped until it can",
                    self.path,
                    exc.strerror or exc,
                )

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # 0600: with log_bodies the file holds prompts.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            self._size = os.fstat(fd).st_size
            self._file = os.fdopen(fd, "ab")
        except BaseException:
            os.close(fd)
            raise

    def _rotate(self) -> None:
        self._file.flush()
        self._close_file()
        if self.backups:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            os.truncate(self.path, 0)
        self._open()

    def _close_file(self) -> None:
        f, self._file = self._file, None
        self._size = 0
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"audit: {name} must be true or false, got {value!r}")


def _check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"audit: {name} must be an integer >= {low}, got {value!r}")


def _check_path(value: object) -> None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"audit: path must be a string, got {value!r}")


def _identity(text: str) -> str:
    return text


def prompt_text(endpoint: str, body: dict[str, Any]) -> str:
    """The prompt text of a request, joined by newlines (see aigw.hooks.texts)."""
    return "\n".join(request_texts(endpoint, body))


def answer_text(endpoint: str, body: bytes) -> str | None:
    """The text of a non-streamed answer, joined by newlines; a body that is not JSON is
    logged as it came. None for embeddings (vectors are not text)."""
    if endpoint == "embeddings":
        return None
    texts = answer_texts(body)
    if texts is None:
        return body.decode("utf-8", "replace")
    return "\n".join(texts)
