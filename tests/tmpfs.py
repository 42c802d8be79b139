"""A small tmpfs of a test's own: a real full disk (ENOSPC, so SQLite answers SQLITE_FULL) or a
really read-only filesystem, without touching the machine's disks. Mounting needs root
(CAP_SYS_ADMIN), which CI has; elsewhere the tests that need one skip."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest


class Tmpfs:
    def __init__(self, path: Path, size: str = "4m") -> None:
        self.path = path
        self.size = size
        self.filler = path / "filler"

    def mount(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        return self

    def unmount(self) -> None:
        # Lazy: a daemon killed by the test may still hold a descriptor for a moment.
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=10)

    def fill(self) -> None:
        """Write until the filesystem has no byte left."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        block = b"\0" * 65536
        try:
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(block) == 1:
                        return
                    block = block[: len(block) // 2]
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True, timeout=10)
