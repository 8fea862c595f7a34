"""`retrain run` progress: bars on a terminal (a real pseudo-terminal here), lines otherwise."""

from __future__ import annotations

import logging
import os
import pty
import select
import sys

from flows.reporting import progress
from service.cli.run import show_progress


def _drive() -> None:
    progress.report("preprocess", 1, 4)
    progress.report("preprocess", 4, 4)
    progress.report("train", 0, 1)
    progress.report("train", 1, 1)


def test_bars_on_a_terminal(monkeypatch) -> None:
    master, replica = pty.openpty()
    terminal = os.fdopen(replica, "w")
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm")
    with show_progress(logging.getLogger("test")):
        _drive()
    terminal.flush()
    output = b""
    while select.select([master], [], [], 0.5)[0]:
        chunk = os.read(master, 65536)
        if not chunk:
            break
        output += chunk
    terminal.close()
    os.close(master)
    text = output.decode(errors="replace")
    assert "preprocess" in text and "4/4" in text and "train" in text and "1/1" in text
    assert progress._listeners == []  # removed when the run is over


def test_plain_lines_otherwise(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="test"), show_progress(logging.getLogger("test")):
        _drive()
    assert caplog.messages == ["preprocess: 1/4 partitions", "preprocess: 4/4 partitions", "train: done"]
    assert progress._listeners == []
