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

The daemon calls ``release_free_memory`` after recording each run (and, when no file waits,
collects the run's cyclic garbage first). On the workers, a plugin
(``service.runtime.forgetting.ReleaseFreeMemory``) does it every ``TRIM_SECONDS`` after one
of the daemon's tasks ended there; a worker that only runs other clients' tasks is left as it
is. The servers the daemon starts as children (the embedded Prefect API) do it every
``TRIM_SECONDS`` (``release_free_memory_periodically``). Elsewhere than glibc
(macOS, musl) nothing is given back (garbage is still collected).

No import of Dask here: the API's process imports this module, and Dask would cost it
24 MiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import threading

TRIM_SECONDS = 10.0


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory(collect_garbage: bool = False) -> bool:
    """Give the free pages of this process's heap back to the system; False where the C
    library cannot. With ``collect_garbage``, first free what only Python's cycle collector
    frees: a run leaves objects that refer to each other (Prefect's states and futures,
    tracebacks), and Python's full collection, which frees them, comes only every dozen
    runs or so (about 2 MiB a run in the daemon, gone all at once: a sawtooth of 30 MiB)."""
    if collect_garbage:
        gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def release_free_memory_periodically(seconds: float = TRIM_SECONDS) -> threading.Event:
    """Start a thread that gives this process's free pages back every ``seconds``: for a
    server, whose requests free their memory on threads of their own at moments it does not
    tell. (A trim with nothing to give back costs well under a millisecond.) Setting the
    returned event ends the thread."""
    stop = threading.Event()

    def trim() -> None:
        while not stop.wait(seconds):
            release_free_memory()

    threading.Thread(target=trim, name="release-free-memory", daemon=True).start()
    return stop
