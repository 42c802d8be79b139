"""The CLI's client for the daemon's admin socket: HTTP/1.1 over AF_UNIX, standard library only,
so client commands start fast (importing aiohttp alone costs ~0.25 s)."""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any

from aigw.errors import ConfigError
from aigw.paths import default_admin_socket, discover_config_path


class AdminError(Exception):
    """The daemon answered with an error; the message is one line for the user."""


class DaemonNotRunning(AdminError):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


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
        config_path = discover_config_path(config)
        if config_path is not None:
            from aigw.config import load_config

            try:
                configured = load_config(config_path).server.admin_socket
            except (ConfigError, OSError):
                configured = None  # a broken config must not stop `aigw status` from working
            if configured:
                return cls(Path(configured).expanduser())
        return cls(default_admin_socket())

    def get_json(self, path: str) -> Any:
        return self._request("GET", path, None)

    def post_json(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._request("POST", path, body or {})

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        conn = _UnixConnection(self.path, self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            try:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (FileNotFoundError, ConnectionRefusedError):
                raise DaemonNotRunning(
                    f"no aigw daemon is running (admin socket {self.path}); start one with "
                    "`aigw serve`"
                ) from None
            except PermissionError:
                raise AdminError(f"permission denied on the admin socket {self.path}") from None
            except (OSError, http.client.HTTPException) as exc:
                raise AdminError(f"admin socket {self.path}: {exc}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            raise AdminError(f"daemon sent a non-JSON answer (HTTP {resp.status})") from None
        if resp.status >= 400:
            message = None
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                message = data["error"].get("message")
            raise AdminError(str(message or f"daemon answered HTTP {resp.status}"))
        return data
