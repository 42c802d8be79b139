"""The audit hook against real files: line content, redaction, rotation, an unwritable path and
a writer that cannot keep up."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from aigw.errors import ContentFilteredError, UpstreamTimeoutError
from aigw.hooks.audit import AuditHook, default_audit_path
from aigw.hooks.base import RequestContext, ResponseInfo, Usage

EMAIL = "jane.roe@example.com"
KEY = "sk-proj-Abc123Def456Ghi789Jkl012Mno345"
CARD = "4111 1111 1111 1111"
PROMPT = f"My email is {EMAIL}, my card {CARD} and my key {KEY}."
ANSWER_BODY = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"Noted {EMAIL}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }
).encode()

WALL = 1_700_000_000.0
STARTED = 500.0


def make_hook(path: Path, **options: Any) -> AuditHook:
    return AuditHook(path=path, clock=lambda: WALL, monotonic=lambda: STARTED + 0.25, **options)


def ctx(request_id: str = "req-1", **kw: Any) -> RequestContext:
    base: dict[str, Any] = {
        "request_id": request_id,
        "tenant": "team-a",
        "endpoint": "chat/completions",
        "body": {
            "model": "gpt",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
            ],
        },
        "started": STARTED,
        "model": "gpt",
        "target": "openai/gpt-4o-mini",
        "cache": "miss",
    }
    base.update(kw)
    return RequestContext(**base)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_one_line_per_request_without_bodies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hook = make_hook(path)
    assert hook.wants_stream_text is False
    await hook.after_response(ctx(), ResponseInfo(200, ANSWER_BODY, usage=Usage(9, 3, 12)))
    await hook.on_error(ctx("req-2"), UpstreamTimeoutError("Upstream timed out after 30s"))
    await hook.close()
    first, second = read_lines(path)
    assert first == {
        "time": "2023-11-14T22:13:20.000Z",
        "request_id": "req-1",
        "tenant": "team-a",
        "endpoint": "chat/completions",
        "dialect": "chat",
        "model": "gpt",
        "target": "openai/gpt-4o-mini",
        "upstream_request_id": None,
        "status": 200,
        "stream": False,
        "cache": "miss",
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "total_tokens": 12,
        "latency_ms": 250.0,
        "error": None,
    }
    assert second["request_id"] == "req-2"
    assert second["status"] == 504
    assert second["error"] == "Upstream timed out after 30s"
    assert second["total_tokens"] is None
    assert EMAIL not in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert hook.stats().written == 2


async def test_bodies_are_logged_redacted(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hook = make_hook(path, log_bodies=True)
    assert hook.wants_stream_text is True
    await hook.after_response(ctx(), ResponseInfo(200, ANSWER_BODY, usage=Usage(9, 3, 12)))
    await hook.after_response(
        ctx("req-2", stream=True), ResponseInfo(200, text=f"Call me at {EMAIL}")
    )
    await hook.on_error(ctx("req-3"), ContentFilteredError(f"blocked: {KEY}"))
    await hook.close()
    raw = path.read_text()
    for secret in (EMAIL, KEY, CARD, "4111111111111111"):
        assert secret not in raw
    one, two, three = read_lines(path)
    assert one["prompt"] == ("Be brief.\nMy email is [EMAIL], my card [CARD] and my key [SECRET].")
    assert one["answer"] == "Noted [EMAIL]"
    assert two["answer"] == "Call me at [EMAIL]" and two["stream"] is True
    assert three["error"] == "blocked: [SECRET]" and three["status"] == 400


async def test_bodies_unredacted_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hook = make_hook(path, log_bodies=True, redact_pii=False)
    await hook.after_response(ctx(), ResponseInfo(200, ANSWER_BODY))
    await hook.close()
    (line,) = read_lines(path)
    assert EMAIL in line["prompt"] and KEY in line["prompt"] and CARD in line["prompt"]


async def test_embedding_vectors_are_not_logged(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hook = make_hook(path, log_bodies=True)
    body = json.dumps({"data": [{"embedding": [0.125] * 8}]}).encode()
    await hook.after_response(
        ctx(endpoint="embeddings", body={"model": "e", "input": ["a", EMAIL]}),
        ResponseInfo(200, body),
    )
    await hook.close()
    (line,) = read_lines(path)
    assert line["prompt"] == "a\n[EMAIL]" and line["answer"] is None


async def test_rotation_at_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    hook = make_hook(path, max_bytes=2000, backups=2)
    for i in range(60):
        await hook.after_response(ctx(f"req-{i:03d}"), ResponseInfo(200, b"{}"))
        if i % 7 == 0:
            await hook.flush()  # several batches, so rotation happens across them too
    await hook.close()
    files = [path, path.with_name("audit.jsonl.1"), path.with_name("audit.jsonl.2")]
    assert all(f.exists() and 0 < f.stat().st_size <= 2000 for f in files)
    assert not path.with_name("audit.jsonl.3").exists()
    ids = [line["request_id"] for f in reversed(files) for line in read_lines(f)]
    # The newest lines are kept, in order, none cut in half; older ones rotated away.
    assert ids == [f"req-{i:03d}" for i in range(60 - len(ids), 60)]
    assert 3 <= len(ids) < 60
    assert hook.stats().written == 60


def test_max_bytes_accepts_sizes(tmp_path: Path) -> None:
    assert make_hook(tmp_path / "a", max_bytes="2KiB").max_bytes == 2048
    assert make_hook(tmp_path / "a").max_bytes == 50 * 1024 * 1024


async def test_rotation_without_backups_truncates(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hook = make_hook(path, max_bytes=1000, backups=0)
    for i in range(20):
        await hook.after_response(ctx(f"req-{i}"), ResponseInfo(200, b"{}"))
    await hook.close()
    assert path.stat().st_size <= 1000
    assert read_lines(path)[-1]["request_id"] == "req-19"
    assert os.listdir(tmp_path) == ["audit.jsonl"]


async def test_unwritable_path_warns_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    hook = make_hook(blocker / "audit.jsonl")
    with caplog.at_level(logging.WARNING, logger="aigw.audit"):
        for i in range(25):
            await hook.after_response(ctx(f"req-{i}"), ResponseInfo(200, b"{}"))
            if i % 5 == 0:
                await hook.flush()
        await hook.on_error(ctx("req-x"), RuntimeError("boom"))
        await hook.close()
    warnings = [r for r in caplog.records if r.name == "aigw.audit"]
    assert len(warnings) == 1
    assert "cannot be written" in warnings[0].getMessage()
    assert hook.stats().failed == 26 and hook.stats().written == 0


async def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    # A FIFO without a reader blocks the writer thread in open(): the queue fills up.
    path = tmp_path / "audit.fifo"
    os.mkfifo(path)
    hook = make_hook(path, queue_size=3)
    for i in range(10):
        await hook.after_response(ctx(f"req-{i}"), ResponseInfo(200, b"{}"))

    def read_all() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    reader = asyncio.create_task(asyncio.to_thread(read_all))
    await hook.close()
    lines = (await reader).splitlines()
    stats = hook.stats()
    # How many the writer thread took before it blocked depends on scheduling (it may take a
    # batch); with a queue of 3 and nothing read, at least 10 - 3 - one batch were dropped.
    assert stats.dropped >= 3
    assert len(lines) + stats.dropped == 10 == stats.written + stats.dropped


async def test_records_after_close_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hook = make_hook(path)
    await hook.close()  # never started: nothing to do, no file
    await hook.after_response(ctx(), ResponseInfo(200, b"{}"))
    assert not path.exists()


async def test_default_path_follows_platformdirs(tmp_path: Path) -> None:
    # conftest points XDG_STATE_HOME into tmp_path.
    hook = AuditHook()
    assert hook.path == default_audit_path()
    assert str(hook.path).startswith(str(tmp_path))
    await hook.after_response(ctx(), ResponseInfo(200, b"{}"))
    await hook.close()
    assert len(read_lines(hook.path)) == 1


@pytest.mark.parametrize(
    "options",
    [
        {"redact_pii": "yes"},
        {"log_bodies": 1},
        {"max_bytes": 0},
        {"max_bytes": "50 apples"},
        {"max_bytes": True},
        {"backups": -1},
        {"path": 5},
    ],
)
def test_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="audit: "):
        AuditHook(**options)
