"""XGBoost across the Dask cluster: ``[model] estimator = "xgboost"``.

Training never gathers the window into one process. Each worker reads its share of the
window's cached parquet partitions, one partition at a time, into an XGBoost
``QuantileDMatrix`` (a byte per value once quantised), and the workers train one model
together over XGBoost's collective (a ``RabitTracker`` in the training task, a
``CommunicatorContext`` on each worker), as ``xgboost.dask`` does; unlike
``xgboost.dask``'s ``DaskDMatrix``, which keeps every partition of the window in worker
memory while it trains, a worker holds one raw partition at a time. Categorical columns are
pandas categoricals with the categories of the whole window (counted on the workers), so the
codes are the same in every partition and at prediction time.

The model file is XGBoost's own UBJSON (``model.ubj``): the booster, and in its attributes
what ``XGBModel`` needs to prepare feature rows (columns, categories, classes). Loading it
runs no code.

What changes results: the data, the config, the number of workers that train (the window's
partitions are dealt to them in order, and each computes its own quantile sketch), the
partitioning (``preprocess.rows_per_partition``), and ``model.threads``.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import ConfigError, TrainingError
from core.files import sha256_bytes, write_atomically
from core.records import ResolvedSchema, TrainResult
from core.specs import ModelSpec
from flows.data.window import Window, cluster_client, is_validation, load_partitions
from flows.models.xgbmodel import XGBModel

MODEL_SUFFIX = ".ubj"


_BOOST_ROUNDS = "num_boost_round"  # a parameter of ours among XGBoost's, 100 by default


# -- training -------------------------------------------------------------------------------

def xgboost_params(spec: ModelSpec, task: str, n_classes: int, threads: int) -> tuple[dict[str, Any], int]:
    """(XGBoost's parameters, boosting rounds): the user's, over the objective of the task,
    and the settings that make a run reproducible (seed, hist, threads)."""
    params = dict(spec.params)
    rounds = params.pop(_BOOST_ROUNDS, 100)
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"model.params.{_BOOST_ROUNDS} = {rounds!r}: expected a whole number >= 1")
    if task == "regression":
        objective: dict[str, Any] = {"objective": "reg:squarederror"}
    elif n_classes == 2:
        objective = {"objective": "binary:logistic"}
    else:
        objective = {"objective": "multi:softprob", "num_class": n_classes}
    fixed = {"tree_method": "hist", "seed": spec.random_state, "nthread": threads}
    return {**objective, **params, **fixed}, rounds


def profile_partition(path: str, schema: ResolvedSchema, validate: bool, fraction: float) -> dict[str, Any]:
    """What training needs to know of one partition before reading it for good: its
    training rows, the counts of each category, the classes of the target. Run on a worker;
    only the categorical columns and the target are read."""
    frame = training_part(path, schema, validate, fraction)
    counts = {c: {str(k): int(v) for k, v in frame[c].value_counts().items() if v} for c in schema.categorical}
    classes = sorted(frame[schema.target].unique().tolist()) if schema.task == "classification" else []
    return {"rows": len(frame), "counts": counts, "classes": classes}


def training_part(path: str, schema: ResolvedSchema, validate: bool, fraction: float) -> pd.DataFrame:
    """The training rows of one partition (without the validation split when ``validate``)."""
    columns = [*schema.features, schema.target]
    frame = load_partitions([path], columns, holdout=False)
    if validate:
        frame = frame[~is_validation(frame, columns, fraction)]
    return frame


def window_layout(client, window: Window, validate: bool, fraction: float) -> tuple[dict[str, Any], list[int]]:
    """(the feature layout of the window: categories and classes, counted on the workers;
    the training rows of each partition)."""
    schema = window.schema
    futures = client.map(profile_partition, window.parquet_paths, schema=schema, validate=validate,
                         fraction=fraction, pure=False)
    profiles = client.gather(futures)
    categories = {}
    for column in schema.categorical:
        values = set().union(*(p["counts"][column] for p in profiles))
        categories[column] = sorted(values)
    classes = sorted(set().union(*(p["classes"] for p in profiles))) if schema.task == "classification" else None
    if classes is not None and len(classes) < 2:
        shown = repr(classes[0]) if classes else "none"
        raise TrainingError(f"only one class ({shown}) in the training window; add data with at least two classes")
    layout = {"task": schema.task, "numeric": schema.numeric, "categorical": schema.categorical,
              "categories": categories, "classes": classes}
    return layout, [p["rows"] for p in profiles]


def deal_partitions(paths: list[str], rows: list[int], workers: int) -> list[list[str]]:
    """Partitions with training rows dealt to ``workers`` ranks in window order, each to the
    rank with the fewest rows so far: deterministic for a given partitioning and worker count."""
    shares: list[list[str]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for path, count in zip(paths, rows):
        if count:
            rank = loads.index(min(loads))
            shares[rank].append(path)
            loads[rank] += count
    return [share for share in shares if share]


def train_on_worker(paths: list[str], rank: int, tracker_args: dict[str, Any], params: dict[str, Any],
                    rounds: int, layout: dict[str, Any], schema: ResolvedSchema, validate: bool,
                    fraction: float) -> bytes | None:
    """One worker's part of training (a Dask task pinned to that worker): its partitions
    streamed into a QuantileDMatrix, then boosting in step with the other workers. Rank 0
    returns the model (every rank holds the same one)."""
    import xgboost
    from xgboost import collective

    with collective.CommunicatorContext(**tracker_args, dmlc_task_id=f"{rank:05d}"):
        rows = PartitionIter(paths, layout, schema, validate, fraction)
        dtrain = xgboost.QuantileDMatrix(rows, enable_categorical=True, max_bin=params.get("max_bin", 256),
                                         nthread=params["nthread"])
        booster = xgboost.train(params, dtrain, num_boost_round=rounds, verbose_eval=False)
    return bytes(booster.save_raw(raw_format="ubj")) if rank == 0 else None


class PartitionIter:
    """Feeds a worker's partitions to XGBoost one at a time (a ``DataIter``; the class is
    made on first use so that importing this module does not import XGBoost)."""

    def __new__(cls, *args: Any):
        import xgboost

        class _Iter(xgboost.DataIter):
            def __init__(self, paths, layout, schema, validate, fraction):
                self.paths, self.layout, self.schema = paths, layout, schema
                self.validate, self.fraction, self.position = validate, fraction, 0
                super().__init__(release_data=True)

            def next(self, input_data) -> bool:
                while self.position < len(self.paths):
                    frame = training_part(self.paths[self.position], self.schema, self.validate, self.fraction)
                    self.position += 1
                    if len(frame):
                        input_data(data=XGBModel(None, self.layout).features(frame), label=labels(frame, self.layout, self.schema))
                        return True
                return False

            def reset(self) -> None:
                self.position = 0

        return _Iter(*args)


def labels(frame: pd.DataFrame, layout: dict[str, Any], schema: ResolvedSchema) -> np.ndarray:
    """The target as XGBoost takes it: class indices, or float32 values."""
    y = frame[schema.target]
    if layout["task"] == "classification":
        return pd.Categorical(y.to_numpy(), categories=layout["classes"]).codes.astype(np.float32)
    return y.to_numpy(dtype=np.float32)


def train_xgboost(window: Window, spec: ModelSpec, out_path: str | Path, validate: bool = False) -> TrainResult:
    """Train on every worker of the cluster and write the model (UBJSON) to ``out_path``,
    atomically; with ``validate`` (a model search) the validation split is left out of
    training and scored (on the workers)."""
    from xgboost.tracker import RabitTracker

    schema = window.schema
    started = time.perf_counter()
    with cluster_client() as client:
        layout, rows = window_layout(client, window, validate, spec.validation_fraction)
        workers = sorted(client.scheduler_info()["workers"].items())
        shares = deal_partitions(window.parquet_paths, rows, len(workers))
        if not shares:
            raise TrainingError("no training rows in the window (every row fell in the holdout); add data")
        threads = spec.threads or min(w["nthreads"] for _, w in workers)
        params, rounds = xgboost_params(spec, schema.task, len(layout["classes"] or []), threads)
        tracker = RabitTracker(n_workers=len(shares), host_ip=tracker_host(client), sortby="task", timeout=600)
        tracker.start()
        run = uuid.uuid4().hex[:8]
        futures = [client.submit(train_on_worker, share, rank, tracker.worker_args(), params, rounds, layout,
                                 schema, validate, spec.validation_fraction, workers=[address],
                                 allow_other_workers=False, pure=False, key=f"xgboost-train-{rank}-{run}")
                   for rank, (share, (address, _)) in enumerate(zip(shares, workers))]
        model = client.gather(futures)[0]
        tracker.wait_for(timeout=60)
    fit_seconds = time.perf_counter() - started
    import xgboost

    from flows.models.modelfile import ModelFile
    from flows.models.scoring import score_window

    booster = xgboost.Booster()
    booster.load_model(bytearray(model))
    data = XGBModel(booster, layout).to_bytes()
    out = write_atomically(Path(out_path).with_suffix(MODEL_SUFFIX), data)
    validation_rows, validation = 0, None
    if validate:  # scored where the partitions are, like the holdout
        model = ModelFile(str(out), sha256_bytes(data), "the xgboost candidate")
        validation_rows, scores = score_window(window, [model], [], side="validation",
                                               fraction=spec.validation_fraction)
        validation = scores[model.key]
    return TrainResult(model_path=str(out), model_sha256=sha256_bytes(data), estimator="xgboost:train",
                       params={**params, _BOOST_ROUNDS: rounds}, train_rows=sum(rows),
                       fit_seconds=round(fit_seconds, 3), features=schema.features,
                       categorical=schema.categorical, classes=layout["classes"],
                       validation=validation, validation_rows=validation_rows)


def tracker_host(client) -> str:
    """An address of this process that the workers reach: this worker's host, or the
    scheduler's when training is started from outside the cluster."""
    import distributed

    try:
        address = distributed.get_worker().address
    except ValueError:
        address = client.scheduler.address
    return distributed.comm.get_address_host(address)
