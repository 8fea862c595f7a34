from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from service.intake.watcher import InboxWatcher, Snapshot, is_candidate, is_stable


@pytest.mark.parametrize("name, expected", [
    ("sales.csv", True), ("ventes été.csv", True), ("notes.txt", True),
    (".hidden.csv", False), ("x.csv.tmp", False), ("x.csv.part", False), ("x.CRDOWNLOAD", False),
    ("x.csv~", False), ("x.partial", False),
])
def test_is_candidate(name: str, expected: bool) -> None:
    assert is_candidate(name) is expected


def test_is_stable() -> None:
    a = Snapshot(10, 100, 0.0)
    assert is_stable(a, Snapshot(10, 100, 2.0), 2.0)
    assert not is_stable(a, Snapshot(10, 100, 1.9), 2.0)
    assert not is_stable(a, Snapshot(11, 100, 5.0), 2.0)
    assert not is_stable(a, Snapshot(10, 101, 5.0), 2.0)


def poll_until(watcher: InboxWatcher, predicate, timeout: float = 10.0) -> list:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.extend(watcher.poll())
        if predicate(seen):
            return seen
        time.sleep(0.02)
    return seen


@pytest.fixture(params=["native", "polling"])
def watcher(request, tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    w = InboxWatcher(inbox, observer=request.param, settle_seconds=3.0, closed_settle_seconds=0.1,
                     rescan_seconds=60.0 if request.param == "native" else 1.0)
    w.start()
    yield w
    w.stop()


def test_closed_file_is_ready_long_before_the_settle_time(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    watcher = InboxWatcher(inbox, settle_seconds=30.0, closed_settle_seconds=0.1, rescan_seconds=60)
    watcher.start()
    try:
        watcher.poll()
        (inbox / "a.csv").write_text("a,b\n1,2\n")  # open, write, close
        ready = poll_until(watcher, lambda s: s, timeout=10)
        assert [(r.path.name, r.via) for r in ready] == [("a.csv", "closed")]
    finally:
        watcher.stop()


def test_rename_into_place_is_ready_at_once(watcher: InboxWatcher) -> None:
    tmp = watcher.inbox / "b.csv.tmp"
    tmp.write_text("a,b\n1,2\n")
    assert poll_until(watcher, lambda s: s, timeout=1.0) == []  # temporary names are ignored
    os.rename(tmp, watcher.inbox / "b.csv")
    ready = poll_until(watcher, lambda s: s, timeout=10)
    assert [r.path.name for r in ready] == ["b.csv"]
    if watcher.kind == "native":
        assert ready[0].via == "moved"


def test_file_moved_in_from_another_folder_is_ready_at_once(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "exports"
    outside.mkdir()
    watcher = InboxWatcher(inbox, settle_seconds=30.0, closed_settle_seconds=30.0, rescan_seconds=60)
    watcher.start()
    try:
        watcher.poll()
        (outside / "c.csv").write_text("a,b\n1,2\n")
        os.rename(outside / "c.csv", inbox / "c.csv")  # what `mv` does on one filesystem
        ready = poll_until(watcher, lambda s: s, timeout=5)
        assert [(r.path.name, r.via) for r in ready] == [("c.csv", "moved")]
        # A move out of the inbox is nothing to act on.
        os.rename(inbox / "c.csv", outside / "c.csv")
        assert poll_until(watcher, lambda s: s, timeout=0.5) == []
    finally:
        watcher.stop()


def test_slow_writer_is_never_taken_early(watcher: InboxWatcher) -> None:
    path = watcher.inbox / "slow.csv"
    done = threading.Event()

    def write_slowly() -> None:
        with open(path, "w") as fh:  # one open handle, flushed every 0.3 s for 3 s
            for i in range(10):
                fh.write(f"{i},{i}\n")
                fh.flush()
                time.sleep(0.3)
        done.set()

    thread = threading.Thread(target=write_slowly)
    thread.start()
    ready = poll_until(watcher, lambda s: s, timeout=20)
    # Whenever the watcher calls it ready, the content is complete.
    assert [r.path.name for r in ready] == ["slow.csv"]
    assert path.read_text().count("\n") == 10
    thread.join()
    assert done.is_set()


def test_writer_that_closes_and_reopens_waits_for_the_settle_time(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    watcher = InboxWatcher(inbox, settle_seconds=2.0, closed_settle_seconds=0.3, rescan_seconds=60)
    watcher.start()
    try:
        path = inbox / "chunks.csv"
        path.write_text("h\n")
        start = time.monotonic()
        for i in range(4):  # reopen before the closed-settle time passes
            time.sleep(0.1)
            with open(path, "a") as fh:
                fh.write(f"{i}\n")
        ready = poll_until(watcher, lambda s: s, timeout=10)
        assert [r.via for r in ready] == ["settled"]
        assert time.monotonic() - start >= 2.0
    finally:
        watcher.stop()


def test_files_present_before_start_are_found(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        (inbox / f"old{i}.csv").write_text("a\n1\n")
    os.utime(inbox / "old0.csv", (time.time() - 60, time.time() - 60))
    watcher = InboxWatcher(inbox, settle_seconds=0.3, rescan_seconds=60)
    watcher.start()
    try:
        ready = poll_until(watcher, lambda s: len(s) == 3, timeout=10)
        assert sorted(r.path.name for r in ready) == ["old0.csv", "old1.csv", "old2.csv"]
    finally:
        watcher.stop()


def test_dead_observer_is_restarted_and_missed_files_found(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    watcher = InboxWatcher(inbox, settle_seconds=0.3, rescan_seconds=60)
    watcher.start()
    try:
        watcher._observer.stop()  # the observer thread dies (watchdog#663)
        watcher._observer.join()
        (inbox / "while-dead.csv").write_text("a\n1\n")
        ready = poll_until(watcher, lambda s: s, timeout=10)
        assert [r.path.name for r in ready] == ["while-dead.csv"]
        assert watcher._observer.is_alive()
    finally:
        watcher.stop()


def test_burst_of_500_files_each_returned_once(watcher: InboxWatcher) -> None:
    for i in range(500):
        tmp = watcher.inbox / f".f{i}.tmp"
        tmp.write_text(f"a\n{i}\n")
        os.rename(tmp, watcher.inbox / f"f{i:03d}.csv")
    watcher.request_scan()  # as the daemon's periodic scan would
    ready = poll_until(watcher, lambda s: len(s) >= 500, timeout=30)
    names = [r.path.name for r in ready]
    assert len(names) == 500 and len(set(names)) == 500
    time.sleep(0.2)
    watcher.request_scan()
    assert watcher.poll() == []  # handed out and not forgotten: not returned twice


def test_special_entries_are_ready_at_once_and_vanished_ones_dropped(watcher: InboxWatcher, tmp_path: Path) -> None:
    (watcher.inbox / "dir.csv").mkdir()
    target = tmp_path / "t.csv"
    target.write_text("x")
    os.symlink(target, watcher.inbox / "link.csv")
    gone = watcher.inbox / "gone.csv"
    gone.write_text("x")
    watcher.request_scan()
    ready = poll_until(watcher, lambda s: len(s) >= 2, timeout=10)
    gone.unlink()
    ready += poll_until(watcher, lambda s: False, timeout=1.0)
    assert {(r.path.name, r.via) for r in ready} >= {("dir.csv", "special"), ("link.csv", "special")}
    assert watcher.pending == 0  # the vanished file is no longer tracked
