"""The service's side of the production loop: the request of a scoring or labels run, what
the ledger keeps of its outcome, the champion's production metric for the policy, and the
rows of late labels taken in as a training file (the loop closes).

A labels run writes the scored rows that got their labels as one CSV (features as they were
scored, the label as the target) under the cache; here it is put into the inbox and claimed
at once, like any training file, with the names of the scoring and labels files it came
from recorded as its origin: the lineage of a version trained on it names them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from core.records import LabelsReport, ProductionMetric, RetrainRequest, RunOutcome
from service.intake.home import Home
from service.intake.inbox import drop_into_inbox
from service.intake.ledger import FileState, Ledger
from service.status import production_metrics

log = logging.getLogger("retrain.production")


def production_request(request: RetrainRequest, home: Home, kind: str, backfill: bool = False) -> RetrainRequest:
    """A scoring or labels run's request (its new files alone: no training window): where
    its predictions and the prediction log are."""
    return request.model_copy(update={
        "kind": kind, "backfill": backfill,
        "predictions_dir": str(home.predictions.resolve()),
        "prediction_log_dir": str(home.prediction_log.resolve())})


def production_details(outcome: RunOutcome) -> dict[str, Any]:
    """What the ledger keeps of a scoring or labels run, beside what every run keeps."""
    details: dict[str, Any] = {}
    if outcome.predictions:
        details["predictions"] = {str(fid): path for fid, path in outcome.predictions.items()}
    if outcome.estimated:
        details["estimated"] = outcome.estimated
    if outcome.production:
        details["production"] = [m.model_dump() for m in outcome.production]
    if outcome.labels is not None:
        details["labels"] = outcome.labels.model_dump(exclude={"training_file"})
    return details


def production_of(ledger: Ledger, version: str) -> ProductionMetric | None:
    return next((m for m in production_metrics(ledger) if m.version == version), None)


def take_labelled_rows(runner, labels: LabelsReport) -> list[int]:
    """The joined rows of a labels run into the inbox, claimed as a training file with its
    origin, through ``runner`` (the run's ``service.runner.runs.Runner``); returns the id of the file queued (none when it was a duplicate or refused)."""
    if not labels.training_file or not Path(labels.training_file).exists():
        return []
    made = Path(labels.training_file)
    record = runner.claim(drop_into_inbox(made, runner.home.inbox), time.time())
    made.unlink(missing_ok=True)
    if record is None:
        return []
    runner.ledger.set_origin(record.id, labels.origin)
    log.info("the rows of late labels are a training file: '%s' (file %d), from %s", record.name, record.id,
             ", ".join(labels.origin))
    return [record.id] if record.state == FileState.QUEUED else []
