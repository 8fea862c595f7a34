"""The plugins that forget the daemon's finished runs, on a real scheduler with Dask's
default extensions (as an operator's `dask scheduler` has), and a real worker with Dask's
statistical profiler on."""

from __future__ import annotations

import time

import dask
import pytest
from dask.utils import key_split
from distributed import Client, LocalCluster, span

from service.runtime.forgetting import (PROFILE_GRACE_SECONDS, SPAN_GRACE_SECONDS, ForgetFinishedRuns,
                                        ForgetRunMetrics, ForgetRunProfiles, run_span)


def double(x: int) -> int:
    return 2 * x


# Other clients' work: functions of their own (tasks of one function share a task group,
# and Dask puts a task group's tasks on the span of its first task).
def triple(x: int) -> int:
    return 3 * x


def square(x: int) -> int:
    return x * x


def wait_until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster


def wait_for_span_metrics_reported(cluster) -> None:
    """Until the workers' heartbeats have reported the metrics of finished tasks by their
    span's id: the scheduler would not know a span forgotten before that, and the worker
    would close. With the real grace that cannot happen; tests that move the clock past it
    wait for it (a heartbeat every half second)."""
    from distributed.spans import CONTEXTS_WITH_SPAN_ID

    time.sleep(1.0)  # a worker records some of a task's metrics after its result was taken
    wait_until(lambda: not any(isinstance(k, tuple) and k[0] in CONTEXTS_WITH_SPAN_ID
                               for w in cluster.workers.values() for k in w.digests_total_since_heartbeat))


@pytest.fixture
def plugin(cluster):
    """The plugin as the daemon registers it (through a client), as the scheduler holds it."""
    with Client(cluster) as setup:
        setup.register_plugin(ForgetFinishedRuns())
    yield cluster.scheduler.plugins[ForgetFinishedRuns.name]
    wait_for_span_metrics_reported(cluster)  # before the next test moves the clock


def test_forgets_the_runs_spans_and_topics_but_nothing_of_other_clients(cluster, plugin):
    scheduler = cluster.scheduler
    spans = scheduler.extensions["spans"]

    with Client(cluster) as other:  # another user of the same cluster, still connected
        with span("their-work") as their_span:
            assert other.submit(triple, 1).result() == 3
        assert other.submit(square, 2).result() == 4  # Dask's default span
        runs = []
        for i in range(3):  # three runs of the daemon, a client each
            with Client(cluster) as ours:
                runs.append((ours.id, run_span()))
                with dask.annotate(span=runs[-1][1]):
                    assert ours.submit(double, 10 + i).result() == 20 + 2 * i
            ours_ids = {annotation["ids"][-1] for _, annotation in runs}
        assert ours_ids <= set(spans.spans)

        # Done, but within the grace the workers' heartbeats may still name them: kept.
        assert plugin.forget_spans(scheduler) == 0
        assert ours_ids <= set(spans.spans)
        wait_for_span_metrics_reported(cluster)
        key_split(f"double-{runs[-1][1]['ids'][0]}")  # a key met since the last client left
        assert key_split.cache_info().currsize > 0
        # After the grace: gone, from every index of the extension.
        assert plugin.forget(scheduler, now=time.monotonic() + SPAN_GRACE_SECONDS + 1)[0] == 3
        assert key_split.cache_info().currsize == 0  # and Dask's memo of their prefixes
        assert not ours_ids & set(spans.spans)
        assert all(s.name[:1] != ("retrain",) for s in spans.root_spans)
        assert ("retrain",) not in spans.spans_search_by_name
        assert "retrain" not in spans.spans_search_by_tag
        # The closures of our tasks are gone from the scheduler's logs of what it sent to
        # the worker; the other client's are still there.
        sent = [m for stream in scheduler.stream_comms.values() for batch in stream.recent_message_log
                if isinstance(batch, list) for m in batch if isinstance(m, dict) and m.get("op") == "compute-task"]
        assert {m["key"].split("-")[0] for m in sent if m["run_spec"] is not None} == {"triple", "square"}
        assert any(m["key"].startswith("double-") and m["run_spec"] is None for m in sent)
        # The other client's spans and its event topic are untouched; ours are gone.
        assert their_span in spans.spans
        assert any(s.name == ("default",) for s in spans.root_spans)
        assert other.id in scheduler._broker._topics
        assert not {client for client, _ in runs} & set(scheduler._broker._topics)
        # The cluster still works for everyone, the worker's heartbeats included.
        assert other.submit(triple, 14).result() == 42
        time.sleep(1.5)
        assert all(ws.status.name == "running" for ws in scheduler.workers.values())


def slow_double(x: int) -> int:
    time.sleep(3)
    return 2 * x


def test_a_run_in_progress_keeps_its_span(cluster, plugin):
    scheduler = cluster.scheduler
    spans = scheduler.extensions["spans"]
    with Client(cluster) as ours:
        annotation = run_span()
        with dask.annotate(span=annotation):
            running = ours.submit(slow_double, 4)
        span_id = annotation["ids"][-1]
        wait_until(lambda: span_id in spans.spans)
        assert not running.done()
        assert plugin.forget(scheduler, now=time.monotonic() + 10 * SPAN_GRACE_SECONDS)[0] == 0
        assert span_id in spans.spans
        assert running.result() == 8


def halve(x: int) -> float:
    return x / 2


def test_a_span_whose_results_are_still_held_is_kept(cluster, plugin):
    """A task group outlives its run while a result of it is held; the scheduler then files
    a new task of the same group under the group's span, which must still be there."""
    scheduler = cluster.scheduler
    spans = scheduler.extensions["spans"]
    with Client(cluster) as ours:
        first = run_span()
        with dask.annotate(span=first):
            held = ours.submit(halve, 8)
            assert held.result() == 4
        later = time.monotonic() + 10 * SPAN_GRACE_SECONDS
        plugin.forget(scheduler, now=later)
        assert first["ids"][-1] in spans.spans
        with dask.annotate(span=run_span()):  # the next run, same task group
            assert ours.submit(halve, 10).result() == 5
        del held
        wait_until(lambda: "halve" not in scheduler.task_groups)
        wait_for_span_metrics_reported(cluster)
        plugin.forget(scheduler, now=later + SPAN_GRACE_SECONDS + 1)  # done for the grace since first seen
        assert first["ids"][-1] not in spans.spans


def spin_ours(seconds: float) -> int:
    return _spin(seconds)


def spin_theirs(seconds: float) -> int:
    return _spin(seconds)


def _spin(seconds: float) -> int:
    """Work the profiler samples (a sleeping thread is sampled too, but on one line)."""
    deadline, n = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        n += sum(range(100))
    return n


def frame_names(tree: dict) -> set[str]:
    names = {tree["description"]["name"]} if isinstance(tree["description"], dict) else set()
    for child in tree["children"].values():
        names |= frame_names(child)
    return names


def registered_on_the_worker(cluster, plugin):
    """The cluster's worker and the worker plugin as the daemon registers it (through a
    client), as the worker holds it."""
    worker = next(iter(cluster.workers.values()))
    with Client(cluster) as setup:
        setup.register_plugin(plugin)
    return worker, worker.plugins[plugin.name]


def test_workers_take_the_daemons_tasks_out_of_their_profile_after_the_grace(cluster):
    worker, plugin = registered_on_the_worker(cluster, ForgetRunProfiles())
    with Client(cluster) as ours, Client(cluster) as other:
        with dask.annotate(span=run_span()):
            assert ours.submit(spin_ours, 1.5).result() > 0
        assert other.submit(spin_theirs, 1.5).result() > 0
    wait_until(lambda: sum("spin_theirs" in keys for _, keys in worker.profile_keys_history) >= 1
               and worker.profile_recent["count"] == 0, seconds=10)
    sampled = [(tree, keys) for (_, tree), (_, keys) in zip(worker.profile_history, worker.profile_keys_history)
               if keys]
    assert any("spin_ours" in keys for _, keys in sampled)
    assert plugin.prefixes == {"spin_ours"}
    theirs_before = [keys["spin_theirs"]["count"] for _, keys in sampled if "spin_theirs" in keys]

    # Within the grace the dashboard still shows them; after it, only the other client's.
    assert plugin.forget() == 0
    assert plugin.forget(now=time.time() + PROFILE_GRACE_SECONDS + 1) >= 1
    assert not any("spin_ours" in keys for _, keys in worker.profile_keys_history)
    everything = [tree for _, tree in worker.profile_history]
    assert not any("spin_ours" in frame_names(tree) for tree in everything)
    assert any("spin_theirs" in frame_names(tree) for tree in everything)
    # What is left of each second is exactly the other tasks' samples.
    for tree, keys in sampled:
        assert tree["count"] == sum(part["count"] for part in keys.values())
    assert [keys["spin_theirs"]["count"] for _, keys in sampled if "spin_theirs" in keys] == theirs_before
    # A sweep after that has nothing left to take.
    assert plugin.forget(now=time.time() + PROFILE_GRACE_SECONDS + 2) == 0


def span_ids_in(metrics: dict) -> set:
    from distributed.spans import CONTEXTS_WITH_SPAN_ID

    return {k[1] for k in metrics if isinstance(k, tuple) and k[0] in CONTEXTS_WITH_SPAN_ID}


def test_workers_remove_the_daemons_runs_from_their_metrics_once_they_hold_none_of_its_tasks(cluster):
    worker, plugin = registered_on_the_worker(cluster, ForgetRunMetrics())
    sweeps = worker.periodic_callbacks[ForgetRunMetrics.name]  # every PROFILE_SWEEP_SECONDS
    assert sweeps.is_running()
    worker.loop.add_callback(sweeps.stop)  # from here the test sweeps, when it chooses
    wait_until(lambda: not sweeps.is_running())
    with Client(cluster) as other, Client(cluster) as ours:
        with span("their-work") as their_span:
            assert other.submit(triple, 7).result() == 21
        # Three runs, a client each: Dask adds keys for each one's span and keeps them all.
        runs = [run_span() for _ in range(3)]
        for i, annotation in enumerate(runs[:2]):
            with Client(cluster) as run_client, dask.annotate(span=annotation):
                assert run_client.submit(double, 200 + i).result() == 400 + 2 * i
        with dask.annotate(span=runs[2]):
            held = ours.submit(double, 300)  # a run whose result is still held
            assert held.result() == 600
        ours_ids = {annotation["ids"][-1] for annotation in runs}
        wait_until(lambda: ours_ids <= span_ids_in(worker.digests_total))
        assert ours_ids <= span_ids_in(worker.digests_total) and ours_ids <= span_ids_in(worker.digests_max)
        assert plugin.span_ids == ours_ids
        # Once the worker holds none of a run's tasks, its keys go; the held run's stay.
        finished = {runs[0]["ids"][-1], runs[1]["ids"][-1]}
        wait_until(lambda: not {t.span_id for t in worker.state.tasks.values()} & finished)
        theirs_before = {k: v for k, v in worker.digests_total.items() if isinstance(k, tuple) and their_span in k}
        assert theirs_before
        assert plugin.forget() > 0
        for metrics in (worker.digests_total, worker.digests_max):
            assert not span_ids_in(metrics) & finished
            assert runs[2]["ids"][-1] in span_ids_in(metrics)
        assert {k: v for k, v in worker.digests_total.items()
                if isinstance(k, tuple) and their_span in k} == theirs_before  # other clients' stay
        assert "latency" in worker.digests_total  # and the worker's own
        del held
        wait_until(lambda: runs[2]["ids"][-1] not in {t.span_id for t in worker.state.tasks.values()})
        assert plugin.forget() > 0
        assert not span_ids_in(worker.digests_total) & ours_ids
        assert plugin.span_ids == set() and plugin.forget() == 0
