"""One flow run of the daemon's deployment, executed in this process on the warm Dask
cluster: opened (created for a batch, or taken when Prefect scheduled it), claimed
(Pending takes the deployment's concurrency slot, as a worker would), run, and stoppable.

Prefect cancels a flow run by marking it Cancelling; whoever executes the run must notice
and stop it. While the flow runs, a thread asks Prefect for its state every second; once
it is Cancelling, the registry's deploy lease is taken away (a deploy that has not switched
`current` yet no longer does) and ``RunStop.cancel`` cancels every Dask future of the run,
so the flow's waits end at once and it ends Cancelled (``flows.retrain``); futures it
submits later are cancelled as they come.

Nothing here touches the ledger or a file: the daemon runs ``execute`` in a thread and
keeps every state change in its own loop.
"""

from __future__ import annotations

import errno
import logging
import threading
import traceback
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

import dask
from prefect_dask import DaskTaskRunner

from core.errors import one_line
from core.records import RetrainRequest, RunOutcome
from flows.models.registry import ModelRegistry
from service.runner.records import FlowResult, RunStart
from service.runtime.forgetting import run_span

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

log = logging.getLogger("retrain.flowruns")

# How often a run in flight asks Prefect whether it was cancelled.
CANCEL_POLL_SECONDS = 1.0


class RunStop:
    """The handle on a run in flight: its flow run once known, and its Dask futures, so
    that a cancel stops them. A copy pickled with the flow (tasks carry it to the workers)
    holds nothing to stop."""

    def __init__(self) -> None:
        self.flow_run_id: str | None = None
        self.requested = False
        self._futures: list[Any] = []
        self._lock = threading.Lock()

    def __reduce__(self):
        return (RunStop, ())

    def track(self, future) -> None:
        with self._lock:
            self._futures.append(future)
            stopped = self.requested
        if stopped:
            future.cancel(reason="the run was cancelled", force=True)

    def cancel(self) -> int:
        """Cancel every Dask future of the run (and those it submits later); returns how
        many were still pending."""
        with self._lock:
            self.requested = True
            pending = [f for f in self._futures if not f.done()]
        for future in pending:
            future.cancel(reason="the run was cancelled", force=True)
        return len(pending)


class StoppableDaskTaskRunner(DaskTaskRunner):
    """A DaskTaskRunner on a scheduler's address whose futures a RunStop can cancel, and
    whose tasks are marked as one run's (a Dask span of their own, which the scheduler of
    a cluster the daemon did not start forgets once the run is over:
    ``service.runtime.forgetting``)."""

    def __init__(self, address: str, stop: RunStop):
        super().__init__(address=address)
        self.stop = stop
        self.span = run_span()

    def duplicate(self) -> "StoppableDaskTaskRunner":
        return type(self)(self.address, self.stop)  # the engine runs the flow on a duplicate

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        with dask.annotate(span=self.span):
            future = super().submit(task, parameters, wait_for, dependencies)
        self.stop.track(future.wrapped_future)
        return future


def execute(start: RunStart, request: RetrainRequest, scheduler_address: str,
            stop: RunStop | None = None, on_flow_run: Callable[[str], None] | None = None) -> FlowResult:
    """Run the flow for ``request`` as the flow run ``start`` names; never raises.
    ``on_flow_run`` is told the flow run's id once it is opened (in this thread)."""
    from prefect.context import SyncClientContext

    from flows.retrain import retrain

    stop = stop or RunStop()
    flow = retrain.with_options(task_runner=StoppableDaskTaskRunner(scheduler_address, stop))
    # One client (and its open connection) for opening the flow run, the engine and its end.
    try:
        with SyncClientContext.get_or_create(), without_flow_run_heartbeats():
            return _execute(flow, start, request, stop, on_flow_run, scheduler_address)
    except Exception as exc:  # the client could not be opened (the API went away just now)
        log.debug("%s", traceback.format_exc())
        if not api_answers():
            return api_lost(stop.flow_run_id, one_line(exc))
        return FlowResult(stop.flow_run_id, None, f"the flow did not run: {one_line(exc)}")


@contextmanager
def without_flow_run_heartbeats() -> Iterator[None]:
    """Prefect's flow-run heartbeat thread sleeps in one-second steps and the engine joins
    it when the run ends: up to a second added to every run, half a batch's fixed cost.
    This process watches its runs itself (a cancel is seen within a second, the daemon's
    own heartbeat is in `retrain status`, and runs an interrupted process left Running are
    marked Crashed at the next start), so the heartbeats are off unless an operator set
    them in Prefect's settings (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, a profile or
    prefect.toml), e.g. for a zombie-run automation."""
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        yield
        return

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _execute(flow, start: RunStart, request: RetrainRequest, stop: RunStop,
             on_flow_run: Callable[[str], None] | None, scheduler_address: str) -> FlowResult:
    from prefect import tags
    from prefect.flow_engine import run_flow

    try:
        flow_run = open_flow_run(start) if start.deployment is not None else None
        if flow_run is not None:
            stop.flow_run_id = str(flow_run.id)
            if on_flow_run is not None:
                on_flow_run(stop.flow_run_id)
            with stopped_when_cancelled(flow_run, stop, request.registry_dir):
                state = run_flow(flow, flow_run=flow_run, parameters={"request": request}, return_type="state")
        else:
            with tags(*start.tags):
                state = flow.with_options(flow_run_name=start.name)(request, return_state=True)
    except NotClaimed as exc:
        return FlowResult(start.flow_run_id, None, str(exc), started=False)
    except Exception as exc:  # the engine itself failed (API gone, ...)
        log.debug("%s", traceback.format_exc())  # the caller reports the one line
        if not api_answers():
            return api_lost(stop.flow_run_id, one_line(exc))
        return FlowResult(stop.flow_run_id, None, f"the flow did not run: {one_line(exc)}")
    result = result_of(state)
    if result.outcome is None and not result.cancelled and (failed_on_the_api(state) or not api_answers()):
        return api_lost(result.flow_run_id, result.error or "")
    close_flow_run(result)
    if result.outcome is None and not result.cancelled and scheduler_went_away(state):
        return FlowResult(result.flow_run_id, None, f"the Dask scheduler at {scheduler_address} went away "
                          f"({result.error})", started=False, scheduler_lost=True)
    fault = storage_fault(state)
    if fault is not None:
        return FlowResult(result.flow_run_id, None, fault, started=False)
    return result


# Failures of the home's storage, not of the files: the run is handed back without counting
# an attempt, and runs again once the disk has room (or is writable) again.
STORAGE_ERRNOS = {errno.ENOSPC: "the disk under the home is full", errno.EDQUOT: "the disk quota is used up",
                  errno.EROFS: "a folder of the home is read-only"}


def storage_fault(state) -> str | None:
    """The one line of a run that failed because the home could not be written, else None."""
    value = state.result(raise_on_failure=False) if state.is_failed() else None
    if not isinstance(value, OSError) or value.errno not in STORAGE_ERRNOS:
        return None
    where = f" ({value.filename})" if value.filename else ""
    return f"{STORAGE_ERRNOS[value.errno]}{where}: {value.strerror}"


def scheduler_went_away(state) -> bool:
    """Whether the flow failed because its Dask client lost the scheduler: Dask cancels every
    future of a client whose connection to the scheduler broke ("scheduler-connection-lost"),
    closes a client that could not reach it again in time, and a client opened while it is
    down times out connecting. None of it is the files' fault."""
    from distributed.client import ClosedClientError, FutureCancelledError, FuturesCancelledError
    from distributed.comm.core import CommClosedError

    lost = "scheduler-connection-lost"
    error = state.result(raise_on_failure=False) if state.is_failed() else None
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:  # the error and its causes
        seen.add(id(error))
        if (isinstance(error, FutureCancelledError) and error.reason == lost
                or isinstance(error, FuturesCancelledError) and any(g.reason == lost for g in error.error_groups)
                or isinstance(error, (CommClosedError, ClosedClientError))
                or isinstance(error, OSError) and str(error).startswith("Timed out trying to connect")):
            return True
        error = error.__cause__ or error.__context__
    return False


def failed_on_the_api(state) -> bool:
    """Whether the flow failed because the Prefect API could not be reached (it may answer
    again by now: the client's retries ended first)."""
    import httpx

    value = state.result(raise_on_failure=False) if state.is_failed() else None
    return isinstance(value, httpx.TransportError) or (
        isinstance(value, Exception) and str(value).startswith("Failed to reach API"))


def api_answers() -> bool:
    """Whether this process's Prefect API answers now (its /health)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    try:
        return httpx.get(f"{str(PREFECT_API_URL.value()).rstrip('/')}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def api_lost(flow_run_id: str | None, error: str) -> FlowResult:
    """A run that failed because the Prefect API went away is not the files' fault: it is
    handed back (``started=False``: no attempt counted) and runs again once the API answers."""
    return FlowResult(flow_run_id, None, f"the Prefect API did not answer ({error})", started=False)


@contextmanager
def stopped_when_cancelled(flow_run: "FlowRun", stop: RunStop, registry_dir: str) -> Iterator[None]:
    """While the block runs, stop the run as soon as Prefect marks its flow run Cancelling."""
    done = threading.Event()

    def watch() -> None:
        from prefect import get_client

        if done.wait(CANCEL_POLL_SECONDS):  # most runs of small batches end before the first look
            return
        with get_client(sync_client=True) as client:
            while True:
                try:
                    state = client.read_flow_run(flow_run.id).state
                except Exception as exc:  # the API hiccups: ask again in a second
                    log.debug("could not read the state of flow run %s: %s", flow_run.name, exc)
                    state = None
                if state is not None and (state.is_cancelling() or state.is_cancelled()):
                    ModelRegistry(registry_dir).release_lease()
                    log.warning("flow run %s was cancelled in Prefect: stopping it (%d task(s) cancelled)",
                                flow_run.name, stop.cancel())
                    return
                if done.wait(CANCEL_POLL_SECONDS):
                    return

    watcher = threading.Thread(target=watch, name=f"cancel-watch-{flow_run.name}", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(timeout=CANCEL_POLL_SECONDS * 5)  # a watcher stuck on a slow API is left behind


class NotClaimed(Exception):
    """Prefect refused to let the flow run start (its one line says why)."""


def open_flow_run(start: RunStart) -> "FlowRun":
    """The run's flow run, named and tagged, claimed: Pending takes the deployment's
    concurrency slot. Raises NotClaimed when Prefect refuses (the slot is taken: a new flow
    run is then deleted, one Prefect scheduled waits in AwaitingConcurrencySlot as Prefect
    does it; or the flow run was cancelled meanwhile)."""
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Pending

    assert start.deployment is not None
    with get_client(sync_client=True) as client:
        if start.flow_run_id is None:
            flow_run = client.create_flow_run_from_deployment(
                start.deployment.id, parameters=start.parameters, name=start.name, tags=start.tags)
        else:
            flow_run = client.read_flow_run(start.flow_run_id)
            flow_run.name, flow_run.tags = start.name, [*flow_run.tags, *start.tags]
            client.update_flow_run(flow_run.id, name=flow_run.name, tags=flow_run.tags)
        claimed = client.set_flow_run_state(flow_run.id, Pending())
        if claimed.state is None or claimed.state.type != StateType.PENDING:
            if start.flow_run_id is None:
                client.delete_flow_run(flow_run.id)
            why = getattr(claimed.details, "reason", None) or (claimed.state.name if claimed.state else "refused")
            raise NotClaimed(f"Prefect did not let flow run {flow_run.name} start: {why}")
        flow_run.state = claimed.state  # Pending, with the slot's lease: what the engine starts from
        return flow_run


def close_flow_run(result: FlowResult) -> None:
    """Tag the flow run with how it ended (its decision, ``failed`` or ``cancelled``), so
    the runs list tells runs apart; a cancelled run still Cancelling (its flow's own end
    came after the cancel) ends Cancelled. Best effort: the ledger is the record."""
    from prefect import get_client
    from prefect.states import Cancelled

    if result.flow_run_id is None:
        return
    tag = result.outcome.decision.replace("_", "-") if result.outcome else "cancelled" if result.cancelled else "failed"
    try:
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(result.flow_run_id)
            client.update_flow_run(flow_run.id, tags=[*flow_run.tags, tag])
            if result.cancelled and flow_run.state is not None and flow_run.state.is_cancelling():
                client.set_flow_run_state(flow_run.id, Cancelled(message="cancelled by an operator"))
    except Exception as exc:
        log.warning("could not tag flow run %s as %s: %s", result.flow_run_id, tag, one_line(exc))


def result_of(state) -> FlowResult:
    flow_run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    if state.is_cancelled() or state.is_cancelling():
        return FlowResult(flow_run_id, None, state.message or "cancelled", cancelled=True)
    value = state.result(raise_on_failure=False)
    if isinstance(value, RunOutcome):  # Completed, or Failed "DeployFailed": the flow decided
        return FlowResult(flow_run_id, value)
    error = one_line(value) if isinstance(value, BaseException) else (state.message or state.name)
    return FlowResult(flow_run_id, None, f"flow run {state.name.lower()}: {error}")
