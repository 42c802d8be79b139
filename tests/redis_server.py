"""A real redis-server for tests: started on a free loopback port with its own temp dir, stopped
(or killed, to test outages) by pid. Tests that need one skip when redis-server is not
installed (`.ci/run` installs it)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = "redis-server is not installed (apt-get install redis-server; .ci/run does it)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`start()` it; `kill()` it (SIGKILL) and `start()` it again on the same port and dir to
    test an outage. With `appendonly`, every write is fsynced, so a kill loses nothing."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None, SKIP_REASON
        assert self.proc is None, "already running"
        for _ in range(5):  # a free port may be taken between the probe and the bind
            port = self.port or _free_port()
            args = [
                REDIS_SERVER,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(self.dir),
                "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always",
                "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log"),
            ]  # fmt: skip
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                if _ping(port):
                    self.proc, self.port = proc, port
                    return self
                time.sleep(0.01)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if self.port:  # the same port is required (a restart): keep trying it
                time.sleep(0.1)
        log = self.dir / "redis.log"
        text = log.read_text() if log.exists() else ""
        raise RuntimeError(f"redis-server did not start:\n{text}")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        self.proc.wait(10)
        self.proc = None
