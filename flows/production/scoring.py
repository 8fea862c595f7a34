"""Scoring an unlabelled batch: each partition predicted on a worker, into the prediction
log; then each file's predictions written whole, part by part, never gathered in one process.

A row's id is its value in ``[schema] id`` when that column is configured, else the first
16 hex digits of its file's sha256 and the row's number in the file (``3fa4...-000042``):
the same file gives the same ids, so a late label can name the row either way.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core.errors import InvalidDataError
from core.files import write_atomically
from core.records import PartitionPlan, Rejection, ResolvedSchema
from flows.data.features import prepare_features
from flows.data.preprocess import read_partition
from flows.data.window import model_threads
from flows.judging.monitor import add_drift_counts, drift_counts, drift_of_counts
from flows.models.modelfile import ModelFile
from flows.models.predict import predict_frame
from flows.models.scoring import loaded
from flows.production import predlog
from flows.production.estimate import estimated_metrics


def row_offsets(plans: list[PartitionPlan]) -> list[int]:
    """The number of data rows before each partition of one file (its lines before the
    partition's start, the header excepted). Read once, in 1 MiB blocks: cheap beside the
    scoring itself."""
    if not plans:
        return []
    offsets, count, last = [], 0, b"\n"
    with open(plans[0].file.path, "rb") as fh:
        position = len(fh.readline())  # the header
        for plan in plans:
            while position < plan.start:
                block = fh.read(min(1 << 20, plan.start - position))
                if not block:
                    break
                count, last, position = count + block.count(b"\n"), block[-1:], position + len(block)
            # A partition that starts inside a row leaves that row to the one before it.
            offsets.append(count + (1 if plan.index > 0 and last != b"\n" else 0))
    return offsets


def row_ids(raw: pd.DataFrame, schema: ResolvedSchema, id_column: str | None, sha256: str, first_row: int,
            name: str) -> pd.Series:
    if id_column is not None:
        if id_column not in raw:
            raise InvalidDataError(f"{name}: no id column {id_column!r} ([schema] id); add it, or unset "
                                   "[schema] id to have ids made from the file and row", {"missing_columns": [id_column]},
                                   hint=f"add the column {id_column!r}")
        ids = raw[id_column].astype("string")
        if ids.isna().any():
            raise InvalidDataError(f"{name}: {int(ids.isna().sum())} row(s) have no {id_column!r}; every scored "
                                   "row needs an id for its label to find it", hint="fill in the id column")
        return ids.astype(str)
    numbers = np.arange(first_row + 1, first_row + 1 + len(raw))
    return pd.Series([f"{sha256[:16]}-{n:06d}" for n in numbers], index=raw.index, dtype=str)


def score_partition(plan: PartitionPlan, first_row: int, schema: ResolvedSchema, model: ModelFile,
                    trusted_types: list[str], id_column: str | None, log_dir: str, version: str,
                    scored_at: float, threads: int = 0, out: tuple[str, str] | None = None,
                    reference: dict | None = None) -> dict:
    """Predict one partition's rows and add them to the prediction log; ``out`` (path,
    format): a file of one partition has its predictions/<name> written here too, without a
    second task reading the part again. Returns a small summary: the part's path, its rows,
    values that were not numbers, the rows in each bin of the champion's ``reference``
    statistics (for the drift of the whole batch), or the rejection of the file (a missing
    feature or id column)."""
    name = plan.file.name if plan.count == 1 else f"{plan.file.name} (part {plan.index + 1} of {plan.count})"
    summary = {"file_id": plan.file.file_id, "index": plan.index, "rows": 0, "path": None, "rejection": None,
               "unparsed": 0}
    try:
        raw, malformed = read_partition(plan)
        ids = row_ids(raw, schema, id_column, plan.file.sha256, first_row, name)
        prepared = prepare_features(raw, schema, name)
    except InvalidDataError as exc:
        summary["rejection"] = Rejection(reason=str(exc), hint=exc.hint, details=exc.details).model_dump()
        return summary
    with model_threads(threads):
        result = predict_frame(loaded(model, tuple(trusted_types)), prepared.features, schema.task)
    frame = predlog.log_rows(ids.to_numpy(), version, scored_at, plan.file.name, result,
                             prepared.features[schema.features], schema.task)
    token = f"{plan.file.sha256[:16]}-{version}-{int(scored_at * 1000)}-{plan.index:05d}"
    summary.update(rows=len(frame), path=predlog.write_part(log_dir, frame, token),
                   unparsed=sum(d["count"] for d in prepared.unparsed.values()), malformed=malformed,
                   drift_counts=drift_counts(prepared.features, reference, schema) if reference else None)
    if out is not None:
        columns = output_columns(schema.task, [c[len(predlog.PROBABILITY):] for c in result
                                               if c.startswith(predlog.PROBABILITY)])
        _write_table(pa.Table.from_pandas(frame[columns], preserve_index=False), out[0], out[1])
        summary["written"] = out[0]
    return summary


def _write_table(table: pa.Table, path: str, fmt: str) -> None:
    if fmt == "parquet":
        write_atomically(path, lambda fh: pq.write_table(table, fh))
    else:
        write_atomically(path, lambda fh: pacsv.write_csv(table, fh))


def predictions_name(file_name: str, fmt: str, version: str | None = None) -> str:
    """predictions/<name>: the input's name (with the version, for a backfill), in ``fmt``."""
    stem = Path(file_name).stem
    suffix = ".parquet" if fmt == "parquet" else ".csv"
    return f"{stem}.{version}{suffix}" if version else f"{stem}{suffix}"


def write_predictions(parts: list[str], out_path: str, fmt: str, columns: list[str]) -> int:
    """One file's predictions, its parts in order, streamed one part at a time; written
    atomically (a reader sees the previous file or the whole new one). Returns its rows."""
    rows = 0

    def write(fh) -> None:
        nonlocal rows
        writer = None
        for part in parts:
            table = pq.read_table(part, columns=[c for c in columns if c in pq.read_schema(part).names])
            rows += table.num_rows
            if fmt == "parquet":
                writer = writer or pq.ParquetWriter(fh, table.schema)
                writer.write_table(table)
            else:
                buffer = io.BytesIO()
                pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=writer is None))
                fh.write(buffer.getvalue())
                writer = True
        if fmt == "parquet" and writer is not None:
            writer.close()
        elif fmt == "parquet":
            pq.write_table(pa.table({c: [] for c in columns}), fh)

    write_atomically(out_path, write)
    return rows


def output_columns(task: str, classes: list[str]) -> list[str]:
    """The columns of predictions/<name>, in order."""
    probabilities = [f"{predlog.PROBABILITY}{c}" for c in classes] if task == "classification" else []
    return [predlog.ID, predlog.PREDICTION, *probabilities, predlog.VERSION, predlog.SCORED_AT]


def scored_monitoring(summaries: list[dict], parts: list[str], reference: dict, schema: ResolvedSchema) -> dict:
    """What is known of the scored rows before their labels: the drift of their features
    from the champion's reference statistics, as for a training batch (no label: it has
    none), added up from the partitions' bin counts (``summaries`` of the files scored);
    and, for a binary classifier, the metrics its confidence estimates, from the logged
    probability of the positive class alone (``parts``)."""
    if not parts:
        return {"drift": None, "estimated": {}}
    drift = None
    if reference:
        counts = add_drift_counts([s["drift_counts"] for s in summaries if s.get("drift_counts")])
        drift = drift_of_counts(counts, sum(s["rows"] for s in summaries), reference, schema).model_dump()
    names = pq.read_schema(parts[0]).names
    probabilities = sorted(n for n in names if n.startswith(predlog.PROBABILITY))
    if len(probabilities) != 2:
        return {"drift": drift, "estimated": {}}
    positive = np.concatenate([pq.read_table(p, columns=probabilities[-1:]).column(0).to_numpy() for p in parts])
    return {"drift": drift, "estimated": estimated_metrics(positive)}
