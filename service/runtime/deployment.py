"""The daemon's Prefect deployment: every run the daemon makes is a flow run of it.

At start the daemon registers (or updates) the deployment ``retrain/<home folder name>``
of the ``retrain`` flow, with a concurrency limit of one and, when ``[policy] schedule`` is
set, that cron schedule. It has no work pool and no worker: the daemon executes its flow
runs itself, in its own process on its warm Dask cluster. Its runs come from:

- the daemon, for each batch of new files (created and executed at once);
- Prefect: the UI's Run button, ``prefect deployment run``, the API, an automation: a
  retraining on the current window, with the parameters below;
- the deployment's schedule (a nightly retrain, beside the file triggers).

An operator pauses the deployment (UI, ``prefect deployment pause``, ``retrain pause``):
the daemon keeps taking files into its queue and starts no run until it is resumed. A
re-registration keeps whatever paused state an operator set.

What the daemon does with each run (ledger, files, cancel) is the daemon's business; this
module only speaks to Prefect. Prefect is imported lazily: ``retrain status`` must not.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

from pydantic import Field, ValidationError, validate_call

from core.errors import RetrainError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun, StateType

    from service.config import Settings

log = logging.getLogger("retrain.deployment")

FLOW_NAME = "retrain"


@validate_call
def operator_parameters(reason: str = "an operator in Prefect",
                        last_files: Annotated[int, Field(ge=0)] | None = None) -> dict[str, Any]:
    """A retraining on the current window, as the UI's Run button starts it.

    Args:
        reason: why this run is wanted; recorded with the run and shown in its summary
        last_files: the training window: 0 = every file so far, N = the newest N files;
            empty = the daemon's window.last_files
    """
    return {"reason": reason, "last_files": last_files}


def run_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """A flow run's parameters, checked and completed with their defaults; raises
    RetrainError with one line when they do not fit (the API checks them too)."""
    try:
        return operator_parameters(**parameters)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise RetrainError(f"parameter {'.'.join(map(str, error['loc']))!s}: {error['msg']}") from None


def deployment_name(home: Path) -> str:
    """The deployment's name (without the flow's): the home folder's name."""
    return Path(home).resolve().name


@dataclass(frozen=True)
class DeploymentRef:
    id: UUID
    name: str  # "retrain/<home name>", as `prefect deployment run` takes it


def register_deployment(settings: "Settings", home: Path) -> DeploymentRef:
    """Create or update the daemon's deployment; keeps the paused state an operator set."""
    from prefect import get_client
    from prefect.utilities.callables import parameter_schema

    from flows.retrain import retrain

    name = deployment_name(home)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(retrain)
        deployment_id = client.create_deployment(
            flow_id, name,
            description=(f"Run by the retrain daemon of {Path(home).resolve()} on {socket.gethostname()}, "
                         "in its own process (no work pool): a batch of new files per run; the Run "
                         "button retrains on the current window."),
            tags=["retrain"],
            entrypoint="flows/retrain.py:retrain",
            concurrency_limit=1,
            schedules=_schedules(settings),
            parameter_openapi_schema=parameter_schema(operator_parameters).model_dump_for_openapi(),
            enforce_parameter_schema=True,
            paused=None,  # an operator's pause survives a restart
        )
    ref = DeploymentRef(deployment_id, f"{FLOW_NAME}/{name}")
    log.info("Prefect deployment %s registered%s", ref.name, _schedule_note(settings))
    return ref


def _schedules(settings: "Settings") -> list:
    from prefect.deployments.schedules import create_deployment_schedule_create
    from prefect.schedules import Cron

    policy = settings.policy
    if not policy.schedule:
        return []
    reason = f"the schedule {policy.schedule} ({policy.timezone})"
    return [create_deployment_schedule_create(
        Cron(policy.schedule, timezone=policy.timezone, parameters={"reason": reason}))]


def _schedule_note(settings: "Settings") -> str:
    policy = settings.policy
    return f", scheduled {policy.schedule} ({policy.timezone})" if policy.schedule else ""


class DeploymentControl:
    """What the daemon's main loop asks Prefect about its deployment, once a second: paused?
    runs due? the state of the run in progress? One client for the daemon's life."""

    def __init__(self, ref: DeploymentRef):
        from prefect import get_client

        self.ref = ref
        self._client = get_client(sync_client=True)
        self._client.__enter__()

    def close(self) -> None:
        self._client.__exit__(None, None, None)

    def paused(self) -> bool:
        return bool(self._client.read_deployment(self.ref.id).paused)

    def due_runs(self, limit: int = 5) -> list["FlowRun"]:
        """Flow runs of the deployment waiting to run (Run button, API, schedule), oldest
        first: Scheduled (Late included) and due now."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterDeploymentId,
            FlowRunFilterExpectedStartTime,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort
        from prefect.types._datetime import now

        return self._client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[self.ref.id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=now("UTC"))),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=limit)

    def state_type(self, flow_run_id: str) -> "StateType | None":
        run = self._client.read_flow_run(UUID(flow_run_id))
        return run.state.type if run.state is not None else None

    def fail(self, flow_run_id: str, message: str) -> None:
        """End a flow run the daemon will not run (its parameters do not fit)."""
        from prefect.states import Failed

        self._client.set_flow_run_state(UUID(flow_run_id), Failed(message=message), force=True)


def set_paused(name: str, paused: bool) -> bool:
    """Pause or resume the deployment ``retrain/<name>`` through the API in the
    environment; returns whether it was paused before."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise RetrainError(f"no deployment {name} in this Prefect API; start `retrain watch` "
                               "once to register it") from None
        (client.pause_deployment if paused else client.resume_deployment)(deployment.id)
        return bool(deployment.paused)
