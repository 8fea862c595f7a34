"""The home folder's layout: the one place that knows where anything of a home lives.

    inbox/  score/  labels/                                 where files come in: training files,
                                                            rows to score, late labels
    processing/  archive/  quarantine/  duplicates/         files, by state (service.intake.inbox)
    predictions/                                            each scored file's predictions
    prediction-log/                                         every scored row and late label (flows.production.predlog)
    registry/                                               model versions and `current`
    cache/                                                  preprocessed partitions, kept outputs
    state/ledger.sqlite                                     the record of every file and run
    state/daemon.lock  state/daemon.json                    who holds the home; its heartbeat
    state/requests/                                         runs asked of the daemon
    state/prefect/                                          the embedded Prefect API's home
    state/mlflow-export.json  state/mlflow-artifacts/       what was exported to MLflow; a local store's artifacts
    report.png                                              `retrain report`'s default output
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def inbox(self) -> Path: return self.root / "inbox"
    @property
    def score(self) -> Path: return self.root / "score"
    @property
    def labels(self) -> Path: return self.root / "labels"
    @property
    def predictions(self) -> Path: return self.root / "predictions"
    @property
    def prediction_log(self) -> Path: return self.root / "prediction-log"
    @property
    def processing(self) -> Path: return self.root / "processing"
    @property
    def archive(self) -> Path: return self.root / "archive"
    @property
    def quarantine(self) -> Path: return self.root / "quarantine"
    @property
    def duplicates(self) -> Path: return self.root / "duplicates"
    @property
    def registry(self) -> Path: return self.root / "registry"
    @property
    def cache(self) -> Path: return self.root / "cache"
    @property
    def state(self) -> Path: return self.root / "state"
    @property
    def ledger_path(self) -> Path: return self.state / "ledger.sqlite"
    @property
    def lock_path(self) -> Path: return self.state / "daemon.lock"
    @property
    def heartbeat_path(self) -> Path: return self.state / "daemon.json"
    @property
    def requests(self) -> Path: return self.state / "requests"
    @property
    def prefect_home(self) -> Path: return self.state / "prefect"
    @property
    def mlflow_export_state(self) -> Path: return self.state / "mlflow-export.json"
    @property
    def mlflow_artifacts(self) -> Path: return self.state / "mlflow-artifacts"
    @property
    def report_path(self) -> Path: return self.root / "report.png"

    @property
    def intake(self) -> dict[str, Path]:
        """The folders files come in through, by the kind of file each takes."""
        return {"train": self.inbox, "score": self.score, "labels": self.labels}

    def exists(self) -> bool:
        """Whether a retrain process ever set this home up (its state folder is there)."""
        return self.state.is_dir()

    def ensure(self) -> "Home":
        """Create every folder (parents included); returns self."""
        for folder in (self.inbox, self.score, self.labels, self.processing, self.archive, self.quarantine,
                       self.duplicates, self.predictions, self.prediction_log, self.registry, self.cache, self.state):
            folder.mkdir(parents=True, exist_ok=True)
        return self
