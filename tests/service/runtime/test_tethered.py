"""A tethered child (how the daemon runs its embedded Prefect API) does not act on the
signals meant for its parent, and never outlives it: real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from service.runtime import tethered

PARENT = """
import subprocess, sys, time
from service.runtime import tethered
child = subprocess.Popen(tethered.command("http.server", "0", "--bind", "127.0.0.1"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **tethered.launch_options())
print(child.pid, flush=True)
time.sleep(600)
"""


def _start_parent() -> tuple[subprocess.Popen, psutil.Process]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = psutil.Process(int(parent.stdout.readline()))
    # Serving: past its start, where it has set what it ignores (a signal in the first
    # instants of its interpreter would still end it, as any process).
    deadline = time.monotonic() + 60
    while not child.net_connections(kind="tcp") and time.monotonic() < deadline:
        time.sleep(0.1)
    return parent, child


def test_a_tethered_child_ignores_the_signals_of_its_parents_group_and_session() -> None:
    parent, child = _start_parent()
    try:
        assert child.ppid() == parent.pid
        assert os.getpgid(child.pid) == os.getsid(child.pid) == child.pid  # a session of its own
        for sig in (signal.SIGTERM, signal.SIGINT):
            child.send_signal(sig)
        time.sleep(1.0)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    finally:
        parent.kill()
        parent.wait()
        child.wait(timeout=60)


def test_a_tethered_child_ends_when_its_parent_is_killed() -> None:
    parent, child = _start_parent()
    parent.kill()  # SIGKILL: the parent runs no code of its own at all
    parent.wait()
    child.wait(timeout=tethered.ORPHAN_GRACE_SECONDS + 30)  # raises psutil.TimeoutExpired if it stays


def test_stop_ends_a_tethered_child_gracefully_and_closes_its_pipe() -> None:
    child = subprocess.Popen(tethered.command("http.server", "0", "--bind", "127.0.0.1"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **tethered.launch_options())
    time.sleep(1.0)
    tethered.stop(child, timeout=5)
    assert child.poll() is not None and child.stdin.closed
