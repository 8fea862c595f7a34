"""Coalescing claimed files into batches: one explicit step with its own parameters."""

from __future__ import annotations


class Batcher:
    """Collects claimed file ids; a batch is ready when no file arrived for ``window``
    seconds, or the first file waits ``max_wait`` seconds, or ``max_files`` are held.
    Pure: the caller passes the clock (time.monotonic())."""

    def __init__(self, window: float, max_wait: float, max_files: int):
        raise NotImplementedError

    def add(self, file_ids: list[int], now: float) -> None:
        raise NotImplementedError

    def ready(self, now: float) -> bool:
        raise NotImplementedError

    def take(self) -> list[int]:
        """Up to max_files ids in arrival order (the rest stay for the next batch)."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError
