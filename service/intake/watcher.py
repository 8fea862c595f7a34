"""Watching the inbox: watchdog events as hints, a periodic scan as the truth.

The watchdog handler only enqueues paths (an exception in a handler kills the observer
thread, watchdog#427/#793); the daemon's loop calls ``InboxWatcher.poll()``, which drains
the queue, rescans when due (inotify drops events on queue overflow, watchdog#654),
restarts a dead observer (#663, #829), and returns the entries ready to be claimed.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

log = logging.getLogger("retrain.watcher")

TEMP_SUFFIXES = (".tmp", ".part", ".crdownload", ".partial", ".swp")


def is_candidate(name: str) -> bool:
    """Whether an inbox entry's name is one to take: not hidden, not a temporary name."""
    lowered = name.lower()
    return not (name.startswith(".") or name.endswith("~") or lowered.endswith(TEMP_SUFFIXES))


@dataclass(frozen=True)
class Snapshot:
    """What lstat said about an entry at one instant."""

    size: int
    mtime_ns: int
    at: float  # time.monotonic() of the observation


def is_stable(before: Snapshot, after: Snapshot, settle: float) -> bool:
    """Unchanged size and mtime across at least ``settle`` seconds."""
    return (before.size == after.size and before.mtime_ns == after.mtime_ns
            and after.at - before.at >= settle)


@dataclass(frozen=True)
class ReadyEntry:
    path: Path
    first_seen: float  # time.time() when the watcher first noticed it
    via: Literal["moved", "closed", "settled", "special"]


class WatchError(OSError):
    """The inbox cannot be watched; the message says which limit to raise."""


@dataclass
class _Pending:
    first_seen: float
    since: Snapshot  # the last observation at which size/mtime changed
    closed: bool = False  # a writer closed it after its last change
    reopened: bool = False  # modified again after a close: only the full settle counts


class _Enqueue(FileSystemEventHandler):
    """Trivial by design: put the event on a queue, nothing that could raise."""

    def __init__(self, events: "queue.SimpleQueue[FileSystemEvent]"):
        self.events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.events.put(event)


class InboxWatcher:
    """Finds inbox entries that are ready to claim (the rules are in README.md, section
    "What the service promises about files")."""

    def __init__(self, inbox: Path, *, observer: Literal["native", "polling"] = "native",
                 settle_seconds: float = 2.0, closed_settle_seconds: float = 0.1,
                 rescan_seconds: float = 5.0):
        self.inbox = Path(inbox)
        self.kind = observer
        self.settle = settle_seconds
        self.closed_settle = closed_settle_seconds
        self.rescan_seconds = rescan_seconds
        self._events: queue.SimpleQueue[FileSystemEvent] = queue.SimpleQueue()
        self._pending: dict[Path, _Pending] = {}
        self._ready_now: dict[Path, tuple[float, str]] = {}  # moved/special: no settling
        self._handed_out: set[Path] = set()
        self._observer = None
        self._next_scan = 0.0

    # -- life ------------------------------------------------------------------------------
    def start(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._observer = self._start_observer()
        self.request_scan()

    def _start_observer(self):
        observer = PollingObserver(timeout=1.0) if self.kind == "polling" else _native_observer()
        observer.schedule(_Enqueue(self._events), str(self.inbox), recursive=False)
        try:
            observer.start()
        except OSError as exc:
            raise WatchError(exc.errno, _watch_error_message(self.inbox, exc)) from None
        return observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            if self._observer.is_alive():
                self._observer.join(timeout=5)
            self._observer = None

    def request_scan(self) -> None:
        """Make the next poll() rescan the folder."""
        self._next_scan = 0.0

    @property
    def pending(self) -> int:
        """Entries seen but not yet ready."""
        return len(self._pending) + len(self._ready_now)

    def forget(self, path: Path) -> None:
        self._handed_out.discard(Path(path))

    # -- the loop's call ---------------------------------------------------------------------
    def poll(self) -> list[ReadyEntry]:
        now = time.monotonic()
        self._supervise()
        self._drain_events(now)
        if now >= self._next_scan:
            self._scan(now)
            self._next_scan = now + self.rescan_seconds
        return self._collect_ready(now)

    def _supervise(self) -> None:
        if self._observer is not None and not self._observer.is_alive():
            log.warning("the inbox observer stopped; restarting it and rescanning %s", self.inbox)
            try:
                self._observer = self._start_observer()
            except WatchError as exc:
                log.error("%s; relying on periodic scans every %.0fs", exc.strerror, self.rescan_seconds)
                self._observer = None
            self.request_scan()

    def _drain_events(self, now: float) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            kind = event.event_type
            if kind == "moved":
                dest = Path(os.fsdecode(event.dest_path))
                if dest.parent == self.inbox:
                    self._note(dest, now, moved=True)
            elif kind in ("created", "modified"):
                self._note(Path(os.fsdecode(event.src_path)), now, modified=kind == "modified")
            elif kind == "closed":
                path = Path(os.fsdecode(event.src_path))
                self._note(path, now)
                if path in self._pending:
                    self._pending[path].closed = True
            # deleted, opened, closed_no_write, attrib: nothing to do (the scan is the truth)

    def _note(self, path: Path, now: float, moved: bool = False, modified: bool = False) -> None:
        if path.parent != self.inbox or not is_candidate(path.name) or path in self._handed_out:
            return
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            self._pending.pop(path, None)
            return
        if not stat.S_ISREG(info.st_mode):
            self._ready_now.setdefault(path, (time.time(), "special"))
            return
        if moved:  # renamed into place by its writer: complete by convention
            self._pending.pop(path, None)
            self._ready_now.setdefault(path, (time.time(), "moved"))
            return
        snap = Snapshot(info.st_size, info.st_mtime_ns, now)
        entry = self._pending.get(path)
        if entry is None:
            self._pending[path] = _Pending(first_seen=time.time(), since=snap)
        elif (snap.size, snap.mtime_ns) != (entry.since.size, entry.since.mtime_ns):
            entry.since = snap
            if entry.closed:
                entry.reopened = True
            entry.closed = False
        elif modified and entry.closed:
            entry.reopened = True

    def _scan(self, now: float) -> None:
        found = 0
        try:
            with os.scandir(self.inbox) as entries:
                names = [e.name for e in entries]
        except FileNotFoundError:
            log.error("the inbox %s disappeared; recreating it", self.inbox)
            self.inbox.mkdir(parents=True, exist_ok=True)
            return
        present = set()
        for name in names:
            path = self.inbox / name
            present.add(path)
            if path not in self._pending and path not in self._ready_now and path not in self._handed_out \
                    and is_candidate(name):
                found += 1
            self._note(path, now)
        # Entries gone from the folder need no tracking any more.
        for path in list(self._pending):
            if path not in present:
                del self._pending[path]
        self._handed_out &= present
        if found:
            log.debug("scan of %s found %d new entries", self.inbox, found)

    def _collect_ready(self, now: float) -> list[ReadyEntry]:
        ready = [ReadyEntry(path, first_seen, via) for path, (first_seen, via) in self._ready_now.items()]
        self._ready_now.clear()
        for path, entry in list(self._pending.items()):
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                del self._pending[path]
                continue
            snap = Snapshot(info.st_size, info.st_mtime_ns, now)
            if (snap.size, snap.mtime_ns) != (entry.since.size, entry.since.mtime_ns):
                entry.since = snap
                if entry.closed:
                    entry.reopened, entry.closed = True, False
                continue
            settle = self.closed_settle if entry.closed and not entry.reopened else self.settle
            if is_stable(entry.since, snap, settle):
                del self._pending[path]
                ready.append(ReadyEntry(path, entry.first_seen, "closed" if settle == self.closed_settle
                                        and entry.closed else "settled"))
        for item in ready:
            self._handed_out.add(item.path)
        return ready


def _native_observer():
    """On Linux, inotify with full move events: a file renamed into the inbox from another
    folder (the usual "write elsewhere, then mv" drop) is reported as moved, not as created,
    so it is taken at once instead of waiting out the settle time."""
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver

        return InotifyObserver(generate_full_events=True)
    return Observer()


def _watch_error_message(inbox: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return (f"cannot watch {inbox}: inotify watch limit reached (ENOSPC); raise "
                "fs.inotify.max_user_watches (sysctl) or set watcher.observer = \"polling\"")
    if exc.errno == errno.EMFILE:
        return (f"cannot watch {inbox}: inotify instance limit reached (EMFILE); raise "
                "fs.inotify.max_user_instances (sysctl) or set watcher.observer = \"polling\"")
    return f"cannot watch {inbox}: {exc.strerror or exc}; check the folder, or set watcher.observer = \"polling\""
