from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import RetrainError
from service.intake.lock import HomeLock, lock_holder


def test_second_holder_is_refused_with_the_pid(tmp_path: Path) -> None:
    path = tmp_path / "state" / "daemon.lock"
    with HomeLock(path, "retrain watch"):
        assert lock_holder(path) == f"retrain watch (pid {os.getpid()})"
        with pytest.raises(RetrainError, match=rf"in use by retrain watch \(pid {os.getpid()}\)"):
            HomeLock(path, "retrain run").acquire()
    assert lock_holder(path) is None


def test_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    path = tmp_path / "state" / "daemon.lock"
    code = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from service.intake.lock import HomeLock\n"
        "HomeLock(__import__('pathlib').Path(%r), 'retrain watch').acquire()\n"
        "print('locked', flush=True); time.sleep(60)\n"
    ) % (str(Path(__file__).resolve().parents[2]), str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert f"pid {proc.pid}" in (lock_holder(path) or "")
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5
        while lock_holder(path) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock_holder(path) is None
        HomeLock(path, "retrain watch").acquire().release()
    finally:
        proc.kill()
