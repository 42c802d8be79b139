"""The admin socket is private to one user: who may own the directories it lives in, and who may
answer on it.

The socket file is born 0600, but that is not enough: whoever can write to its directory (or to
any directory above it) can rename it away and put their own socket in its place, then receive
the next `aigw quota set` and answer `aigw status` with a fake pid. So the daemon refuses a
socket path under a directory another user owns or may write to (a sticky directory owned by us
or root, like /tmp, is fine: others cannot remove what is ours there), and the CLI checks that
the process answering on the socket runs as the same user (or root): `SO_PEERCRED` on Linux,
`getpeereid()` on macOS and the BSDs; where neither exists the check is skipped.

Standard library only: the CLI's client imports it and must start fast.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys
from pathlib import Path

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def unsafe_directory(directory: Path) -> str | None:
    """Why a private socket must not live in `directory` (existing or yet to be made), or None.

    Every existing directory from `directory` up to `/`, as written and with symlinks resolved,
    must belong to us or root and be writable by nobody else unless it is sticky."""
    me = os.geteuid()
    absolute = Path(os.path.abspath(directory))
    resolved = absolute.resolve()
    chain = dict.fromkeys([absolute, *absolute.parents, resolved, *resolved.parents])
    for path in chain:
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue  # made later, by us, mode 0700
        except OSError as exc:
            return f"cannot check {path}: {exc.strerror or exc}"
        if st.st_uid not in (me, 0):
            owner = f"uid {st.st_uid}"
            return f"{path} belongs to another user ({owner}): they could replace the socket"
        if st.st_mode & _OTHERS_WRITE and not st.st_mode & stat.S_ISVTX:
            mode = stat.S_IMODE(st.st_mode)
            return (
                f"{path} is writable by other users (mode {mode:o}): they could replace the socket"
            )
    return None


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a connected AF_UNIX socket; None when the
    platform cannot tell."""
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is not None:  # Linux: struct ucred {pid_t pid; uid_t uid; gid_t gid}
        size = struct.calcsize("iII")
        _pid, uid, _gid = struct.unpack(
            "iII", sock.getsockopt(socket.SOL_SOCKET, so_peercred, size)
        )
        return int(uid)
    if sys.platform == "win32":  # pragma: no cover - no getpeereid
        return None
    return _getpeereid(sock.fileno())  # pragma: no cover - macOS and the BSDs


def _getpeereid(fd: int) -> int | None:  # pragma: no cover - macOS and the BSDs
    import ctypes

    try:
        getpeereid = ctypes.CDLL(None, use_errno=True).getpeereid
    except (OSError, AttributeError):
        return None
    uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
    if getpeereid(fd, ctypes.byref(uid), ctypes.byref(gid)) != 0:
        return None
    return int(uid.value)


def trusted_peer(uid: int | None) -> bool:
    """Whether a socket answered by `uid` may be trusted: ours, root's, or unknown (the platform
    cannot tell, and the directory checks of the daemon are then all there is)."""
    return uid is None or uid in (os.geteuid(), 0)
