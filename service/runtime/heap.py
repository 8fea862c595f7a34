"""Giving the memory a run freed back to the operating system, in the daemon and on the
workers that run its tasks.

A run allocates and frees some hundred MiB in the daemon and on each worker (data frames,
models, Prefect's states and Dask's messages). glibc's malloc keeps what Python frees in its
arenas, one per thread that contends for the heap (up to eight per core: the daemon has
16), and gives back only the free top of each. Pages freed in the middle stay resident, so
resident memory creeps up run after run while the live objects stay level (measured in the
daemon after 20 runs: 426 MiB resident, 384 MiB after ``malloc_trim(0)``; the count of
Python objects flat over the next 120 runs). ``malloc_trim(0)`` returns every free page of
every arena. Dask documents the same call for workers ("Memory not released back to the
OS") but does not make it; its nanny's ``MALLOC_TRIM_THRESHOLD_`` only trims the top of
each arena.

The daemon calls ``release_free_memory`` after recording each run. On the workers, a plugin
does it every ``TRIM_SECONDS`` after one of the daemon's tasks ended there; a worker that
only runs other clients' tasks is left as it is. Elsewhere than glibc (macOS, musl) both do
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from service.runtime.forgetting import PeriodicWorkerPlugin, is_run_span_annotation

TRIM_SECONDS = 10.0


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> bool:
    """Give the free pages of this process's heap back to the system; False where the C
    library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class ReleaseFreeMemory(PeriodicWorkerPlugin):
    """On each worker (workers that join later included): after the daemon's tasks ran,
    give the free pages of the worker's heap back, at most every TRIM_SECONDS. Registered
    by name: a restarted daemon replaces it."""

    name = "retrain-release-free-memory"
    idempotent = True
    seconds = TRIM_SECONDS

    def setup(self, worker) -> None:
        self.ran_since_trim = False  # one of the daemon's tasks ended since the last trim
        self.trims = 0
        super().setup(worker)

    def transition(self, key, start: str, finish: str, **kwargs) -> None:
        if start == "executing" and not self.ran_since_trim:
            task = self.worker.state.tasks.get(key)
            if task is not None and is_run_span_annotation((task.annotations or {}).get("span")):
                self.ran_since_trim = True

    def tick(self) -> None:
        if self.ran_since_trim:
            self.ran_since_trim = False
            self.trims += release_free_memory()
