"""Coalescing claimed files into batches: one explicit step with its own parameters."""

from __future__ import annotations


class Batcher:
    """Collects claimed file ids; a batch is ready when no file arrived for ``window``
    seconds, or the first file waits ``max_wait`` seconds, or ``max_files`` are held.
    Pure: the caller passes the clock (time.monotonic())."""

    def __init__(self, window: float, max_wait: float, max_files: int):
        self.window = window
        self.max_wait = max_wait
        self.max_files = max_files
        self._ids: list[int] = []
        self._first_at: float | None = None  # when the oldest held file arrived
        self._last_at: float | None = None  # when the newest held file arrived

    def add(self, file_ids: list[int], now: float) -> None:
        fresh = [i for i in file_ids if i not in self._ids]
        if not fresh:
            return
        if not self._ids:
            self._first_at = now
        self._ids.extend(fresh)
        self._last_at = now

    def ready(self, now: float) -> bool:
        if not self._ids:
            return False
        assert self._first_at is not None and self._last_at is not None
        return (len(self._ids) >= self.max_files
                or now - self._last_at >= self.window
                or now - self._first_at >= self.max_wait)

    def take(self) -> list[int]:
        """Up to max_files ids in arrival order (the rest stay for the next batch)."""
        batch, self._ids = self._ids[: self.max_files], self._ids[self.max_files:]
        if not self._ids:
            self._first_at = self._last_at = None
        # What stays behind was already waiting: it is ready at the next check.
        return batch

    def __len__(self) -> int:
        return len(self._ids)
