"""An existing Dask scheduler watched across its restarts: asked again with backoff while it
does not answer, and the service's worker plugins registered again on a new one."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest
from distributed import LocalCluster

from service.runtime.api import free_port
from service.runtime.scheduler_watch import SchedulerWatch, probe_delay, scheduler_identity


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scheduler_on(port: int) -> LocalCluster:
    """A real scheduler (no worker) listening on ``port`` of this machine."""
    return LocalCluster(n_workers=0, processes=False, scheduler_port=port, host="127.0.0.1",
                        dashboard_address=":0")  # its HTTP server on any free port (8787 may be taken)


def ask(watch: SchedulerWatch, idle: bool = True) -> None:
    """One turn of the daemon's main loop that asks, then the one that takes the answer."""
    watch.check_if_due(idle)
    watch.wait_for_answer(timeout=30)
    watch.check_if_due(idle)


@pytest.fixture
def address() -> Iterator[str]:
    yield f"tcp://127.0.0.1:{free_port()}"


def test_the_questions_to_a_gone_scheduler_space_out_to_thirty_seconds() -> None:
    assert [probe_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_scheduler_started_again_gets_the_worker_plugins_again(address: str, caplog) -> None:
    port = int(address.rsplit(":", 1)[1])
    clock = Clock()
    watch = SchedulerWatch(address, clock)
    with scheduler_on(port) as first:
        assert watch.register() and watch.registered_on == first.scheduler.id
        ask(watch)  # the one it registered on: nothing to do
        assert watch.answers and watch.next_check == 5.0

    caplog.set_level(logging.INFO, logger="retrain.runtime")
    clock.now = 5.0
    ask(watch)
    assert not watch.answers and watch.next_check == 6.0  # gone: asked again in 1 s, then 2 s, ...
    clock.now = 6.0
    ask(watch)
    assert watch.next_check == 8.0
    assert caplog.text.count("does not answer") == 1

    with scheduler_on(port) as second:
        clock.now = 7.0
        ask(watch)  # not due yet
        assert not watch.answers
        clock.now = 8.0
        ask(watch)
        assert watch.answers and watch.registered_on == second.scheduler.id != first.scheduler.id
        assert "retrain-warm-up" in second.scheduler.worker_plugins
        assert f"the Dask scheduler at {address} answers again after 3s (0 worker(s))" in caplog.text


def test_a_restart_between_runs_is_found_and_a_run_in_flight_is_left_alone(address: str, caplog) -> None:
    port = int(address.rsplit(":", 1)[1])
    clock = Clock()
    watch = SchedulerWatch(address, clock)
    with scheduler_on(port):
        assert watch.register()
    caplog.set_level(logging.INFO, logger="retrain.runtime")
    with scheduler_on(port) as restarted:
        ask(watch, idle=False)  # a run in flight finds out by itself
        assert "retrain-warm-up" not in restarted.scheduler.worker_plugins
        ask(watch)
        assert "retrain-warm-up" in restarted.scheduler.worker_plugins
        assert watch.answers and "was restarted between runs; worker plugins registered again" in caplog.text


def test_nothing_answering_is_none_not_an_error(address: str) -> None:
    assert scheduler_identity(address, timeout=0.5) is None


def test_an_answer_to_a_question_asked_before_the_run_found_it_gone_is_dropped(address: str) -> None:
    port = int(address.rsplit(":", 1)[1])
    clock = Clock()
    watch = SchedulerWatch(address, clock)
    with scheduler_on(port):
        assert watch.register()
        watch.check_if_due(idle=True)  # asked between runs, while it answers
        watch.wait_for_answer(timeout=30)
        watch.went_away()  # then a run found it gone
        watch.check_if_due(idle=False)
        assert not watch.answers  # the old answer did not bring it back
        ask(watch)
        assert watch.answers
