"""Model versions exported to MLflow, optional (``[mlflow] tracking_uri``).

What MLflow gets, for every version the gate deployed (and, with ``log_candidates``, every
candidate it refused):

- an MLflow run (experiment ``[mlflow] experiment``, named after the version) with the
  version's metrics on the holdout (and the champion's as ``champion_<metric>``), the gate's
  comparison (difference and interval as metrics, the whole evaluation as
  ``gate/evaluation.json``), its parameters (estimator and its parameters, the gate's
  settings, training rows) and its data files as dataset inputs (name, sha256, rows);
- a version of the registered model ``[mlflow] model_name``: the pyfunc of
  ``service.integrations.mlflow_pyfunc`` (the model file itself, sha256-checked on load),
  tagged ``retrain_version``;
- the alias ``champion`` on the version that is retrain's ``current``, moved whenever
  ``current`` moves (deployments, rollbacks, a cancelled run's undo) and removed when
  nothing is current.

retrain's registry stays the registry of record: the export runs on a thread of its own
after the change is recorded, so MLflow being slow or down never holds up a run or a
deployment. What was exported, and the last failure, are kept in
``state/mlflow-export.json``; what is missing is worked out from the registry at each
attempt, so a failed export is simply done at the next one (after ``retry_seconds``,
doubling, while the process lives, and after the next run or rollback in any case).
Exporting is idempotent: a model version already tagged with the retrain version is adopted,
not made twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.errors import RetrainError
from core.files import write_atomically
from core.records import ModelVersion
from flows.models.registry import ModelRegistry
from service.config import MlflowSpec, Settings
from service.intake.home import Home
from service.intake.lock import HomeLock

log = logging.getLogger("retrain.mlflow")
CHAMPION = "champion"
VERSION_TAG = "retrain_version"
PYFUNC_CODE = Path(__file__).with_name("mlflow_pyfunc.py")
ROOT = Path(__file__).resolve().parents[2]
# retrain's own code that the pyfunc runs, copied into every exported model.
CODE_PATHS = [str(ROOT / "core"), str(ROOT / "flows")]
MAX_RETRY_SECONDS = 600.0
EXPORTED_DECISIONS = {"deployed"}
CANDIDATE_DECISIONS = {"deployed", "rejected", "deploy_failed"}


@dataclass
class ExportState:
    """What ``state/mlflow-export.json`` records."""

    # retrain version -> {"run_id", "model_version", "exported_at"}
    exported: dict[str, dict[str, str]] = field(default_factory=dict)
    champion: str | None = None  # the retrain version the alias points at
    last_success: str | None = None
    last_error: str | None = None
    failed_attempts: int = 0  # since the last success

    @classmethod
    def read(cls, path: Path) -> ExportState:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return cls()
        except (ValueError, TypeError):
            log.warning("%s is unreadable; exports are looked up in MLflow again", path)
            return cls()

    def write(self, path: Path) -> None:
        write_atomically(path, json.dumps(asdict(self), indent=2))


def state_path(settings: Settings) -> Path:
    return Home(settings.home).mlflow_export_state


def export_status(settings: Settings) -> dict[str, Any] | None:
    """What ``retrain status`` shows of the export (None when it is off)."""
    spec = settings.mlflow
    if not spec.tracking_uri:
        return None
    state = ExportState.read(state_path(settings))
    registry = ModelRegistry(Home(settings.home).registry)
    current = registry.current_version()
    pending = [v.version for v in wanted(spec, registry.versions(), current) if v.version not in state.exported]
    return {"tracking_uri": spec.tracking_uri, "model_name": spec.model_name, "champion": state.champion,
            "exported": len(state.exported), "pending": pending, "alias_behind": state.champion != current,
            "last_success": state.last_success, "last_error": state.last_error,
            "failed_attempts": state.failed_attempts}


# -- what to export ------------------------------------------------------------------------------

def wanted(spec: MlflowSpec, versions: list[ModelVersion], current: str | None) -> list[ModelVersion]:
    """Versions MLflow should hold, oldest first: every deployed one (and every candidate)."""
    decisions = CANDIDATE_DECISIONS if spec.log_candidates else EXPORTED_DECISIONS
    return [v for v in versions if v.decision in decisions or v.version == current]


def sync(settings: Settings) -> ExportState:
    """Export what MLflow lacks and point ``champion`` at ``current``. Raises RetrainError
    when MLflow cannot be reached or refuses; what was done before stays recorded."""
    home = Home(settings.home)
    path = state_path(settings)
    registry = ModelRegistry(home.registry)
    with HomeLock(home.mlflow_export_state.with_suffix(".lock"), "the MLflow export"):
        state = ExportState.read(path)
        try:
            client = _client(settings.mlflow)
            current = registry.current_version()
            for record in wanted(settings.mlflow, registry.versions(), current):
                if record.version not in state.exported:
                    state.exported[record.version] = export_version(settings, registry, record, client)
                    state.write(path)
            _move_champion(client, settings.mlflow, state, current)
        except RetrainError as exc:
            state.last_error, state.failed_attempts = str(exc), state.failed_attempts + 1
            state.write(path)
            raise
        state.last_success, state.last_error, state.failed_attempts = _now(), None, 0
        state.write(path)
        return state


def _move_champion(client: Any, spec: MlflowSpec, state: ExportState, current: str | None) -> None:
    try:
        if current is not None:
            client.set_registered_model_alias(spec.model_name, CHAMPION, state.exported[current]["model_version"])
        elif state.champion is not None:
            client.delete_registered_model_alias(spec.model_name, CHAMPION)
    except Exception as exc:  # noqa: BLE001 - whatever MLflow raises, the export is retried
        raise _unavailable(spec, exc) from None
    if state.champion != current:
        log.info("MLflow: %s@%s is now %s", spec.model_name, CHAMPION, current or "unset")
    state.champion = current


# -- one version ---------------------------------------------------------------------------------

def export_version(settings: Settings, registry: ModelRegistry, record: ModelVersion, client: Any) -> dict[str, str]:
    """An MLflow run and a registered model version for ``record`` (adopted when one
    tagged with it exists already)."""
    import mlflow

    spec = settings.mlflow
    try:
        existing = client.search_model_versions(f"name = '{spec.model_name}' and tags.{VERSION_TAG} = '{record.version}'")
        if existing:
            found = max(existing, key=lambda v: int(v.version))
            return {"run_id": found.run_id or "", "model_version": str(found.version), "exported_at": _now()}
        experiment = client.get_experiment_by_name(spec.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            spec.experiment, artifact_location=_artifact_location(settings))
        with mlflow.start_run(experiment_id=experiment_id, run_name=record.version, tags=_tags(settings, record)) as run:
            mlflow.log_params(_params(record))
            mlflow.log_metrics(_metrics(record))
            mlflow.log_dict(record.lineage.get("evaluation") or {}, "gate/evaluation.json")
            for dataset in _datasets(settings, record):
                mlflow.log_input(dataset, context="training")
            info = _log_model(settings, registry, record)
        model_version = str(info.registered_model_version)
        client.set_model_version_tag(spec.model_name, model_version, VERSION_TAG, record.version)
        client.set_model_version_tag(spec.model_name, model_version, "decision", record.decision)
    except Exception as exc:  # noqa: BLE001 - whatever MLflow raises, the export is retried
        raise _unavailable(spec, exc) from None
    log.info("MLflow: %s exported as run %s, %s version %s", record.version, run.info.run_id,
             spec.model_name, model_version)
    return {"run_id": run.info.run_id, "model_version": model_version, "exported_at": _now()}


def _artifact_location(settings: Settings) -> str | None:
    """A database or folder store keeps artifacts under ./mlruns of whatever folder the
    process started in: under the home instead. A tracking server decides for itself."""
    if settings.mlflow.tracking_uri.startswith(("http:", "https:", "databricks")):
        return None
    return Home(settings.home).mlflow_artifacts.resolve().as_uri()


def _log_model(settings: Settings, registry: ModelRegistry, record: ModelVersion) -> Any:
    import mlflow

    described = {"version": record.version, "model_sha256": record.model_sha256,
                 "schema": record.lineage.get("schema"), "trusted_types": settings.model.trusted_types}
    with tempfile.TemporaryDirectory(prefix="retrain-mlflow-") as folder:
        version_json = Path(folder) / "version.json"
        version_json.write_text(json.dumps(described))
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_CODE), code_paths=CODE_PATHS,
            artifacts={"model": registry.model_file(record.version).path, "version": str(version_json)},
            pip_requirements=_requirements(record), registered_model_name=settings.mlflow.model_name,
            await_registration_for=60)


def _requirements(record: ModelVersion) -> list[str]:
    """The libraries the model was trained with (pinned), for an environment that serves it."""
    libraries = record.lineage.get("libraries") or {}
    names = ["scikit-learn", "skops", "pandas", "numpy"] + (["xgboost"] if record.model_file.endswith(".ubj") else [])
    pinned = [f"{n}=={libraries[n]}" if n in libraries else n for n in names]
    return [*pinned, "pydantic>=2.11"]


def _tags(settings: Settings, record: ModelVersion) -> dict[str, str]:
    return {VERSION_TAG: record.version, "decision": record.decision, "reason": record.reason[:5000],
            "home": str(Path(settings.home).resolve()), "prefect_flow_run_id": record.flow_run_id or "",
            "mlflow.note.content": record.reason[:5000]}


def _params(record: ModelVersion) -> dict[str, str]:
    training = record.lineage.get("training") or {}
    evaluation = record.lineage.get("evaluation") or {}
    params = {"estimator": training.get("estimator"), "train_rows": training.get("train_rows"),
              "features": ",".join(training.get("features") or []),
              "metric": evaluation.get("metric"), "threshold": evaluation.get("threshold"),
              "tolerance": evaluation.get("tolerance"), "holdout_rows": evaluation.get("holdout_rows"),
              "champion_version": evaluation.get("champion_version"),
              "files": len(record.lineage.get("files") or [])}
    params.update({f"model.{k}": v for k, v in (training.get("params") or {}).items()})
    return {k: str(v)[:6000] for k, v in params.items() if v is not None}


def _metrics(record: ModelVersion) -> dict[str, float]:
    metrics = {k: float(v) for k, v in record.metrics.items()}
    metrics.update({f"champion_{k}": float(v) for k, v in (record.champion_metrics or {}).items()})
    comparison = (record.lineage.get("evaluation") or {}).get("comparison") or {}
    for key in ("difference", "low", "high", "confidence"):
        if comparison.get(key) is not None:
            metrics[f"gate_{key}"] = float(comparison[key])
    return {k: v for k, v in metrics.items() if not math.isnan(v)}  # MLflow stores no NaN


def _datasets(settings: Settings, record: ModelVersion) -> list[Any]:
    """The version's data files as MLflow datasets: their sha256 as digest, their place in
    the home as source (metadata only: the rows stay where they are)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from service.intake.ledger import Ledger

    files = record.lineage.get("files") or []
    paths: dict[int, str] = {}
    home = Home(settings.home)
    if files and home.ledger_path.exists():
        with Ledger(home.ledger_path, readonly=True) as ledger:
            for entry in files:
                try:
                    paths[entry["file_id"]] = str(ledger.get(entry["file_id"]).path)
                except KeyError:
                    log.debug("file %s is not in the ledger; named by its archive name", entry["file_id"])
    datasets = []
    for entry in files:
        where = Path(paths.get(entry["file_id"], home.archive / entry["name"])).resolve()
        datasets.append(MetaDataset(resolve_dataset_source(where.as_uri()), name=entry["name"],
                                    digest=(entry.get("sha256") or "")[:36] or None))
    return datasets


# -- the connection ------------------------------------------------------------------------------

def _client(spec: MlflowSpec) -> Any:
    try:
        import mlflow
        from mlflow import MlflowClient
    except ImportError:
        raise RetrainError("[mlflow] tracking_uri is set but MLflow is not installed; "
                           "pip install 'retrain[mlflow]' or unset it") from None
    # MLflow's HTTP client retries 7 times over minutes by default: one bounded try here,
    # the retries are ours.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, spec.request_timeout_seconds)))
    mlflow.set_tracking_uri(spec.tracking_uri)
    mlflow.set_registry_uri(spec.registry_uri or spec.tracking_uri)
    return MlflowClient(tracking_uri=spec.tracking_uri, registry_uri=spec.registry_uri or spec.tracking_uri)


def _unavailable(spec: MlflowSpec, exc: BaseException) -> RetrainError:
    detail = " ".join(str(exc).split())[:300] or type(exc).__name__
    return RetrainError(f"MLflow at {spec.tracking_uri} did not take the export ({type(exc).__name__}: {detail}); "
                        "it is retried")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- in the background ----------------------------------------------------------------------------

class _Exporter:
    """The process's export thread: syncs when asked, retries a failure after a delay
    (doubling) and stops retrying when the program's main thread has ended."""

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._settings: Settings | None = None

    def request(self, settings: Settings) -> threading.Thread:
        with self._lock:
            self._settings = settings
            self._wake.set()
            if self._thread is None or not self._thread.is_alive():
                # Not a daemon thread: a short command (`retrain models rollback`) finishes its
                # attempt before it exits; retries stop with the main thread.
                self._thread = threading.Thread(target=self._run, name="mlflow-export")
                self._thread.start()
            return self._thread

    def _run(self) -> None:
        delay = None
        while True:
            self._wake.clear()
            settings = self._settings
            assert settings is not None
            try:
                sync(settings)
                delay = None
            except RetrainError as exc:
                delay = min(MAX_RETRY_SECONDS, delay * 2 if delay else settings.mlflow.retry_seconds)
                log.warning("%s in %.0f s (deploying is not affected)", exc, delay)
            if delay is None and not self._wake.is_set():
                return
            if not self._sleep(delay or 0):
                return

    def _sleep(self, seconds: float) -> bool:
        """Wait for a new request or ``seconds``; False once the program is ending."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._wake.is_set():
            if not threading.main_thread().is_alive():
                return False
            self._wake.wait(0.2)
        return threading.main_thread().is_alive() or self._wake.is_set()


_EXPORTER = _Exporter()


def export_to_mlflow(settings: Settings) -> threading.Thread | None:
    """After a run is recorded or ``current`` moved: bring MLflow up to date in the
    background (nothing when ``[mlflow] tracking_uri`` is unset). Returns the export thread."""
    if not settings.mlflow.tracking_uri:
        return None
    return _EXPORTER.request(settings)
