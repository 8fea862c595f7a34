"""Late labels: joined with the prediction log by id, the production metric of every version
(over all labels so far, and period by period), and the joined rows as training data.

A labels file is CSV with the id column (``[schema] id``, or ``id``) and the target column.
Every label is counted: joined, unknown (no logged prediction has that id: never scored, or
past ``predictions.keep_days``), duplicate (the same id twice in the file: the first
counts), relabelled (labelled by an earlier file: the earlier label counts) or unparseable
(empty, not a number for a regression, or a line with the wrong number of fields). A file
with no usable label is refused.

Ids are strings of any form; each distinct id gets one integer code for the run
(``id_codes``), and every membership test and join is done on those codes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from core.errors import InvalidDataError, first_line
from core.files import write_atomically
from core.records import FileRef, LabelsReport, ProductionMetric, ResolvedSchema
from flows.data.features import parse_numbers
from flows.data.preprocess import read_header
from flows.models.scoring import metrics
from flows.production import predlog
from flows.production.estimate import estimated_metrics

DEFAULT_ID_COLUMN = "id"
EXAMPLES = 3


def read_label_file(file: FileRef, id_column: str, target: str, task: str) -> tuple[pa.Table, dict[str, Any]]:
    """The usable labels of one file (id, label, as text) and the counts of what was not
    usable. Only the two columns are read (Arrow's CSV reader); a line with the wrong
    number of fields is an unparseable label."""
    columns = read_header(file.path, file.name)
    missing = [c for c in (id_column, target) if c not in columns]
    if missing:
        raise InvalidDataError(f"{file.name}: no {' or '.join(repr(c) for c in missing)} column; a labels file "
                               f"has the id column {id_column!r} and the target column {target!r}",
                               {"missing_columns": missing, "columns": columns},
                               hint=f"name the columns {id_column} and {target}")
    malformed: list[str] = []

    def skip_row(row: Any) -> str:  # called for bad lines only
        malformed.append(row.text[:80])
        return "skip"

    try:
        raw = pacsv.read_csv(file.path, read_options=pacsv.ReadOptions(column_names=columns, skip_rows=1),
                             parse_options=pacsv.ParseOptions(invalid_row_handler=skip_row),
                             convert_options=pacsv.ConvertOptions(
                                 include_columns=[id_column, target], null_values=[], strings_can_be_null=False,
                                 column_types={id_column: pa.string(), target: pa.string()}))
    except pa.ArrowInvalid as exc:
        raise InvalidDataError(f"{file.name}: not a readable CSV of UTF-8 text ({first_line(exc)}); check the "
                               "file", {"error": first_line(exc)}, hint="save the labels as a UTF-8 CSV") from None
    ids = pc.utf8_trim_whitespace(raw[id_column]).combine_chunks()
    labels = pc.utf8_trim_whitespace(raw[target]).combine_chunks()
    bad = pc.or_(pc.equal(ids, ""), pc.equal(labels, "")).to_numpy(zero_copy_only=False)
    if task == "regression":
        numbers, not_numbers = parse_numbers(pd.Series(labels.to_pandas()))
        bad |= not_numbers | np.isnan(numbers)
        labels = pa.array(pd.Series(numbers).astype(str).where(~bad, "").to_numpy(dtype=object), pa.string())
    examples = raw[target].filter(pa.array(bad)).slice(0, EXAMPLES).to_pylist() + malformed
    counts: dict[str, Any] = {"rows": raw.num_rows + len(malformed), "unparseable": int(bad.sum()) + len(malformed),
                              "examples": {"unparseable": examples[:EXAMPLES]}}
    table = pa.table({predlog.ID: ids, predlog.LABEL: labels}).filter(pa.array(~bad))
    first = np.zeros(table.num_rows, dtype=bool)  # the first label of each id counts
    first[np.unique(id_codes([table[predlog.ID]])[0][0], return_index=True)[1]] = True
    counts["duplicate_ids"] = int((~first).sum())
    counts["examples"]["duplicate_ids"] = table[predlog.ID].filter(pa.array(~first)).slice(0, EXAMPLES).to_pylist()
    return table.filter(pa.array(first)), counts


def id_codes(columns: list[pa.ChunkedArray | pa.Array]) -> tuple[list[np.ndarray], int]:
    """One integer per distinct id across ``columns``, the same in each (one hash pass, in
    Arrow), and how many distinct ids there are: membership tests and joins of a million
    ids become array lookups, with no Python object per id."""
    arrays = [chunk.cast(pa.large_string()) for column in columns
              for chunk in (column.chunks if isinstance(column, pa.ChunkedArray) else [column])]
    encoded = pc.dictionary_encode(pa.concat_arrays(arrays) if arrays else pa.array([], pa.large_string()))
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    bounds = np.cumsum([0, *(len(column) for column in columns)])
    return [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:])], len(encoded.dictionary)


def join_labels(files: list[FileRef], schema: ResolvedSchema, log_dir: str, out_dir: str, metric: str,
                period: str, min_rows: int) -> tuple[LabelsReport, list[ProductionMetric], dict[int, dict | None]]:
    """Take in the labels of ``files``, join them with the prediction log, and compute the
    production metric of every version. Returns the report, the metrics, and per file its
    rejection (None when it was used)."""
    id_column = schema_id(schema)
    report = LabelsReport()
    rejections: dict[int, dict | None] = {}
    read = []
    for file in files:
        try:
            read.append((file, *read_label_file(file, id_column, schema.target, schema.task)))
        except InvalidDataError as exc:
            rejections[file.file_id] = {"reason": str(exc), "hint": exc.hint, "details": exc.details}
    logged = predlog.read_predictions_table(log_dir)  # every column: the probabilities, and the features
    earlier = predlog.read_labels_table(log_dir)
    (logged_codes, earlier_codes, *file_codes), ids = id_codes(
        [logged[predlog.ID], earlier[predlog.ID], *(table[predlog.ID] for _, table, _ in read)])
    scored, labelled = np.zeros(ids, dtype=bool), np.zeros(ids, dtype=bool)
    scored[logged_codes], labelled[earlier_codes] = True, True
    fresh = []
    for (file, frame, counts), codes in zip(read, file_codes):
        relabelled = labelled[codes]
        unknown = ~scored[codes] & ~relabelled
        usable = ~relabelled & ~unknown
        _count(report, counts, relabelled, unknown, frame)
        if not usable.any():
            rejections[file.file_id] = {
                "reason": f"{file.name}: none of its {counts['rows']:,} labels can be used ({_why_none(counts, relabelled, unknown)})",
                "hint": "labels must name rows scored earlier (predictions/ or retrain serve), by their id",
                "details": {k: v for k, v in counts.items() if k != "examples"}}
            continue
        rejections[file.file_id] = None
        taken = frame.filter(pa.array(usable))
        taken = taken.append_column(predlog.LABELLED_AT, pa.array(np.full(taken.num_rows, time.time())))
        predlog.write_labels(log_dir, taken, file.sha256[:32])
        labelled[codes[usable]] = True
        fresh.append((file, taken, codes[usable]))
    every_label = pa.concat_tables([earlier, *(t.cast(predlog.LABELS_SCHEMA) for _, t, _ in fresh)])
    every_code = np.concatenate([earlier_codes, *(c for _, _, c in fresh)])
    outputs = [c for c in logged.column_names if c in (predlog.ID, predlog.VERSION, predlog.SCORED_AT, predlog.SOURCE,
                                                       predlog.PREDICTION) or c.startswith(predlog.PROBABILITY)]
    joined = _labelled(logged.select(outputs), logged_codes, every_label, every_code, ids)  # no features needed
    production = production_metrics(joined, schema, metric, period, min_rows)
    if fresh:
        report.training_file, report.origin = training_rows(logged, logged_codes, fresh, schema, out_dir, ids)
    report.joined = sum(t.num_rows for _, t, _ in fresh)
    return report, production, rejections


def _labelled(logged: pa.Table, logged_codes: np.ndarray, labels: pa.Table, label_codes: np.ndarray,
              ids: int) -> pd.DataFrame:
    """The logged rows that have a label, with it (an inner join by id, on the ids' codes;
    each id has one label), in the log's order."""
    label_of = np.full(ids, -1, dtype=np.int64)
    label_of[label_codes] = np.arange(len(label_codes))
    at = label_of[logged_codes]
    rows = np.flatnonzero(at >= 0)
    joined = logged.take(rows)
    for name in (predlog.LABEL, predlog.LABELLED_AT):
        joined = joined.append_column(name, labels[name].take(at[rows]))
    return joined.to_pandas()


def schema_id(schema: ResolvedSchema) -> str:
    return schema.id or DEFAULT_ID_COLUMN


def _count(report: LabelsReport, counts: dict[str, Any], relabelled: np.ndarray, unknown: np.ndarray,
           frame: pa.Table) -> None:
    report.rows += counts["rows"]
    report.unparseable += counts["unparseable"]
    report.duplicate_ids += counts["duplicate_ids"]
    report.relabelled += int(relabelled.sum())
    report.unknown_ids += int(unknown.sum())
    examples = {**counts["examples"], "unknown_ids": frame[predlog.ID].filter(pa.array(unknown)).slice(0, EXAMPLES).to_pylist()}
    for kind, values in examples.items():
        if values:
            report.examples.setdefault(kind, [])
            report.examples[kind] = (report.examples[kind] + [str(v) for v in values])[:EXAMPLES]


def _why_none(counts: dict[str, Any], relabelled: np.ndarray, unknown: np.ndarray) -> str:
    parts = [f"{n:,} {what}" for n, what in ((counts["unparseable"], "unparseable"),
                                             (counts["duplicate_ids"], "duplicate ids"),
                                             (int(unknown.sum()), "ids of no logged prediction"),
                                             (int(relabelled.sum()), "already labelled")) if n]
    return ", ".join(parts) or "no rows"


def production_metrics(joined: pd.DataFrame, schema: ResolvedSchema, metric: str, period: str,
                       min_rows: int) -> list[ProductionMetric]:
    """Every version's metric on its labelled predictions (``joined``: the logged outputs
    with their labels), overall and per period of the time it scored them; with how late
    the labels came."""
    result = []
    for version, rows in joined.groupby(predlog.VERSION, sort=True):
        values = _metrics(rows, schema)
        periods = {str(name): _part_metric(part, rows, values, schema, metric)
                   for name, part in rows.groupby(_period(rows[predlog.SCORED_AT], period), sort=True)}
        batches = {str(source): {**_part_metric(part, rows, values, schema, metric), **_estimate(part, metric)}
                   for source, part in rows.groupby(predlog.SOURCE, sort=True)}
        delay = (rows[predlog.LABELLED_AT] - rows[predlog.SCORED_AT]) / 3600.0
        result.append(ProductionMetric(
            version=str(version), metric=metric, value=_finite(values.get(metric)), rows=len(rows),
            metrics={k: v for k, v in values.items() if _finite(v) is not None}, periods=periods,
            label_delay_hours={"median": round(float(delay.median()), 3), "p90": round(float(delay.quantile(0.9)), 3)},
            enough=len(rows) >= min_rows, batches=batches))
    return result


def _part_metric(part: pd.DataFrame, whole: pd.DataFrame, whole_values: dict[str, float], schema: ResolvedSchema,
                 metric: str) -> dict[str, Any]:
    """The metric of a part of a version's rows (a period, a scoring file), alone: the
    whole's when the part is all of them (one period, one file: a million rows are not
    scored twice)."""
    values = whole_values if len(part) == len(whole) else _metrics(part, schema, only=metric)
    return {"value": _finite(values.get(metric)), "rows": len(part)}


def _metrics(rows: pd.DataFrame, schema: ResolvedSchema, only: str | None = None) -> dict[str, float]:
    """The task's metrics of logged predictions against their labels (``only`` one of
    them). Probabilities are taken from the probability_<class> columns the model logged."""
    if schema.task == "regression":
        outputs = {"predicted": rows[predlog.PREDICTION].astype(float).to_numpy()}
        return metrics(outputs, rows[predlog.LABEL].astype(float), schema, [], only)
    columns = sorted(c for c in rows.columns if c.startswith(predlog.PROBABILITY) and rows[c].notna().all())
    classes = [c[len(predlog.PROBABILITY):] for c in columns]
    outputs = {"predicted": rows[predlog.PREDICTION].astype(str).to_numpy()}
    if columns:
        outputs["scores"] = rows[columns].to_numpy(dtype=float)
    return metrics(outputs, rows[predlog.LABEL].astype(str), schema, classes, only)


def _estimate(rows: pd.DataFrame, metric: str) -> dict[str, float]:
    """What the model's confidence estimated for these rows before their labels came."""
    columns = sorted(c for c in rows.columns if c.startswith(predlog.PROBABILITY) and rows[c].notna().all())
    if len(columns) != 2:
        return {}
    value = estimated_metrics(rows[columns[-1]].to_numpy()).get(metric)
    return {"estimated": value} if value is not None else {}


def _period(scored_at: pd.Series, period: str) -> pd.Series:
    """The period of each row's scoring time. A batch's rows share one time: each distinct
    time is formatted once."""
    times, distinct = pd.factorize(scored_at)
    stamps = pd.Series(pd.to_datetime(distinct, unit="s", utc=True))
    if period == "week":
        iso = stamps.dt.isocalendar()
        names = iso["year"].astype(str) + "-W" + iso["week"].astype(str).str.zfill(2)
    else:
        names = stamps.dt.strftime("%Y-%m" if period == "month" else "%Y-%m-%d")
    return pd.Series(names.to_numpy(dtype=object)[times], index=scored_at.index)


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def training_rows(logged: pa.Table, logged_codes: np.ndarray, fresh: list[tuple[FileRef, pa.Table, np.ndarray]],
                  schema: ResolvedSchema, out_dir: str, ids: int) -> tuple[str | None, list[str]]:
    """The rows just labelled, as a training file: their features as they were scored (the
    latest scoring of an id), the label as the target; and the files they came from."""
    label_of = np.full(ids, -1, dtype=np.int64)
    label_of[np.concatenate([codes for _, _, codes in fresh])] = np.arange(sum(len(c) for _, _, c in fresh))
    rows = np.flatnonzero(label_of[logged_codes] >= 0)
    if np.bincount(logged_codes[rows], minlength=1).max(initial=0) > 1:  # scored again (a backfill): the latest scoring counts
        order = rows[np.argsort(logged[predlog.SCORED_AT].to_numpy()[rows], kind="stable")]
        _, last = np.unique(logged_codes[order][::-1], return_index=True)
        rows = np.sort(order[::-1][last])
    scored = logged if len(rows) == logged.num_rows else logged.take(rows)  # rows are sorted: all means all
    no_feature = np.ones(len(rows), dtype=bool)  # rows with no feature at all teach nothing
    for column in [c for c in schema.features if c in logged.column_names]:
        no_feature &= pc.is_null(scored[column], nan_is_null=True).to_numpy(zero_copy_only=False)
    rows, scored = rows[~no_feature], scored.filter(pa.array(~no_feature))
    if not len(rows):
        return None, []
    labels = pa.concat_tables([t for _, t, _ in fresh])[predlog.LABEL].take(label_of[logged_codes[rows]])
    table = pa.table({schema_id(schema): scored[predlog.ID],
                      **{c: scored[c] if c in scored.column_names else pa.nulls(len(rows)) for c in schema.features},
                      schema.target: labels})
    sources = pc.unique(scored[predlog.SOURCE].drop_null()).to_pylist()
    origin = sorted({str(s) for s in sources}) + [f.name for f, _, _ in fresh]
    name = "labelled-" + "-".join(Path(f.name).stem for f, _, _ in fresh)[:80] + ".csv"
    path = Path(out_dir) / name
    # pyarrow's writer: several times faster than pandas' for the million rows a month of labels
    # can bring; missing values are written empty, as the intake reads them.
    write_atomically(path, lambda fh: pacsv.write_csv(table, fh))
    return str(path), origin
