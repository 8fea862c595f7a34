"""Giving freed memory back to the system (service.runtime.heap): measured on this process's
real heap, and the worker plugin on a real worker."""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref

import dask
import psutil
import pytest
from dask.utils import key_split
from distributed import Client, LocalCluster

from service.runtime.forgetting import ReleaseFreeMemory, run_span
from service.runtime.heap import release_free_memory, release_free_memory_periodically

MIB = 1024 * 1024

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")


def fragment_a_thread_arena() -> list[bytes]:
    """What a run leaves: 150 MiB of small blocks allocated in a thread (an arena of its
    own), all freed but every fiftieth, so no arena has a free top to give back."""
    kept: list[bytes] = []

    def allocate() -> None:
        blocks = [bytes(1000) + i.to_bytes(4, "little") for i in range(150_000)]
        kept.extend(blocks[::50])

    thread = threading.Thread(target=allocate)
    thread.start()
    thread.join()
    return kept


@glibc_only
def test_the_pages_a_run_freed_go_back_to_the_system() -> None:
    process = psutil.Process()
    kept = fragment_a_thread_arena()
    before = process.memory_info().rss
    assert release_free_memory()
    after = process.memory_info().rss
    assert before - after > 50 * MIB, (before / MIB, after / MIB)
    assert len(kept) == 3000 and all(len(block) == 1004 for block in kept)  # the live blocks are intact


def test_collecting_frees_a_runs_cycles_now_not_at_pythons_next_full_collection() -> None:
    class Step:  # a run's objects that refer to each other, as Prefect's states and futures do
        pass

    gc.disable()  # Python's own collections would make the moment unknowable
    try:
        first, second = Step(), Step()
        first.next, second.previous, first.payload = second, first, bytearray(10 * MIB)
        alive = weakref.ref(first)
        del first, second
        release_free_memory()
        assert alive() is not None  # unreachable, but a cycle: only the collector frees it
        release_free_memory(collect_garbage=True)
        assert alive() is None
    finally:
        gc.enable()


@glibc_only
def test_a_server_gives_back_what_its_requests_freed() -> None:
    process = psutil.Process()
    stop = release_free_memory_periodically(seconds=0.3)
    try:
        kept = fragment_a_thread_arena()  # what a request's thread left
        fragmented = process.memory_info().rss
        deadline = time.monotonic() + 5
        while fragmented - process.memory_info().rss < 50 * MIB and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fragmented - process.memory_info().rss > 50 * MIB, (fragmented / MIB, process.memory_info().rss / MIB)
        assert len(kept) == 3000 and all(len(block) == 1004 for block in kept)
    finally:
        stop.set()


def sleep_a_little(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@glibc_only
def test_workers_release_memory_after_the_daemons_tasks_only() -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as setup:
            setup.register_plugin(ReleaseFreeMemory())
        worker = next(iter(cluster.workers.values()))
        plugin = worker.plugins[ReleaseFreeMemory.name]
        assert ReleaseFreeMemory.name in worker.periodic_callbacks  # every TRIM_SECONDS

        with Client(cluster) as other:  # another client's task: nothing to do
            assert other.submit(sleep_a_little, 0.1).result() == 0.1
        assert not plugin.ran_since_trim
        plugin.tick()
        assert plugin.trims == 0

        with Client(cluster) as ours, dask.annotate(span=run_span()):
            assert ours.submit(sleep_a_little, 0.2).result() == 0.2
        assert plugin.ran_since_trim
        assert key_split.cache_info().currsize > 0
        plugin.tick()
        assert plugin.trims == 1 and not plugin.ran_since_trim
        assert key_split.cache_info().currsize == 0  # the memo of the keys' prefixes too (service.runtime.forgetting)
        plugin.tick()  # nothing ran since
        assert plugin.trims == 1
