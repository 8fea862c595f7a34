"""An existing Dask scheduler ([dask] address), watched by the daemon across its restarts.

A scheduler started again on the same address has forgotten everything: the service's
worker plugins (``service.runtime.warmup``) and its workers, which exit when their
scheduler goes away (distributed does not reconnect them; run them under a supervisor
that starts them again, they then wait for a scheduler to answer). The flow holds no
client between runs: each flow run's DaskTaskRunner opens its own, so a run started after
the restart simply connects. What the daemon must do itself:

- a run in flight when the scheduler goes away fails on its cancelled futures: it is
  handed back (``service.runner.flowruns.scheduler_went_away``) and ``went_away`` is called;
- while it does not answer, no run starts; it is asked again after 1, 2, 4, ... up to 30
  seconds (``probe_delay``), on a thread of its own: the daemon keeps taking files in;
- once it answers (or, between runs, a scheduler of another identity answers: it was
  restarted while the daemon was idle), the worker plugins are registered again; workers
  that join later get them from the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("retrain.runtime")

# Between runs, how often the daemon asks whether the scheduler is still the one it knows.
IDLE_CHECK_SECONDS = 5.0
# How long one question to the scheduler may take (connecting included).
PROBE_TIMEOUT_SECONDS = 2.0
MAX_PROBE_DELAY_SECONDS = 30.0


def scheduler_identity(address: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> dict[str, Any] | None:
    """The scheduler's identity (its ``id``, its ``workers``, ...) as it answers now, or
    None when nothing answers at ``address`` within ``timeout``. One message, no client:
    the scheduler records nothing and logs nothing for it."""
    from distributed.core import rpc
    from distributed.security import Security

    async def ask() -> dict[str, Any]:
        scheduler = rpc(address, timeout=timeout, connection_args=Security().get_connection_args("client"))
        try:
            return await asyncio.wait_for(scheduler.identity(), timeout)
        finally:
            await scheduler.close_rpc()

    try:
        return asyncio.run(ask())
    except (OSError, asyncio.TimeoutError):  # refused, timed out, closed: CommClosedError is an OSError
        return None


def probe_delay(failed_probes: int) -> float:
    """Seconds until the next question to a scheduler that did not answer ``failed_probes``
    times in a row: 1, 2, 4, ... up to 30. Written out because it spaces the questions of
    a watch the main loop drives, not the attempts of one blocking call (tenacity's domain)."""
    return min(MAX_PROBE_DELAY_SECONDS, 2.0 ** (failed_probes - 1))


@dataclass(frozen=True)
class Answer:
    identity: dict[str, Any] | None  # None: nothing answered, or the plugins could not be registered
    restarted: bool  # another scheduler than the one with our plugins answered: registered on it now


class SchedulerWatch:
    """The existing scheduler the runs go to, as the daemon's main loop sees it: answering
    (runs may start) or gone (they wait), and the identity its worker plugins were
    registered on.

    Each question runs on a thread of its own: connecting may take PROBE_TIMEOUT_SECONDS,
    and registering the plugins as long as the workers take to import the flow's code. The
    main loop never waits for it; a later ``check_if_due`` takes the answer."""

    def __init__(self, address: str, clock: Callable[[], float] = time.monotonic):
        self.address = address
        self.clock = clock
        self.registered_on: str | None = None  # the id of the scheduler that has our plugins
        self.gone_since: float | None = None
        self.failed_probes = 0
        self.next_check = 0.0
        self._asking: Future[Answer] | None = None

    @property
    def answers(self) -> bool:
        return self.gone_since is None

    def register(self) -> bool:
        """Register the worker plugins on the scheduler answering now; False when none does."""
        from service.runtime.cluster import warm_up_workers

        try:
            self.registered_on = warm_up_workers(self.address)
        except (OSError, TimeoutError) as exc:
            log.debug("worker plugins not registered at %s: %s", self.address, exc)
            return False
        return True

    def went_away(self) -> None:
        """A run found the scheduler gone: runs wait until it answers, asked from now on (an
        answer to a question asked before is no longer news)."""
        if self.gone_since is None:
            self.gone_since, self.failed_probes, self.next_check = self.clock(), 0, self.clock()
        self._asking = None

    def check_if_due(self, idle: bool) -> None:
        """Take the answer to the question in flight, or ask when it is time: while the
        scheduler is gone, with backoff; while it answers, every IDLE_CHECK_SECONDS between
        runs (a run in flight finds out by itself)."""
        if self._asking is not None:
            if self._asking.done():
                answer, self._asking = self._asking.result(), None
                self._take(answer, self.clock())
            return
        if self.clock() < self.next_check or (self.answers and not idle):
            return
        self._asking = asking = Future()
        threading.Thread(target=lambda: asking.set_result(self.ask()), name="dask-scheduler-watch",
                         daemon=True).start()  # never holds up the daemon's exit

    def wait_for_answer(self, timeout: float) -> None:
        """Until the question in flight has its answer (for tests)."""
        if self._asking is not None:
            wait([self._asking], timeout)

    def ask(self) -> Answer:
        """Whether the scheduler answers; a restarted one gets the worker plugins again."""
        try:
            identity = scheduler_identity(self.address)
            restarted = identity is not None and identity.get("id") != self.registered_on
            return Answer(None if restarted and not self.register() else identity, restarted)
        except Exception as exc:  # whatever a question runs into, the scheduler did not answer it
            log.debug("the question to the Dask scheduler at %s failed: %s", self.address, exc)
            return Answer(None, False)

    def _take(self, answer: Answer, now: float) -> None:
        if answer.identity is None:
            self._not_answering(now)
            return
        if self.gone_since is not None:
            log.info("the Dask scheduler at %s answers again after %.0fs (%d worker(s)); worker plugins "
                     "registered again, waiting runs start now", self.address, now - self.gone_since,
                     len(answer.identity.get("workers", {})))
        elif answer.restarted:
            log.info("the Dask scheduler at %s was restarted between runs; worker plugins registered again",
                     self.address)
        self.gone_since, self.failed_probes, self.next_check = None, 0, now + IDLE_CHECK_SECONDS

    def _not_answering(self, now: float) -> None:
        if self.gone_since is None:  # found between runs (a run that finds it gone says so itself)
            self.gone_since = now
            log.warning("the Dask scheduler at %s does not answer; no run starts until it does (asked again after "
                        "1, 2, 4, ... up to %.0f s): start it again on the same address", self.address,
                        MAX_PROBE_DELAY_SECONDS)
        self.failed_probes += 1
        self.next_check = now + probe_delay(self.failed_probes)
