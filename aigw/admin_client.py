"""The CLI's client for the daemon's admin socket: HTTP/1.1 over AF_UNIX, standard library only,
so client commands start fast (importing aiohttp alone costs ~0.25 s).

One request per connection (`Connection: close`), spoken over a plain socket: `http.client`
would pull in `email` and `ssl` (~30 ms of every client command) for what is a few lines here.
Nothing is sent before the process answering on the socket is known to run as this user or root
(`aigw.private_socket.peer_uid`): a socket another user put in place gets no request.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from aigw.errors import AdminError, DaemonNotRunning
from aigw.private_socket import peer_uid, trusted_peer

#: An answer larger than this is not the admin API's: refuse it instead of filling memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class _BadResponse(Exception):
    """The daemon's answer is not well-formed HTTP/1.1."""


class _Reader:
    """Buffered reads of one HTTP response from a socket."""

    __slots__ = ("_buf", "_sock", "_total")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._total = 0

    def _fill(self) -> bool:
        chunk = self._sock.recv(65536)
        if not chunk:
            return False
        self._total += len(chunk)
        if self._total > MAX_RESPONSE_BYTES:
            raise _BadResponse("answer too large")
        self._buf += chunk
        return True

    def line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > 65536:
                raise _BadResponse("header line too long")
            if not self._fill():
                if self._total == 0:  # http.client's words, as before
                    raise _BadResponse("Remote end closed connection without response")
                raise _BadResponse("connection closed mid-header")
        data = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return data

    def exactly(self, size: int) -> bytes:
        while len(self._buf) < size:
            if not self._fill():
                raise _BadResponse("connection closed mid-body")
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def rest(self) -> bytes:
        while self._fill():
            pass
        data = bytes(self._buf)
        self._buf.clear()
        return data


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    reader = _Reader(sock)
    status_line = reader.line()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise _BadResponse(f"bad status line {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[bytes, bytes] = {}
    while line := reader.line():
        name, sep, value = line.partition(b":")
        if not sep:
            raise _BadResponse(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if status < 200 or status in (204, 304):
        return status, b""
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        body = bytearray()
        while True:
            size_text = reader.line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadResponse(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while reader.line():  # trailers, then the blank line
                    pass
                return status, bytes(body)
            body += reader.exactly(size)
            if len(body) > MAX_RESPONSE_BYTES:
                raise _BadResponse("answer too large")
            reader.exactly(2)  # the CRLF after each chunk
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit():
            raise _BadResponse(f"bad content-length {length[:20]!r}")
        return status, reader.exactly(int(length))
    return status, reader.rest()


def configured_admin_socket(config_path: Path) -> str | None:
    """`server.admin_socket` of the config file, or None when it is unset or the file cannot be
    read: a broken config must not stop `aigw status` from working.

    A plain string is read with YAML alone: loading and validating the whole config (importing
    aigw.config) would cost client commands ~50 ms. A value using `$` (`${VAR}`) or of any
    other kind is read by `load_config`, as the daemon reads it."""
    import yaml

    try:
        data = yaml.safe_load(config_path.expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # load_config: a ConfigError, so no socket
        return None
    server = data.get("server") if isinstance(data, dict) else None
    value = server.get("admin_socket") if isinstance(server, dict) else None
    if value is None or (isinstance(value, str) and "$" not in value):
        return value
    from aigw.config import load_config
    from aigw.errors import ConfigError

    try:
        return load_config(config_path).server.admin_socket
    except (ConfigError, OSError):
        return None


class AdminClient:
    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.path = str(path)
        self.timeout = timeout

    @classmethod
    def discover(cls, admin_socket: str | None = None, config: str | None = None) -> AdminClient:
        """`--admin-socket` > `$AIGW_ADMIN_SOCKET` > `server.admin_socket` of the discovered
        config > the default path."""
        if admin_socket:
            return cls(Path(admin_socket).expanduser())
        env = os.environ.get("AIGW_ADMIN_SOCKET")
        if env:
            return cls(Path(env).expanduser())
        from aigw.paths import default_admin_socket, discover_config_path

        config_path = discover_config_path(config)
        if config_path is not None:
            configured = configured_admin_socket(config_path)
            if configured:
                return cls(Path(configured).expanduser())
        try:
            return cls(default_admin_socket())
        except OSError as exc:  # platformdirs refuses a runtime directory another user owns
            raise AdminError(
                f"no safe runtime directory for the admin socket: {exc}; "
                "pass --admin-socket PATH (or set $AIGW_ADMIN_SOCKET)"
            ) from None

    def get_json(self, path: str) -> Any:
        return self._request("GET", path, None)

    def post_json(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._request("POST", path, body or {})

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        if not path.startswith("/") or not path.isprintable() or " " in path:
            raise ValueError(f"URL can't contain control characters or spaces: {path!r}")
        payload = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: identity\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        request = (head + "Connection: close\r\n\r\n").encode("ascii") + payload
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
                uid = peer_uid(sock)
                if not trusted_peer(uid):
                    raise AdminError(
                        f"the admin socket {self.path} is served by another user (uid {uid}), "
                        "not by your aigw daemon; refusing to talk to it"
                    )
                sock.sendall(request)
                status, raw = _read_response(sock)
            except (FileNotFoundError, ConnectionRefusedError):
                raise DaemonNotRunning(
                    f"no aigw daemon is running (admin socket {self.path}); start one with "
                    "`aigw serve`"
                ) from None
            except PermissionError:
                raise AdminError(f"permission denied on the admin socket {self.path}") from None
            except (OSError, _BadResponse) as exc:
                raise AdminError(f"admin socket {self.path}: {exc}") from None
        finally:
            sock.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            raise AdminError(f"daemon sent a non-JSON answer (HTTP {status})") from None
        if status >= 400:
            message = None
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                message = data["error"].get("message")
            raise AdminError(str(message or f"daemon answered HTTP {status}"))
        return data
