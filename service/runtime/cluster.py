"""The Dask cluster the flow's tasks run on, started (or connected to) once and kept for the
process's whole life: an existing scheduler, or a local cluster of worker processes (the
daemon) or of threads of this process (a one-shot ``retrain run``)."""

from __future__ import annotations

import importlib.util
import logging
import time
from contextlib import contextmanager
from typing import Iterator

from core.errors import RetrainError, one_line
from service.config import DaskSpec

log = logging.getLogger("retrain.runtime")


def check_scheduler(address: str) -> int:
    """Make sure an existing Dask scheduler answers; returns its number of workers."""
    from distributed import Client

    try:
        with Client(address, timeout="10s") as client:
            return len(client.scheduler_info().get("workers", {}))
    except (OSError, TimeoutError) as exc:
        raise RetrainError(
            f"the Dask scheduler at {address} does not answer ({type(exc).__name__}); "
            "start it (dask scheduler) or unset dask.address to use a local cluster"
        ) from None


@contextmanager
def dask_cluster(spec: DaskSpec, in_process: bool = False) -> Iterator[str]:
    """Yield the address of the scheduler the flow's tasks run on.

    ``spec.address`` set: that existing scheduler (checked to answer; its worker plugins are
    registered by the caller's ``SchedulerWatch``, which registers them again after a
    restart). Otherwise a LocalCluster started once for this process: of worker processes,
    or with ``in_process`` of threads in this process (``spec.n_workers`` workers of
    ``spec.threads_per_worker`` threads, no memory limit: they share this process).
    """
    import dask
    from distributed import LocalCluster

    dask.config.set(LONG_LIVED_DASK_CONFIG)  # this process: its clients, and the scheduler below
    if spec.address:
        workers = check_scheduler(spec.address)
        log.info("running tasks on the Dask scheduler at %s (%d workers)", spec.address, workers)
        yield spec.address
        return

    # The dashboard needs bokeh; without it Dask would still print a link to nothing.
    dashboard = (spec.dashboard_address or None) if importlib.util.find_spec("bokeh") else None
    started = time.perf_counter()
    options = long_lived_cluster_options()
    if in_process:
        options.pop("config")  # a nanny's option; this process's config is set above
        cluster = LocalCluster(n_workers=spec.n_workers, threads_per_worker=spec.threads_per_worker,
                               memory_limit=0, processes=False, dashboard_address=dashboard, **options)
    else:
        cluster = LocalCluster(
            n_workers=spec.adaptive_minimum if spec.adaptive_maximum else spec.n_workers,
            threads_per_worker=spec.threads_per_worker,
            memory_limit=spec.memory_limit,
            processes=True,
            dashboard_address=dashboard,
            silence_logs=logging.ERROR,
            **options,
        )
    try:
        if in_process:
            size = f"{spec.n_workers} in-process workers"
        elif spec.adaptive_maximum:
            cluster.adapt(minimum=spec.adaptive_minimum, maximum=spec.adaptive_maximum)
            size = f"adaptive {spec.adaptive_minimum}..{spec.adaptive_maximum} workers"
        else:
            size = f"{spec.n_workers} workers"
        memory = ("this process's memory" if in_process else
                  spec.memory_limit if spec.memory_limit != "auto" else "auto memory limit")
        log.info("local Dask cluster: %s x %d threads, %s, at %s", size, spec.threads_per_worker,
                 memory, cluster.scheduler_address)
        if dashboard is not None:
            log.info("Dask dashboard: %s", cluster.dashboard_link)
        elif spec.dashboard_address:
            log.info("Dask dashboard unavailable: install bokeh>=3.1 to get it")
        log.debug("start-up: local cluster up in %.1fs", time.perf_counter() - started)
        warm_up_workers(cluster.scheduler_address, own_cluster=not in_process)
        yield cluster.scheduler_address
    finally:
        started = time.perf_counter()
        cluster.close()
        log.debug("stop: local cluster closed in %.1fs", time.perf_counter() - started)


# Dask keeps the last `distributed.admin.low-level-log-length` (1,000) messages of each
# connection and as many state transitions, for debugging. The scheduler's messages to a
# worker carry each task's whole Prefect closure (the flow, its run context, the request),
# so in a process that runs flows for months these logs would be the largest thing it
# holds, and would grow for hundreds of runs before their bound. A short one is enough to
# read what just happened. The scheduler's history of computations (each with its task
# groups) is bounded the same way. And each time a client leaves (every run's task runner
# is a client), the scheduler starts a task that sleeps for `events-cleanup-delay` (an
# hour) before it empties the client's event topic: some thousand sleeping tasks at a run
# every few seconds, about 0.03 MiB per run for the first hour. The daemon's scheduler
# plugin removes its clients' topics itself (service.runtime.forgetting), so a minute is
# enough. The system monitor of the scheduler and of each worker (the dashboard's CPU,
# memory, network and disk plots) keeps eight series sampled every half second for an hour
# (7,200 samples, about 1.8 MiB each once full); ten minutes of them are enough to see
# what the cluster does now, and are full after ten minutes instead of after an hour of runs.
LONG_LIVED_DASK_CONFIG = {"distributed.admin.low-level-log-length": 50,
                          "distributed.admin.system-monitor.log-length": 1200,
                          "distributed.diagnostics.computations.max-history": 10,
                          "distributed.scheduler.events-cleanup-delay": "60s"}


def long_lived_cluster_options() -> dict:
    """Options for a local cluster that runs for months. Two of Dask's defaults keep a
    record of every run, read only by the dashboard's profiling pages: spans, which the
    scheduler never frees and which hold every task group of every run
    (dask/distributed#7977), and each worker's statistical profile, a call tree per second
    of running tasks kept for the last 1,000 seconds. Both grow with the number of runs,
    so the daemon's cluster runs without them."""
    from distributed.scheduler import DEFAULT_EXTENSIONS as SCHEDULER_EXTENSIONS
    from distributed.worker import DEFAULT_EXTENSIONS as WORKER_EXTENSIONS

    return {
        "scheduler_kwargs": {"extensions": {name: ext for name, ext in SCHEDULER_EXTENSIONS.items()
                                            if name != "spans"}},
        # Worker options (through each nanny): the worker's half of spans, which the
        # scheduler would otherwise be sent and not know, and no statistical profiler.
        "extensions": {name: ext for name, ext in WORKER_EXTENSIONS.items() if name != "spans"},
        # A dotted key: the nanny merges this into its whole config one level deep.
        "config": {"distributed.worker.profile.enabled": False, **LONG_LIVED_DASK_CONFIG},
    }


def warm_up_workers(address: str, own_cluster: bool = False) -> str:
    """Import the flow's code on every worker now (and on workers that join later); the
    workers of this process's own cluster leave Ctrl+C to it; the scheduler forgets each
    run once it is over, and the workers take its tasks out of their profile and their
    metrics (service.runtime.forgetting); the workers give the memory its tasks freed back to the
    system (service.runtime.heap). Returns the id of the scheduler the plugins were
    registered on (a restarted one has another)."""
    from distributed import Client

    from service.runtime.forgetting import (ForgetFinishedRuns, ForgetRunMetrics, ForgetRunProfiles,
                                            ReleaseFreeMemory)
    from service.runtime.warmup import ParentHandlesInterrupts, WarmUp

    started = time.perf_counter()
    with Client(address, timeout="30s") as client:
        client.register_plugin(WarmUp())
        if own_cluster:  # after WarmUp: Prefect's loggers exist by then, to be made one-line
            client.register_plugin(ParentHandlesInterrupts())
        else:  # workers that keep Dask's profiler and spans (the own cluster's run without them)
            client.register_plugin(ForgetRunProfiles())
            client.register_plugin(ForgetRunMetrics())
        client.register_plugin(ReleaseFreeMemory())
        try:
            client.register_plugin(ForgetFinishedRuns())
        except Exception as exc:  # a scheduler without the service's code in its environment
            log.warning("the Dask scheduler at %s did not take the plugin that forgets finished runs "
                        "(%s); it will keep a record of every run: install retrain in the scheduler's "
                        "environment", address, one_line(exc))
        registered_on = client.scheduler_info()["id"]
    log.debug("start-up: workers warmed up in %.1fs", time.perf_counter() - started)
    return registered_on


def quiet_libraries() -> None:
    """Keep Dask's and Prefect's chatter out of the operator's log unless it matters."""
    for name in ("distributed", "distributed.scheduler", "distributed.core", "distributed.nanny",
                 "distributed.worker", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from service.runtime.readable_logs import one_line_library_logs

    one_line_library_logs()
