"""The prediction log: every scored row, kept until its label arrives.

Layout under the log's folder::

    predictions/day=2026-12-06/<token>.parquet   one part per scored partition (or served batch):
                                                 id, version, scored_at, source, prediction,
                                                 probability_<class>..., the row's features
    labels/<sha256 of a labels file>.parquet     the labels taken in so far: id, label, labelled_at

Parts appear only by an atomic rename, so a reader never sees half of one. The log is
bounded by ``predictions.keep_days``: whole days older than that are removed (their rows can
no longer be joined with a label, and a late label for them is counted as unknown).
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from core.files import write_atomically

PREDICTIONS = "predictions"
LABELS = "labels"
# The columns every part has, before its probabilities and features.
ID, VERSION, SCORED_AT, SOURCE, PREDICTION = "id", "version", "scored_at", "source", "prediction"
LABEL, LABELLED_AT = "label", "labelled_at"
PROBABILITY = "probability_"


def day_of(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d")


def log_rows(ids, version: str, scored_at: float, source: str, result: pd.DataFrame, features: pd.DataFrame,
             task: str) -> pd.DataFrame:
    """The log's rows of scored rows: id, version, time, source, the model's outputs
    (``result``: prediction, probabilities; a class is logged as text), and the features as
    they were prepared, for the row to become training data once its label comes."""
    frame = pd.DataFrame({ID: ids, VERSION: version, SCORED_AT: scored_at, SOURCE: source})
    for column in result:
        values = result[column].to_numpy()
        frame[column] = values.astype(str) if column == PREDICTION and task == "classification" else values
    for column in features:
        frame[column] = features[column].to_numpy()
    return frame


def write_part(log_dir: str | Path, frame: pd.DataFrame, token: str) -> str:
    """Add a part of scored rows (one day's: ``frame[SCORED_AT]`` of its first row)."""
    day = day_of(float(frame[SCORED_AT].iloc[0])) if len(frame) else day_of(time.time())
    path = Path(log_dir) / PREDICTIONS / f"day={day}" / f"{token}.parquet"
    table = pa.Table.from_pandas(frame, preserve_index=False)
    write_atomically(path, lambda fh: pq.write_table(table, fh))
    return str(path)


def read_part(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    return pq.read_table(path, columns=columns).to_pandas()


def read_predictions(log_dir: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Every logged prediction (the columns asked for, those a part lacks as missing)."""
    if not _parts(log_dir):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in (columns or [ID, VERSION, SCORED_AT, SOURCE,
                                                                              PREDICTION])})
    frame = read_predictions_table(log_dir, columns).to_pandas()
    for column in columns or []:
        if column not in frame:
            frame[column] = None
    return frame


def read_predictions_table(log_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Every logged prediction as an Arrow table: the columns asked for that some part has
    (all by default), read from the parts alone (Parquet's column projection)."""
    parts = _parts(log_dir)
    if not parts:
        return pa.table({ID: pa.array([], pa.string()), VERSION: pa.array([], pa.string()),
                         SCORED_AT: pa.array([], pa.float64()), SOURCE: pa.array([], pa.string()),
                         PREDICTION: pa.array([], pa.string())})
    # Parts of different models (or servers) may differ in their probability columns: the
    # dataset is read with the union of their schemas, missing columns as nulls.
    schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
    dataset = ds.dataset([str(p) for p in parts], schema=schema, format="parquet")
    return dataset.to_table(columns=[c for c in columns if c in schema.names] if columns else None)


def _parts(log_dir: str | Path) -> list[Path]:
    return sorted((Path(log_dir) / PREDICTIONS).glob("day=*/*.parquet"))


LABELS_SCHEMA = pa.schema([(ID, pa.string()), (LABEL, pa.string()), (LABELLED_AT, pa.float64())])


def read_labels(log_dir: str | Path) -> pd.DataFrame:
    """Every label taken in so far: id, label, labelled_at."""
    return read_labels_table(log_dir).to_pandas()


def read_labels_table(log_dir: str | Path) -> pa.Table:
    """Every label taken in so far, as an Arrow table: id, label, labelled_at."""
    parts = sorted((Path(log_dir) / LABELS).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(p).select(LABELS_SCHEMA.names).cast(LABELS_SCHEMA) for p in parts]
                            or [LABELS_SCHEMA.empty_table()])


def write_labels(log_dir: str | Path, labels: pd.DataFrame | pa.Table, token: str) -> str:
    path = Path(log_dir) / LABELS / f"{token}.parquet"
    table = labels if isinstance(labels, pa.Table) else pa.Table.from_pandas(labels, preserve_index=False)
    table = table.select(LABELS_SCHEMA.names).cast(LABELS_SCHEMA)
    write_atomically(path, lambda fh: pq.write_table(table, fh))
    return str(path)


def prune(log_dir: str | Path, keep_days: float, now: float | None = None) -> list[str]:
    """Remove the days of predictions older than ``keep_days`` (0 keeps everything); returns
    the days removed. A day goes whole: its folder name is the day its rows were scored."""
    if not keep_days:
        return []
    cutoff = datetime.fromtimestamp(now or time.time(), timezone.utc) - timedelta(days=keep_days)
    removed = []
    for folder in sorted((Path(log_dir) / PREDICTIONS).glob("day=*")):
        try:
            day = datetime.strptime(folder.name[4:], "%Y-%m-%d").replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        if day + timedelta(days=1) <= cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name[4:])
    return removed
