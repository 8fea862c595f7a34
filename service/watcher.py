"""Watching the inbox: watchdog events as hints, a periodic scan as the truth.

The watchdog handler only enqueues paths (an exception in a handler kills the
observer thread); the daemon's loop calls ``InboxWatcher.poll()`` which drains the
queue, rescans when due, restarts a dead observer, and returns the entries that are
ready to be claimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TEMP_SUFFIXES = (".tmp", ".part", ".crdownload", ".partial", ".swp")


def is_candidate(name: str) -> bool:
    """Whether an inbox entry's name is one to take: not hidden (leading '.'), not a
    temporary name (TEMP_SUFFIXES, case-insensitive, also a trailing '~'). Any other
    name is a candidate (a non-.csv name is claimed and quarantined with a reason)."""
    raise NotImplementedError


@dataclass(frozen=True)
class Snapshot:
    """What lstat said about an entry at one instant."""

    size: int
    mtime_ns: int
    at: float  # time.monotonic() of the observation


def is_stable(before: Snapshot, after: Snapshot, settle: float) -> bool:
    """Unchanged size and mtime across at least ``settle`` seconds."""
    raise NotImplementedError


@dataclass(frozen=True)
class ReadyEntry:
    path: Path
    first_seen: float  # time.time() when the watcher first noticed it
    via: Literal["moved", "closed", "settled", "special"]


class InboxWatcher:
    """Finds inbox entries that are ready to claim.

    Rules: an entry renamed inside the inbox to a candidate name (moved event) is ready at
    once; after a close-after-write event it must stay unchanged for
    ``closed_settle_seconds``, unless it was modified again after a close (a writer that
    closes and reopens), in which case the full ``settle_seconds`` apply; any other entry
    (created/modified events, found by a scan) must stay unchanged for ``settle_seconds``.
    Symlinks, directories and other non-regular entries are ready at once ("special") so
    they can be quarantined. Entries that vanish are dropped silently.
    """

    def __init__(self, inbox: Path, *, observer: Literal["native", "polling"] = "native",
                 settle_seconds: float = 2.0, closed_settle_seconds: float = 0.1,
                 rescan_seconds: float = 5.0):
        raise NotImplementedError

    def start(self) -> None:
        """Start the observer and do the first full scan. Raises OSError-derived
        WatchError (one line naming the inbox and the inotify limit to raise) when the
        watch cannot be created."""
        raise NotImplementedError

    def poll(self) -> list[ReadyEntry]:
        """Drain events, rescan if due, restart a dead observer (logged, followed by a
        scan), return the entries now ready. Each entry is returned once; call
        ``forget(path)`` if it was not claimed and should be watched again."""
        raise NotImplementedError

    def forget(self, path: Path) -> None:
        raise NotImplementedError

    def request_scan(self) -> None:
        """Make the next poll() rescan the folder."""
        raise NotImplementedError

    @property
    def pending(self) -> int:
        """Entries seen but not yet ready."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError
