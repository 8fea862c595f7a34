"""One process per home: an exclusive ``flock`` on ``state/daemon.lock``.

The kernel releases the lock when the holder dies, even by SIGKILL, so a crashed daemon
never blocks the next one; the pid written inside is only for the error message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from core.errors import RetrainError


class HomeLock:
    def __init__(self, path: Path, purpose: str):
        self.path = path
        self.purpose = purpose  # "retrain watch", "retrain run", ... for the other's message
        self._fd: int | None = None

    def acquire(self) -> "HomeLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RetrainError(
                f"home {self.path.parent.parent} is in use by {holder}; stop it first, "
                "or use another home (--home)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.purpose} (pid {os.getpid()})".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "HomeLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(path: Path) -> str | None:
    """Who holds the lock now (None when nobody does), without taking it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
