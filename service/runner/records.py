"""Plain records of a run in flight, shared by the runner and the flow-run executor;
nothing heavy is imported here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.records import RunOutcome

if TYPE_CHECKING:
    from service.runtime.deployment import DeploymentRef


@dataclass(frozen=True)
class RunStart:
    """Which flow run a run is: a new one of the deployment (a batch of files), one Prefect
    already holds (the Run button, the API, the schedule: ``flow_run_id``), or, with no
    deployment, a flow run of its own (the flow called directly)."""

    deployment: DeploymentRef | None
    name: str  # "run-12-3-files": the run's ledger number and what it works on
    tags: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)  # the deployment's parameters
    flow_run_id: str | None = None


@dataclass
class FlowResult:
    flow_run_id: str | None
    outcome: RunOutcome | None  # None when the flow did not complete
    error: str | None = None  # one line, when it did not
    cancelled: bool = False  # Prefect asked to cancel it, and it stopped
    started: bool = True  # False: handed back, no attempt counted (not let start, the API or the disk failed it)
    scheduler_lost: bool = False  # handed back because the Dask scheduler went away under it
