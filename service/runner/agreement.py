"""The registry and the ledger tell one story: a version is ``current`` only when the run
that made it recorded it deployed (or an operator rolled back to it).

A deploy switches ``current`` on disk first and the run is recorded in the ledger after;
whatever fails in between (the Prefect API, the task's result, a kill of the daemon)
could leave a version live that the ledger calls failed or interrupted, and whose files go
back to the queue to be trained again. ``mend_current`` finds that case and puts
``current`` back where the ledger says it is: the version of the newest recorded deploy or
operator rollback, or none. It runs at start-up (after a crash) and after every run is
recorded (after a fault the flow could not undo itself).

A ``current`` that no run of this ledger made (set by hand, or by another tool) is left
alone: the ledger has nothing to say about it.
"""

from __future__ import annotations

import logging

from core.errors import ModelNotFoundError
from flows.models.registry import ModelRegistry
from service.intake.ledger import Ledger, RunRecord

log = logging.getLogger("retrain.agreement")

ROLLBACK_EVENT = "rollback"  # the ledger's event of a switch back (operator, cancel, this repair)


def mend_current(ledger: Ledger, registry: ModelRegistry, by: str) -> str | None:
    """Make ``current`` agree with the ledger; returns the version taken off ``current``
    (None when they agreed). ``by`` names the moment, for the event and the log line."""
    current = registry.current_version()
    if current is None:
        return None
    try:
        record = registry.get(current)
    except ModelNotFoundError:
        return None
    run = ledger.run_of_flow_run(record.flow_run_id) if record.flow_run_id else None
    if run is None or run.state == "running" or _recorded_current(ledger, run, current):
        return None
    target = recorded_current(ledger, other_than=current)
    if target is not None and not (registry.root / target).is_dir():
        target = None  # removed since: no version rather than an unrecorded one
    if target is None:
        registry.unset_current()
    else:
        registry.promote(target)
    reason = (f"its run {run.id} ended {run.state} without recording the deploy; current was put back to "
              f"{target or 'no version'}")
    registry.update(current, decision="deploy_failed", reason=reason)
    ledger.record_event(ROLLBACK_EVENT, {"from": current, "to": target, "by": by})
    log.warning("%s: current was %s, which run %d switched to but did not record deployed (it %s); "
                "current is now %s, as the ledger says", by, current, run.id, run.state, target or "unset")
    return current


def _recorded_current(ledger: Ledger, run: RunRecord, version: str) -> bool:
    """Whether the ledger says ``version`` may be current: its run recorded it deployed, or
    the latest switch an operator (or a repair) recorded went to it."""
    if run.state == "completed" and run.decision == "deployed" and run.model_version == version:
        return True
    return recorded_current(ledger) == version


def recorded_current(ledger: Ledger, other_than: str | None = None) -> str | None:
    """The version the ledger says is current: that of the newest recorded deploy or
    rollback (skipping ``other_than``), or None."""
    deployed = ledger.last_deployed_run(other_than=other_than)
    rollbacks = [e for e in ledger.events(ROLLBACK_EVENT, limit=20) if other_than is None or e.get("to") != other_than]
    rollback = rollbacks[0] if rollbacks else None
    if rollback is not None and (deployed is None or rollback["at"] > (deployed.finished_at or 0)):
        return rollback.get("to")
    return deployed.model_version if deployed is not None else None
