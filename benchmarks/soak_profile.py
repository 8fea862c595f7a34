"""Where a soak's memory growth comes from, measured in one process.

    python benchmarks/soak_profile.py [--runs 60] [--every 20] [--frames 8]

The flow runs in this process exactly as in the daemon (service.runtime.api's Prefect API and
local Dask cluster, service.runner.flowruns.call_flow), on 1,000-row files with a window of three
files, without the watcher and ledger around it. Every ``--every`` runs it prints, for
this process and for each Dask worker: the resident memory, the allocations that grew
most since the previous report (tracemalloc, grouped by traceback) and the object types
whose counts grew most. The first report is the baseline after a few warm-up runs.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class GrowthProbe:
    """Differences of object counts (and, with frames > 0, of tracemalloc snapshots)
    between calls, in a process."""

    def __init__(self, frames: int) -> None:
        if frames:
            tracemalloc.start(frames)
        self.snapshot: tracemalloc.Snapshot | None = None
        self.counts: Counter[str] = Counter()
        self.pending: Counter[str] = Counter()
        self.ids: set[int] = set()

    def report(self, top: int = 12) -> str:
        import psutil

        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]) if tracemalloc.is_tracing() else None
        counts = Counter(f"{getattr(type(o), '__module__', '?')}.{type(o).__qualname__}"
                         for o in gc.get_objects())
        lines = [f"rss {psutil.Process().memory_info().rss / 2**20:.1f} MiB, "
                 f"traced {tracemalloc.get_traced_memory()[0] / 2**20:.1f} MiB, "
                 f"{sum(counts.values())} objects"]
        if self.snapshot is not None and snapshot is not None:
            stats = snapshot.compare_to(self.snapshot, "traceback")
            for stat in sorted(stats, key=lambda s: -s.size_diff)[:top]:
                where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback[:6])
                lines.append(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+6d} blocks  {where}")
        objects = gc.get_objects()
        pending = pending_work(objects)
        if self.counts:
            grown = (counts - self.counts).most_common(3 * top)
            lines.append("  objects: " + ", ".join(f"{name} +{n}" for name, n in grown))
            grown = (pending - self.pending).most_common(top)
            lines.append("  pending: " + ", ".join(f"{name} +{n}" for name, n in grown))
            if tracemalloc.is_tracing():  # slow (referrers of a sample): only when tracing anyway
                lines.append("  new containers held by: " + new_holders(objects, self.ids, top))
        self.pending = pending
        self.ids = {id(o) for o in objects}
        self.snapshot, self.counts = snapshot, counts
        return "\n".join(lines)


def pending_work(objects: list) -> Counter[str]:
    """What the event loops of this process hold: unfinished asyncio tasks (by coroutine),
    timers not yet run (by callback), and log records (by logger; kept by a handler)."""
    import asyncio
    import logging

    found: Counter[str] = Counter()
    for obj in objects:
        if isinstance(obj, asyncio.Task) and not obj.done():
            found[f"task {getattr(obj.get_coro(), '__qualname__', '?')}"] += 1
        elif isinstance(obj, asyncio.TimerHandle) and not obj.cancelled():
            callback = obj._callback
            found[f"timer {getattr(callback, '__qualname__', type(callback).__qualname__)}"] += 1
        elif isinstance(obj, logging.LogRecord):
            found[f"log record {obj.name}"] += 1
    return found


def new_holders(objects: list, old_ids: set[int], top: int, sample: int = 400) -> str:
    """Who refers to a sample of the dicts and lists made since the last report."""
    import random

    new = [o for o in objects if type(o) in (dict, list) and id(o) not in old_ids]
    holders: Counter[str] = Counter()
    for obj in random.sample(new, min(sample, len(new))):
        for ref in gc.get_referrers(obj):
            if ref is objects or ref is new:
                continue
            label = _label(ref)
            holders[f"{type(ref).__module__}.{type(ref).__qualname__}{label}"] += 1
    return ", ".join(f"{name} {n}" for name, n in holders.most_common(top))


def holder_chain(type_name: str, old_ids: set[int], max_depth: int = 12) -> str:
    """Who keeps an object of a type, made since the last report, alive: a chain of
    referrers, found breadth first, up to a module, a class or a thread's frame."""
    import types

    gc.collect()
    objects = [o for o in gc.get_objects() if type(o).__qualname__ == type_name and id(o) not in old_ids]
    if not objects:
        return f"{type_name}: none"
    start = objects[0]
    del objects
    seen, queue = {id(start)}, [(start, [start])]
    ignore = {id(queue), id(seen)}
    while queue:
        obj, path = queue.pop(0)
        if isinstance(obj, (types.ModuleType, type, types.FrameType)) or len(path) > max_depth:
            return " <- ".join(f"{type(o).__qualname__}{_label(o)}" for o in path)
        for ref in gc.get_referrers(obj):
            if id(ref) in seen or id(ref) in ignore or ref is path or isinstance(ref, list) and ref is queue:
                continue
            seen.add(id(ref))
            queue.append((ref, [*path, ref]))
    return f"{type_name}: no holder found"


def _label(obj) -> str:
    import types

    if isinstance(obj, types.ModuleType):
        return f"[{obj.__name__}]"
    if isinstance(obj, type):
        return f"[{obj.__qualname__}]"
    if isinstance(obj, types.FrameType):
        return f"[{obj.f_code.co_filename}:{obj.f_lineno}]"
    if isinstance(obj, dict) and len(obj) < 40:
        return "{" + ",".join(str(k)[:30] for k in list(obj)[:8]) + "}"
    return ""


def probe_report(frames: int = 8, dask_worker=None) -> str:
    """Runs in a worker (through client.run): the first call starts the probe there."""
    if getattr(dask_worker, "growth_probe", None) is None:
        dask_worker.growth_probe = GrowthProbe(frames)
    state = dask_worker.state
    records = {"tasks": len(state.tasks), "log": len(state.log), "stimulus_log": len(state.stimulus_log),
               "data": len(dask_worker.data)}
    return f"{records} " + dask_worker.growth_probe.report()


def scheduler_records(dask_scheduler=None) -> dict[str, int]:
    s = dask_scheduler
    return {"tasks": len(s.tasks), "task_groups": len(s.task_groups), "task_prefixes": len(s.task_prefixes),
            "computations": len(s.computations), "clients": len(s.clients), "topics": len(s._broker._topics),
            "transition_log": len(s.transition_log), "erred": len(s.erred_tasks)}


def scheduler_probe_report(frames: int = 8, dask_scheduler=None) -> str:
    """Runs in the scheduler (through client.run_on_scheduler), as probe_report in a worker."""
    if getattr(dask_scheduler, "growth_probe", None) is None:
        dask_scheduler.growth_probe = GrowthProbe(frames)
    return f"{scheduler_records(dask_scheduler)} " + dask_scheduler.growth_probe.report()


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def trim_and_rss() -> float:
    import ctypes

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mib()


def file_ref(path: Path, file_id: int):
    from core.records import FileRef

    return FileRef(file_id=file_id, name=path.name, path=str(path),
                   sha256=hashlib.sha256(path.read_bytes()).hexdigest(), size=path.stat().st_size)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--frames", type=int, default=0, help="tracemalloc frames (0: off)")
    parser.add_argument("--holders", default="", help="types whose holders to show, comma-separated")
    parser.add_argument("--trim", action="store_true",
                        help="after each run, this process's RSS before and after malloc_trim(0)")
    parser.add_argument("--no-workers", action="store_true", help="probe this process only")
    parser.add_argument("--address", default="",
                        help="an existing Dask scheduler to run on (probed too) instead of a local cluster")
    args = parser.parse_args()

    from service.intake.home import Home
    from service.runtime.api import prepare_environment

    home = Home(Path(tempfile.mkdtemp(prefix="soak-profile-"))).ensure().root

    prepare_environment(Home(home))
    from direct import call_flow
    from distributed import Client

    from flows.retrain import RetrainRequest
    from service.config import load_settings
    from service.runtime.api import prefect_api
    from service.runtime.cluster import dask_cluster, quiet_libraries
    from service.sample import write_samples

    settings = load_settings(home=home, overrides={"window.last_files": 3,
                                                                **({"dask.address": args.address} if args.address else {})})
    paths = [write_samples(home / "data", files=1, rows=1000, seed=1000 + i)[0]
             for i in range(args.warmup + args.runs)]
    quiet_libraries()  # as the daemon: Dask's INFO records are not kept by its log handlers
    probe, old_ids = None, set()
    with prefect_api(), dask_cluster(settings.dask) as address, Client(address) as client:
        refs = []
        for i, path in enumerate(paths):
            refs.append(file_ref(path, i + 1))
            request = RetrainRequest(new_files=refs[-1:], window_files=refs[-3:-1],
                                     pipeline=settings.pipeline(),
                                     registry_dir=str(home / "registry"), cache_dir=str(home / "cache"))
            started = time.perf_counter()
            result = call_flow(request, address)
            seconds = time.perf_counter() - started
            if args.trim:
                print(f"run {i + 1}: {seconds:.1f}s, rss {rss_mib():.1f} MiB, after malloc_trim "
                      f"{trim_and_rss():.1f} MiB", flush=True)
            done = i + 1 - args.warmup
            if done >= 0 and done % args.every == 0:
                probe = probe or GrowthProbe(args.frames)
                scheduler = client.run_on_scheduler(scheduler_probe_report if args.address else scheduler_records,
                                                    *([args.frames] if args.address else []))
                print(f"== after run {i + 1} ({result.outcome.decision if result.outcome else result.error}, "
                      f"{seconds:.2f}s)\n-- scheduler: {scheduler}"
                      f"\n-- this process: {probe.report()}", flush=True)
                for name in filter(None, args.holders.split(",")):
                    print(f"-- held: {holder_chain(name, old_ids)}", flush=True)
                old_ids = {id(o) for o in gc.get_objects()}
                if not args.no_workers:
                    for worker, text in client.run(probe_report, args.frames).items():
                        print(f"-- worker {worker}: {text}", flush=True)


if __name__ == "__main__":
    main()
