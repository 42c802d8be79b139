"""The admin socket: JSON errors on every endpoint, bounded quota values, `quota set` keeping a
tenant's period, `quota reset` refusing unknown tenants, `status` telling where the state lives,
and the socket kept private (its directory on the daemon side, the peer's uid on the CLI side).

An in-process Gateway with real stores answers on a real Unix socket; the CLI is the real
command tree (typer's CliRunner, in a thread) or `python -m aigw` as a subprocess. The tests
that need a second user run as root and hand files to uid 65534 (nobody)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner, Result

from aigw.admin_client import AdminClient
from aigw.cli import build_app
from aigw.config import (
    MAX_QUOTA_TOKENS,
    AuthConfig,
    AuthKey,
    Config,
    ModelConfig,
    ProviderConfig,
    QuotaConfig,
    Secret,
    ServerConfig,
    StateConfig,
    TargetConfig,
)
from aigw.errors import AdminError, StartupError
from aigw.hooks.base import Usage
from aigw.server import Gateway
from tests.conftest import cli_env

NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="handing files to another user (uid 65534) needs root"
)


def gateway_config(sock: Path, **sections: Any) -> Config:
    """The mock model, a tenant key for `keyed`, a configured quota for `team-a`."""
    return Config(
        server=ServerConfig(port=0, admin_socket=str(sock), shutdown_timeout=5.0),
        state=sections.pop("state", StateConfig(backend="memory")),
        auth=AuthConfig(keys=(AuthKey(tenant="keyed", key=Secret("sk-keyed-0123")),)),
        providers={"mock": ProviderConfig(name="mock", type="mock")},
        models={"mock": ModelConfig(name="mock", targets=(TargetConfig("mock", "mock"),))},
        quota=sections.pop("quota", QuotaConfig(period="daily", tenants={"team-a": 100})),
        **sections,
    )


async def admin_raw(
    sock: Path, method: str, path: str, body: bytes | None = None
) -> tuple[int, str, bytes]:
    """One request on the admin socket: status, content type, body."""
    connector = aiohttp.UnixConnector(path=str(sock))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, "http://admin" + path, data=body) as resp,
    ):
        return resp.status, resp.content_type, await resp.read()


async def aigw(*args: str) -> Result:
    """The real `aigw` command tree, in a thread: the AdminClient blocks, the gateway runs on
    this loop."""
    runner = CliRunner(env={"COLUMNS": "250"})  # long paths on one line
    return await asyncio.to_thread(runner.invoke, build_app(), list(args))


# --- JSON errors and bounded values ------------------------------------------------------------

TOO_BIG = 99999999999999999999  # the number: an OverflowError in SQLite before

ERROR_CASES = [
    ("GET", "/no/such/endpoint", None, 404, "no admin endpoint"),
    ("DELETE", "/status", None, 405, "not allowed"),
    ("POST", "/quota/team-a", b"{not json", 400, "JSON"),
    ("POST", "/quota/team-a", b"\xff\xfe", 400, "JSON"),
    ("POST", "/quota/team-a", b"[5]", 400, "JSON object"),
    ("POST", "/quota/team-a", b'{"tokens": "5"}', 400, "integer"),
    ("POST", "/quota/team-a", b'{"tokens": 1e20}', 400, "integer"),
    ("POST", "/quota/team-a", b'{"tokens": %d}' % TOO_BIG, 400, "at most 1,000,000,000,000,000"),
    ("POST", "/quota/team-a", b'{"tokens": %d}' % (MAX_QUOTA_TOKENS + 1), 400, "at most"),
    ("POST", "/quota/team-a", b'{"tokens": 5, "period": "fortnightly"}', 400, "period"),
    ("POST", "/quota/team-a", b'{"tokens": 5, "period": 7}', 400, "period"),
    ("POST", "/quota/team-a", b'{"tokens": 5, "period": ["daily"]}', 400, "period"),
    ("POST", "/quota/bad%20name", b'{"tokens": 5}', 400, "Invalid tenant name"),
    ("GET", "/quota/bad%20name", None, 400, "Invalid tenant name"),
    ("POST", "/quota/bad%20name/reset", None, 400, "Invalid tenant name"),
    ("POST", "/quota/nobody/reset", None, 404, "no tenant 'nobody'"),
    ("POST", "/quota/team-a", b'{"tokens": 5, "pad": "%s"}' % (b"x" * 100_000), 413, "too large"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    ERROR_CASES,
    ids=[f"{c[3]}-{i}" for i, c in enumerate(ERROR_CASES)],
)
async def test_every_admin_error_is_one_line_of_json(
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    words: str,
    sock_dir: Path,
    tmp_path: Path,
    start_gateway: Callable[[Config], Any],
) -> None:
    state = StateConfig(backend="sqlite", path=str(tmp_path / "state.db"))
    await start_gateway(gateway_config(sock_dir / "admin.sock", state=state))
    got, content_type, raw = await admin_raw(sock_dir / "admin.sock", method, path, body)
    assert (got, content_type) == (status, "application/json"), raw[:200]
    message = json.loads(raw)["error"]["message"]
    assert words in message and "\n" not in message


async def test_the_largest_quota_is_stored_and_a_larger_one_is_a_clear_error(
    sock_dir: Path, tmp_path: Path, start_gateway: Callable[[Config], Any]
) -> None:
    state = StateConfig(backend="sqlite", path=str(tmp_path / "state.db"))
    await start_gateway(gateway_config(sock_dir / "admin.sock", state=state))
    admin = AdminClient(sock_dir / "admin.sock")
    with pytest.raises(AdminError, match=r"^tokens must be at most 1,000,000,000,000,000"):
        await asyncio.to_thread(admin.post_json, "/quota/t", {"tokens": TOO_BIG})
    data = await asyncio.to_thread(admin.post_json, "/quota/t", {"tokens": MAX_QUOTA_TOKENS})
    assert data["tenants"][0]["limit"] == MAX_QUOTA_TOKENS
    # The daemon keeps answering: nothing broke on the way.
    assert (await asyncio.to_thread(admin.get_json, "/status"))["state_backend"] == "sqlite"


# --- quota set keeps the period; reset refuses unknown tenants ---------------------------------


async def test_quota_set_without_period_keeps_the_period_the_tenant_has(
    sock_dir: Path, start_gateway: Callable[[Config], Any]
) -> None:
    sock = sock_dir / "admin.sock"
    quota = QuotaConfig(period="monthly", tenants={"team-a": 100})
    await start_gateway(gateway_config(sock, quota=quota))
    at = ("--admin-socket", str(sock))

    result = await aigw("quota", "set", "alice", "10", "--period", "weekly", *at)
    assert result.exit_code == 0, result.output
    result = await aigw("quota", "set", "alice", "5", *at)
    assert result.exit_code == 0, result.output
    assert "5 tokens per weekly period" in result.stdout
    # No override yet: the configured period, not a silent `daily`.
    result = await aigw("quota", "set", "bob", "7", *at)
    assert "7 tokens per monthly period" in result.stdout
    # An explicit --period still changes it.
    result = await aigw("quota", "set", "alice", "3", "--period", "hourly", *at)
    assert "3 tokens per hourly period" in result.stdout

    shown = await aigw("quota", "show", "--json", *at)
    periods = {s["tenant"]: (s["limit"], s["period"]) for s in json.loads(shown.stdout)["tenants"]}
    assert periods["alice"] == (3, "hourly") and periods["bob"] == (7, "monthly")


async def test_quota_reset_of_an_unknown_tenant_is_a_one_line_error(
    sock_dir: Path, start_gateway: Callable[[Config], Any]
) -> None:
    sock = sock_dir / "admin.sock"
    running = await start_gateway(gateway_config(sock))
    at = ("--admin-socket", str(sock))

    result = await aigw("quota", "reset", "nobody", *at)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "no tenant 'nobody'" in result.stderr
    shown = await aigw("quota", "show", "--json", *at)
    assert "nobody" not in {s["tenant"] for s in json.loads(shown.stdout)["tenants"]}

    # Known: a key in auth.keys, a quota in the config, an override, or recorded usage.
    quota = running.gateway.limits.quota
    await quota.set_limit("overridden", 50)
    reservation = await quota.reserve("used", 10)
    await quota.commit(reservation, Usage(3, 2, 5))
    for tenant in ("keyed", "team-a", "overridden", "used"):
        result = await aigw("quota", "reset", tenant, *at)
        assert result.exit_code == 0, (tenant, result.output)
    [used] = await quota.status("used")
    assert used.total_tokens == 0


# --- status: where the state lives ---------------------------------------------------------------


async def test_status_tells_the_sqlite_file(
    sock_dir: Path, tmp_path: Path, start_gateway: Callable[[Config], Any], monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    state = StateConfig(backend="sqlite", path="relative/state.db")
    await start_gateway(gateway_config(sock_dir / "admin.sock", state=state))
    expected = str((tmp_path / "relative" / "state.db").resolve())
    result = await aigw("status", "--json", "--admin-socket", str(sock_dir / "admin.sock"))
    data = json.loads(result.stdout)
    assert (data["state_backend"], data["state_path"], data["state_url"]) == (
        "sqlite",
        expected,
        None,
    )
    table = await aigw("status", "--admin-socket", str(sock_dir / "admin.sock"))
    assert f"sqlite ({expected})" in table.stdout


async def test_status_tells_the_default_sqlite_file(
    sock_dir: Path, tmp_path: Path, start_gateway: Callable[[Config], Any]
) -> None:
    await start_gateway(gateway_config(sock_dir / "admin.sock", state=StateConfig()))
    status = await asyncio.to_thread(AdminClient(sock_dir / "admin.sock").get_json, "/status")
    # conftest points XDG_DATA_HOME at the test's own directory
    assert status["state_path"] == str((tmp_path / "xdg-data" / "aigw" / "state.db").resolve())


async def test_status_tells_the_redis_url_without_its_password(
    sock_dir: Path, redis_url: str, start_gateway: Callable[[Config], Any]
) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as client:  # a user with a password, beside `default`
        client.execute_command(
            "ACL", "SETUSER", "aigwtest", "on", ">pw-SECRET-42", "~*", "&*", "+@all"
        )
    host_port = redis_url.removeprefix("redis://").split("/")[0]
    state = StateConfig(backend="redis", url=f"redis://aigwtest:pw-SECRET-42@{host_port}/0")
    await start_gateway(gateway_config(sock_dir / "admin.sock", state=state))
    result = await aigw("status", "--json", "--admin-socket", str(sock_dir / "admin.sock"))
    data = json.loads(result.stdout)
    assert (data["state_backend"], data["state_url"]) == (
        "redis",
        f"redis://aigwtest@{host_port}/0",
    )
    table = await aigw("status", "--admin-socket", str(sock_dir / "admin.sock"))
    assert "pw-SECRET-42" not in result.stdout + table.stdout


async def test_status_of_a_memory_store(
    sock_dir: Path, start_gateway: Callable[[Config], Any]
) -> None:
    await start_gateway(gateway_config(sock_dir / "admin.sock"))
    table = await aigw("status", "--admin-socket", str(sock_dir / "admin.sock"))
    assert "memory (kept until the daemon stops)" in table.stdout


# --- the daemon keeps its socket private -----------------------------------------------------


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory of ours under /tmp (short socket paths), whatever its content's owners."""
    path = Path(tempfile.mkdtemp(prefix="aigw-sock-", dir="/tmp"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def start_fails(sock: Path) -> str:
    """The StartupError of a gateway on `sock` (run to completion, nothing left behind)."""

    async def attempt() -> str:
        gateway = Gateway(gateway_config(sock))
        with pytest.raises(StartupError) as info:
            await gateway.start()
        return str(info.value)

    return asyncio.run(attempt())


def test_a_directory_others_may_write_is_refused(scratch: Path) -> None:
    shared = scratch / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: anyone may rename our socket away
    message = start_fails(shared / "admin.sock")
    assert f"{shared} is writable by other users (mode 777)" in message
    assert "--admin-socket" in message and "\n" not in message
    assert not (shared / "admin.sock").exists()


def test_a_directory_above_that_others_may_write_is_refused(scratch: Path) -> None:
    shared = scratch / "shared"
    shared.mkdir()
    shared.chmod(0o770)  # group-writable, not sticky
    message = start_fails(shared / "mine" / "admin.sock")
    assert f"{shared} is writable by other users (mode 770)" in message
    assert not (shared / "mine").exists()  # nothing was made inside it


@needs_root
def test_a_directory_of_another_user_is_refused(scratch: Path) -> None:
    theirs = scratch / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    message = start_fails(theirs / "admin.sock")
    assert f"{theirs} belongs to another user (uid {NOBODY})" in message
    assert not (theirs / "admin.sock").exists()


async def test_a_sticky_directory_of_ours_is_fine(
    scratch: Path, start_gateway: Callable[[Config], Any]
) -> None:
    sticky = scratch / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp: others may add files, not remove or rename ours
    await start_gateway(gateway_config(sticky / "admin.sock"))
    assert stat.S_IMODE((sticky / "admin.sock").stat().st_mode) == 0o600
    status = await asyncio.to_thread(AdminClient(sticky / "admin.sock").get_json, "/status")
    assert status["pid"] == os.getpid()


@needs_root
def test_another_users_stale_socket_is_neither_used_nor_removed(scratch: Path) -> None:
    private = scratch / "private"
    private.mkdir(mode=0o700)
    path = private / "admin.sock"
    with socket.socket(socket.AF_UNIX) as left:
        left.bind(str(path))  # nobody listens: stale
    os.chown(path, NOBODY, NOBODY)
    message = start_fails(path)
    assert f"{path} is another user's socket (uid {NOBODY})" in message
    assert path.exists()


def serve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aigw", *args],
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=30,
    )


@needs_root
def test_an_attacker_owned_runtime_directory_is_one_line_and_exit_3(
    scratch: Path, tmp_path: Path
) -> None:
    """`aigw serve` with the default socket, whose `aigw/` directory another user made first."""
    runtime = scratch / "runtime"
    runtime.mkdir(mode=0o700)
    (runtime / "aigw").mkdir(mode=0o700)
    os.chown(runtime / "aigw", NOBODY, NOBODY)
    config = tmp_path / "c.yaml"
    config.write_text("state: {backend: memory}\nserver: {port: 0}\n" + MOCK)
    result = serve("serve", "--config", str(config), env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"{runtime / 'aigw'} belongs to another user (uid {NOBODY})" in result.stderr
    assert "--admin-socket" in result.stderr


@needs_root
@pytest.mark.skipif(Path(f"/run/user/{os.geteuid()}").exists(), reason="/run/user/<uid> exists")
def test_a_foreign_temporary_runtime_fallback_is_one_line(scratch: Path, tmp_path: Path) -> None:
    """Without $XDG_RUNTIME_DIR the runtime directory is `$TMPDIR/runtime-<uid>`: made first by
    another user, neither the daemon nor a client command may use it."""
    fallback = scratch / f"runtime-{os.geteuid()}"
    fallback.mkdir(mode=0o700)
    os.chown(fallback, NOBODY, NOBODY)
    env = {"TMPDIR": str(scratch), "XDG_RUNTIME_DIR": ""}
    config = tmp_path / "c.yaml"
    config.write_text("state: {backend: memory}\nserver: {port: 0}\n" + MOCK)
    daemon = serve("serve", "--config", str(config), env=env)
    assert daemon.returncode == 3, daemon.stderr
    client = serve("status", env=env)
    assert client.returncode == 1, client.stderr
    for result in (daemon, client):
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "admin socket" in result.stderr and "--admin-socket" in result.stderr
    assert not (fallback / "aigw").exists()


MOCK = "providers: {mock: {type: mock}}\nmodels: {mock: {targets: [{provider: mock}]}}\n"


# --- the CLI talks only to a daemon of its own user ---------------------------------------------

# A socket server run by another user: it answers whatever it is sent with a fake status, and
# reports how many bytes it received. Everything is imported before dropping root: the other
# user cannot read this Python installation.
FAKE_DAEMON = r"""
import json, os, socket, sys
path = sys.argv[1]
os.setgid(65534)
os.setuid(65534)
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(8)
print("ready", flush=True)
server.settimeout(30)
body = json.dumps({"pid": 1, "version": "fake", "uptime": 1, "config": "fake", "listen":
    "http://fake", "admin_socket": path, "state_backend": "memory", "models": [],
    "tenants": []}).encode()
while True:
    try:
        conn, _ = server.accept()
    except OSError:
        break
    conn.settimeout(10)
    got = b""
    try:
        while b"\r\n\r\n" not in got and (chunk := conn.recv(65536)):
            got += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
    except OSError:
        pass
    print("received", len(got), flush=True)
    conn.close()
"""


@needs_root
def test_the_cli_sends_nothing_to_a_socket_of_another_user(scratch: Path) -> None:
    scratch.chmod(0o711)  # the other user must reach its directory inside
    theirs = scratch / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    path = theirs / "admin.sock"
    fake = subprocess.Popen(
        [sys.executable, "-c", FAKE_DAEMON, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert fake.stdout is not None and fake.stdout.readline() == "ready\n"
        at = ("--admin-socket", str(path))
        runs = [serve("status", *at, env={}), serve("quota", "set", "t", "5", *at, env={})]
    finally:
        fake.kill()
        out, _ = fake.communicate(timeout=10)
    for result in runs:
        assert result.returncode == 1, result.stdout
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert f"served by another user (uid {NOBODY})" in result.stderr
        assert "fake" not in result.stdout
    assert out.split("\n")[:-1] == ["received 0", "received 0"]  # not one byte of a request
