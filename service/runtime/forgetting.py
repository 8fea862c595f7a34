"""What a long-lived Dask cluster keeps of the daemon's runs, and the plugins that let it
forget, on a cluster the daemon did not start.

The daemon's own local cluster is started without the records that grow with every run
(``service.runtime.cluster.long_lived_cluster_options``). An existing cluster is the
operator's: the daemon must not restart it, nor change what its other clients see (their
spans, their profiles, their logs). So the daemon marks its own tasks, and a plugin it
registers on the scheduler forgets only what is marked, once a run is over (before it, the
scheduler grew by 1.7-2.5 MiB per run of the soak):

- Every task of a run is submitted inside a span of its own, named ``("retrain",)`` with an
  id per run (``run_span``), not Dask's shared "default" one. Dask never frees a span: each
  keeps its task groups and the workers' metrics (dask/distributed#7977).
  ``ForgetFinishedRuns`` removes the daemon's spans from the scheduler once they have been
  done for ``SPAN_GRACE_SECONDS`` and none of their task groups is still held; other spans
  stay.
- The scheduler keeps the last ``distributed.admin.low-level-log-length`` (1,000) batches
  of messages it sent to each worker, for debugging. A task's message carries its whole
  Prefect closure (the flow, its task runner, the run's request), which the scheduler
  unpickled: hundreds of MiB once the logs are full, filled over the first hundreds of
  runs. The plugin empties the closures of the daemon's own messages there (the rest of each
  message stays, as do other clients' messages).
- The scheduler keeps an event topic per client, and the daemon's task runner is a new
  client per flow run. Dask empties a topic an hour after its client left
  (``distributed.scheduler.events-cleanup-delay``) but never removes it; the plugin removes
  the topics of the daemon's clients (those that submitted its spans) when they leave.

Each worker keeps its statistical profile (``distributed.worker.profile``): a call tree per
second of work, once for all its tasks and once per task prefix, for the last
``distributed.admin.low-level-log-length`` (1,000) seconds. Bounded by time, not by runs, but
a busy worker's is a few hundred MiB once full, and a Prefect task's stack is deep. A worker
plugin the daemon registers, ``ForgetRunProfiles``, takes the daemon's tasks out of both
``PROFILE_GRACE_SECONDS`` after they were sampled: until then the dashboard's Profile page
shows them; the samples of other clients' tasks stay, counted exactly as before.

Each worker also adds up how long its tasks spent on what (Dask's fine performance metrics:
``Worker.digests_total`` and ``digests_max``) under a key per span, task prefix and activity,
and never removes a span's keys: some 18 keys a run on each worker, for ever. The scheduler
has its own copy of them (each heartbeat sends what is new), and on the worker nothing of
Dask reads them but its tests. No upstream issue tracks it; a worker plugin,
``ForgetRunMetrics``, removes the keys of the daemon's spans once the worker holds none of
their tasks (minimal reproduction: ``test_forgetting.py``).

What a run freed on a worker stays resident in glibc's arenas (service.runtime.heap); a
plugin, ``ReleaseFreeMemory``, gives it back after the daemon's tasks ran there.

Every process of Dask memoizes the prefix of each task key it meets (``dask.utils.key_split``,
for the last 100,000 distinct keys), and every run's keys are new: a memo that fills over
months (about 4 keys a run on each worker and 8 on the scheduler, measured; some 300 bytes a
key, 30 MiB when full). The scheduler plugin empties it when it forgets runs and the workers'
``ReleaseFreeMemory`` after the daemon's tasks (``forget_key_prefixes``): a memo, so other
clients see nothing but a few microseconds to compute a prefix again.
"""

from __future__ import annotations

import time
import uuid

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin
from distributed.utils import key_split

from service.runtime import heap

RUN_SPAN_TAG = "retrain"
# A span is removed this long after its last task ended: the workers report each span's
# metrics with their heartbeats (every few seconds at most), and the scheduler looks the
# span up by its id when they do.
SPAN_GRACE_SECONDS = 120.0
# The daemon's tasks leave a worker's profile this long after they were sampled, checked
# every PROFILE_SWEEP_SECONDS: the profile holds at most these few minutes of them.
PROFILE_GRACE_SECONDS = 120.0
PROFILE_SWEEP_SECONDS = 10.0


def run_span() -> dict:
    """The span annotation of one run's tasks (``dask.annotate(span=run_span())``): the
    form ``distributed.span`` gives, with an id the daemon chooses once per run."""
    return {"name": (RUN_SPAN_TAG,), "ids": (str(uuid.uuid4()),)}


def is_run_span_annotation(annotation) -> bool:
    return isinstance(annotation, dict) and tuple(annotation.get("name", ()))[:1] == (RUN_SPAN_TAG,)


class ForgetFinishedRuns(SchedulerPlugin):
    """On the scheduler: forgets the daemon's finished runs (see the module) when a client
    leaves (each run's task runner is a client of its own), not at each graph update: the
    sweep reads every worker's message log, too much for each task submitted.
    Registered by name once per scheduler: a restarted daemon finds it there and keeps it."""

    name = "retrain-forget-finished-runs"
    idempotent = True

    def __init__(self) -> None:
        self.clients: set[str] = set()  # the daemon's clients (those that submitted its spans)
        self.departed: set[str] = set()  # those of them that have left
        self.done_since: dict[str, float] = {}  # span id -> when it was first seen done

    def update_graph(self, scheduler, *, client: str, annotations: dict, **kwargs) -> None:
        spans = annotations.get("span") or {}
        if any(is_run_span_annotation(a) for a in spans.values()):
            self.clients.add(client)

    def remove_client(self, scheduler, client: str) -> None:
        self.forget(scheduler)

    def forget(self, scheduler, now: float | None = None) -> tuple[int, int, int]:
        """Forget what is over; returns how many spans, topics and task closures."""
        forget_key_prefixes()
        return self.forget_spans(scheduler, now), self.forget_topics(scheduler), self.forget_closures(scheduler)

    def forget_closures(self, scheduler) -> int:
        """Empty the task closures of the daemon's messages kept in the scheduler's logs of
        what it sent to each worker; returns how many."""
        emptied = 0
        for stream in list(scheduler.stream_comms.values()):
            for batch in stream.recent_message_log:
                if not isinstance(batch, list):  # "large-message": kept as that word only
                    continue
                for message in batch:
                    if (isinstance(message, dict) and message.get("run_spec") is not None
                            and is_run_span_annotation((message.get("annotations") or {}).get("span"))):
                        message["run_spec"] = None
                        emptied += 1
        return emptied

    def forget_topics(self, scheduler) -> int:
        """Remove the event topics of the daemon's clients that had left at the previous
        call; returns how many. Not at once: the scheduler logs a client's removal once
        more after its plugins heard of it, which would make its topic again."""
        topics = scheduler._broker._topics
        removed = 0
        for client in self.departed:
            topic = topics.get(client)
            if topic is not None and not topic.subscribers:
                del topics[client]
                removed += 1
        self.departed = {c for c in self.clients if c not in scheduler.clients}
        self.clients -= self.departed
        return removed

    def forget_spans(self, scheduler, now: float | None = None) -> int:
        """Remove the daemon's spans done for SPAN_GRACE_SECONDS; returns how many."""
        spans = scheduler.extensions.get("spans")
        if spans is None:
            return 0
        now = time.monotonic() if now is None else now
        ours = [s for s in spans.root_spans if s.name[:1] == (RUN_SPAN_TAG,)]
        expired = []
        for span in ours:
            if not span.done:
                self.done_since.pop(span.id, None)
            elif (now - self.done_since.setdefault(span.id, now) >= SPAN_GRACE_SECONDS
                  and not _groups_alive(scheduler, span)):
                expired.append(span)
        for span in expired:
            for node in list(span.traverse_spans()):
                spans.spans.pop(node.id, None)
                _remove(spans.spans_search_by_name.get(node.name), node)
                for tag in node.name:
                    _remove(spans.spans_search_by_tag.get(tag), node)
                self.done_since.pop(node.id, None)
            _remove(spans.root_spans, span)
        for index in (spans.spans_search_by_name, spans.spans_search_by_tag):
            for key in [k for k, v in index.items() if not v]:
                del index[key]
        return len(expired)


class PeriodicWorkerPlugin(WorkerPlugin):
    """A worker plugin whose ``tick`` the worker's event loop calls every ``seconds``, as it
    calls the worker's own periodic callbacks (stopped with the worker or the plugin)."""

    name: str
    seconds: float

    def setup(self, worker) -> None:
        from tornado.ioloop import PeriodicCallback

        self.worker = worker
        callback = PeriodicCallback(self.tick, self.seconds * 1000)
        worker.periodic_callbacks[self.name] = callback
        callback.start()

    def teardown(self, worker) -> None:
        callback = worker.periodic_callbacks.pop(self.name, None)
        if callback is not None:
            callback.stop()

    def tick(self) -> None:
        raise NotImplementedError

    def daemons_task(self, key):
        """The worker's task ``key`` if it is one of the daemon's (in one of its runs'
        spans), else None."""
        task = self.worker.state.tasks.get(key)
        if task is not None and is_run_span_annotation((task.annotations or {}).get("span")):
            return task
        return None


class ForgetRunProfiles(PeriodicWorkerPlugin):
    """On each worker (workers that join later included): takes the daemon's tasks out of
    the worker's statistical profile once PROFILE_GRACE_SECONDS have passed (see the
    module). The worker keeps, per second, a tree of all samples and a tree per task prefix
    (``key_split``) made of the same samples, so removing a prefix's tree from the first
    leaves exactly the other tasks' samples. The daemon's prefixes are those of tasks that
    ran in its spans. Registered by name: a restarted daemon replaces it."""

    name = "retrain-forget-run-profiles"
    idempotent = True
    seconds = PROFILE_SWEEP_SECONDS

    def setup(self, worker) -> None:
        self.prefixes: set[str] = set()  # task prefixes of the daemon's tasks on this worker
        self.swept_until = float("-inf")  # profile seconds up to this time are done
        super().setup(worker)

    def tick(self) -> None:
        self.forget()

    def transition(self, key, start: str, finish: str, **kwargs) -> None:
        if finish == "executing" and self.daemons_task(key) is not None:
            self.prefixes.add(key_split(key))

    def forget(self, now: float | None = None) -> int:
        """Take the daemon's tasks out of the profile's seconds older than the grace;
        returns how many per-prefix trees were removed."""
        from distributed.metrics import time as dask_time

        now = dask_time() + self.worker.scheduler_delay if now is None else now
        cutoff = now - PROFILE_GRACE_SECONDS
        removed = 0
        # Both histories get one entry per second, appended together with the same time.
        for (when, tree), (when_keys, per_prefix) in zip(self.worker.profile_history,
                                                         self.worker.profile_keys_history):
            if when > cutoff:
                break
            if when <= self.swept_until or when != when_keys:
                continue
            for prefix in [p for p in per_prefix if p in self.prefixes]:
                _subtract(tree, per_prefix.pop(prefix))
                removed += 1
            self.swept_until = when
        return removed


class ForgetRunMetrics(PeriodicWorkerPlugin):
    """On each worker (workers that join later included): removes the daemon's finished
    runs from the worker's fine performance metrics (see the module) once the worker holds
    no task of their span. Other clients' keys stay. Registered by name: a restarted
    daemon replaces it."""

    name = "retrain-forget-run-metrics"
    idempotent = True
    seconds = PROFILE_SWEEP_SECONDS

    def setup(self, worker) -> None:
        self.span_ids: set[str] = set()  # spans of the daemon's tasks that ran on this worker
        super().setup(worker)

    def tick(self) -> None:
        self.forget()

    def transition(self, key, start: str, finish: str, **kwargs) -> None:
        task = self.daemons_task(key) if finish == "executing" else None
        if task is not None and task.span_id is not None:
            self.span_ids.add(task.span_id)

    def forget(self) -> int:
        """Remove the metrics of the daemon's spans of which the worker holds no task;
        returns how many keys."""
        from distributed.spans import CONTEXTS_WITH_SPAN_ID

        done = self.span_ids - {task.span_id for task in self.worker.state.tasks.values()}
        if not done:
            return 0
        removed = 0
        for metrics in (self.worker.digests_total, self.worker.digests_max, self.worker.digests or {}):
            for key in list(metrics):
                if (isinstance(key, tuple) and len(key) > 1 and key[0] in CONTEXTS_WITH_SPAN_ID
                        and key[1] in done):
                    removed += metrics.pop(key, None) is not None
        self.span_ids -= done
        return removed


class ReleaseFreeMemory(PeriodicWorkerPlugin):
    """On each worker (workers that join later included): after the daemon's tasks ran,
    give the free pages of the worker's heap back, at most every TRIM_SECONDS. Registered
    by name: a restarted daemon replaces it."""

    name = "retrain-release-free-memory"
    idempotent = True
    seconds = heap.TRIM_SECONDS

    def setup(self, worker) -> None:
        self.ran_since_trim = False  # one of the daemon's tasks ended since the last trim
        self.trims = 0
        super().setup(worker)

    def transition(self, key, start: str, finish: str, **kwargs) -> None:
        if start == "executing" and not self.ran_since_trim and self.daemons_task(key) is not None:
            self.ran_since_trim = True

    def tick(self) -> None:
        if self.ran_since_trim:
            self.ran_since_trim = False
            forget_key_prefixes()
            self.trims += heap.release_free_memory()


def forget_key_prefixes() -> None:
    """Empty this process's memo of task-key prefixes (see the module)."""
    key_split.cache_clear()


def _subtract(total: dict, part: dict) -> None:
    """Remove the samples of the profile tree ``part`` from ``total``, which holds them
    (``distributed.profile.process`` counts a sample once on every node of its path)."""
    total["count"] -= part["count"]
    for ident, child in part["children"].items():
        node = total["children"].get(ident)
        if node is None:
            continue
        _subtract(node, child)
        if node["count"] <= 0:
            del total["children"][ident]


def _groups_alive(scheduler, span) -> bool:
    """Whether a task group of the span (or of a span under it) is still the scheduler's: a
    task of it is still held (a result kept by a future). The scheduler looks the span up by
    the group's span id whenever a task of the same group is submitted again."""
    return any(scheduler.task_groups.get(group.name) is group
               for node in span.traverse_spans() for group in node.groups)


def _remove(items: list | None, item) -> None:
    if items is not None:
        try:
            items.remove(item)
        except ValueError:
            pass
