"""The answers of ``retrain serve`` written to the home's prediction log (``[serve]
log_predictions``), so that labels dropped into labels/ later find them as they find scored
batches' rows (``flows.production.predlog``).

A request must not wait for a file: answered rows are buffered in memory and written as one
part every ``FLUSH_SECONDS`` (or ``FLUSH_ROWS`` rows), by a thread of the process; at most
``MAX_BUFFERED_ROWS`` rows wait, beyond which the oldest are dropped and counted (a full disk
must not take the server's memory with it). Each server process writes its own parts: a
forked process starts its own thread on its first answer.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid

import pandas as pd

from flows.production import predlog

log = logging.getLogger("retrain.serve")

FLUSH_SECONDS = 5.0
FLUSH_ROWS = 50_000
MAX_BUFFERED_ROWS = 1_000_000


class PredictionLogWriter:
    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.dropped = 0  # rows lost to a log that could not be written
        self._frames: list[pd.DataFrame] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    def add(self, frame: pd.DataFrame) -> None:
        """Buffer answered rows (id, version, scored_at, source, outputs, features)."""
        self._start_in_this_process()
        with self._lock:
            self._frames.append(frame)
            self._rows += len(frame)
            while self._rows > MAX_BUFFERED_ROWS and len(self._frames) > 1:
                oldest = self._frames.pop(0)
                self._rows -= len(oldest)
                self.dropped += len(oldest)
            full = self._rows >= FLUSH_ROWS
        if full:
            self._wake.set()

    def flush(self) -> int:
        """Write what is buffered as one part; returns its rows (0: nothing, or not written)."""
        with self._lock:
            frames, self._frames, self._rows = self._frames, [], 0
        if not frames:
            return 0
        frame = pd.concat(frames, ignore_index=True)
        try:
            predlog.write_part(self.log_dir, frame, f"serve-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        except OSError as exc:  # a full or read-only disk: the answers went out, their log did not
            self.dropped += len(frame)
            log.error("could not write %d served predictions to the prediction log (%s); %d lost so far",
                      len(frame), exc.strerror or exc, self.dropped)
            return 0
        return len(frame)

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout=FLUSH_SECONDS * 2)
        self.flush()

    def _start_in_this_process(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._frames, self._rows = [], 0  # a fork's copy of the parent's buffer is the parent's to write
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            self.flush()


def request_ids(frame: pd.DataFrame, id_column: str | None, request_id: str | None) -> list[str]:
    """An id per row: the client's id column ([schema] id) when its rows carry it, else its
    X-Request-ID (suffixed with the row's number when it sent several rows), else made here."""
    if id_column is not None and id_column in frame.columns:
        ids = frame[id_column].astype("string")
        if not ids.isna().any() and not ids.str.strip().eq("").any():
            return [str(v) for v in ids]
    base = (request_id or "").strip() or uuid.uuid4().hex
    return [base] if len(frame) == 1 else [f"{base}-{i}" for i in range(1, len(frame) + 1)]
