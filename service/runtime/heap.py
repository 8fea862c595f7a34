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
(``service.runtime.forgetting.ReleaseFreeMemory``) does it every ``TRIM_SECONDS`` after one
of the daemon's tasks ended there; a worker that only runs other clients' tasks is left as it
is. The servers the daemon starts as children (the embedded Prefect API) do it every
``TRIM_SECONDS`` after they worked (``release_free_memory_after_work``). Elsewhere than glibc
(macOS, musl) all of them do nothing.

No import of Dask here: the API's process imports this module, and Dask would cost it
24 MiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time

TRIM_SECONDS = 10.0
# CPU seconds a server must have used since its last trim for the next one: an idle
# server's heap has nothing new to give back.
BUSY_CPU_SECONDS = 0.05


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


def release_free_memory_after_work(seconds: float = TRIM_SECONDS) -> threading.Event:
    """Start a thread that gives this process's free pages back every ``seconds`` during
    which it worked (used CPU): for a server, whose requests free their memory on threads
    of their own. Setting the returned event ends the thread."""
    stop = threading.Event()

    def trim_after_work() -> None:
        trimmed_at = time.process_time()
        while not stop.wait(seconds):
            if time.process_time() - trimmed_at >= BUSY_CPU_SECONDS:
                release_free_memory()
                trimmed_at = time.process_time()

    threading.Thread(target=trim_after_work, name="release-free-memory", daemon=True).start()
    return stop
