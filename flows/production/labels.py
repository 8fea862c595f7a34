"""Late labels: joined with the prediction log by id, the production metric of every version
(over all labels so far, and period by period), and the joined rows as training data.

A labels file is CSV with the id column (``[schema] id``, or ``id``) and the target column.
Every label is counted: joined, unknown (no logged prediction has that id: never scored, or
past ``predictions.keep_days``), duplicate (the same id twice in the file: the first
counts), relabelled (labelled by an earlier file: the earlier label counts) or unparseable
(empty, or not a number for a regression). A file with no usable label is refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from core.errors import InvalidDataError
from core.files import write_atomically
from core.records import FileRef, LabelsReport, ProductionMetric, ResolvedSchema
from flows.data.features import parse_numbers
from flows.models.predict import read_rows
from flows.models.scoring import metrics
from flows.production import predlog
from flows.production.estimate import estimated_metrics

DEFAULT_ID_COLUMN = "id"
EXAMPLES = 3


def read_label_file(file: FileRef, id_column: str, target: str, task: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The usable labels of one file (id, label) and the counts of what was not usable."""
    raw = read_rows(file.path, file.name)
    missing = [c for c in (id_column, target) if c not in raw.columns]
    if missing:
        raise InvalidDataError(f"{file.name}: no {' or '.join(repr(c) for c in missing)} column; a labels file "
                               f"has the id column {id_column!r} and the target column {target!r}",
                               {"missing_columns": missing, "columns": list(raw.columns)},
                               hint=f"name the columns {id_column} and {target}")
    ids, labels = raw[id_column].str.strip(), raw[target].str.strip()
    bad = labels.eq("") | ids.eq("")
    if task == "regression":
        numbers, not_numbers = parse_numbers(labels)
        bad |= pd.Series(not_numbers | np.isnan(numbers), index=raw.index)
        labels = pd.Series(numbers, index=raw.index).astype(str).where(~bad, "")
    counts: dict[str, Any] = {"rows": len(raw), "unparseable": int(bad.sum()),
                              "examples": {"unparseable": raw.loc[bad, target].head(EXAMPLES).tolist()}}
    frame = pd.DataFrame({predlog.ID: ids[~bad].astype(object), predlog.LABEL: labels[~bad]})
    duplicated = frame[predlog.ID].duplicated()
    counts["duplicate_ids"] = int(duplicated.sum())
    counts["examples"]["duplicate_ids"] = frame.loc[duplicated, predlog.ID].head(EXAMPLES).tolist()
    return frame[~duplicated], counts


def join_labels(files: list[FileRef], schema: ResolvedSchema, log_dir: str, out_dir: str, metric: str,
                period: str, min_rows: int) -> tuple[LabelsReport, list[ProductionMetric], dict[int, dict | None]]:
    """Take in the labels of ``files``, join them with the prediction log, and compute the
    production metric of every version. Returns the report, the metrics, and per file its
    rejection (None when it was used)."""
    id_column = schema_id(schema)
    report = LabelsReport()
    rejections: dict[int, dict | None] = {}
    # Ids as Python objects in pandas indexes: their hash tables test a million ids in well
    # under a second, where pandas' Arrow-backed strings take seconds per membership test.
    known = pd.Index(predlog.read_labels(log_dir)[predlog.ID].astype(object))
    logged = predlog.read_predictions(log_dir)  # every column: the probabilities, and the features
    logged[predlog.ID] = logged[predlog.ID].astype(object)
    logged_ids = pd.Index(logged[predlog.ID].unique())
    fresh = []
    for file in files:
        try:
            frame, counts = read_label_file(file, id_column, schema.target, schema.task)
        except InvalidDataError as exc:
            rejections[file.file_id] = {"reason": str(exc), "hint": exc.hint, "details": exc.details}
            continue
        relabelled = frame[predlog.ID].isin(known)
        unknown = ~frame[predlog.ID].isin(logged_ids) & ~relabelled
        usable = frame[~relabelled & ~unknown]
        _count(report, counts, relabelled, unknown, frame)
        if usable.empty:
            rejections[file.file_id] = {
                "reason": f"{file.name}: none of its {counts['rows']:,} labels can be used ({_why_none(counts, relabelled, unknown)})",
                "hint": "labels must name rows scored earlier (predictions/ or retrain serve), by their id",
                "details": {k: v for k, v in counts.items() if k != "examples"}}
            continue
        rejections[file.file_id] = None
        usable = usable.assign(**{predlog.LABELLED_AT: time.time()})
        predlog.write_labels(log_dir, usable, file.sha256[:32])
        known = known.append(pd.Index(usable[predlog.ID]))
        fresh.append((file, usable))
    all_labels = predlog.read_labels(log_dir)
    production = production_metrics(logged, all_labels, schema, metric, period, min_rows)
    if fresh:
        report.training_file, report.origin = training_rows(logged, fresh, schema, out_dir)
    report.joined = sum(len(u) for _, u in fresh)
    return report, production, rejections


def schema_id(schema: ResolvedSchema) -> str:
    return schema.id or DEFAULT_ID_COLUMN


def _count(report: LabelsReport, counts: dict[str, Any], relabelled: pd.Series, unknown: pd.Series,
           frame: pd.DataFrame) -> None:
    report.rows += counts["rows"]
    report.unparseable += counts["unparseable"]
    report.duplicate_ids += counts["duplicate_ids"]
    report.relabelled += int(relabelled.sum())
    report.unknown_ids += int(unknown.sum())
    examples = {**counts["examples"], "unknown_ids": frame.loc[unknown, predlog.ID].head(EXAMPLES).tolist()}
    for kind, values in examples.items():
        if values:
            report.examples.setdefault(kind, [])
            report.examples[kind] = (report.examples[kind] + [str(v) for v in values])[:EXAMPLES]


def _why_none(counts: dict[str, Any], relabelled: pd.Series, unknown: pd.Series) -> str:
    parts = [f"{n:,} {what}" for n, what in ((counts["unparseable"], "unparseable"),
                                             (counts["duplicate_ids"], "duplicate ids"),
                                             (int(unknown.sum()), "ids of no logged prediction"),
                                             (int(relabelled.sum()), "already labelled")) if n]
    return ", ".join(parts) or "no rows"


def production_metrics(logged: pd.DataFrame, labels: pd.DataFrame, schema: ResolvedSchema, metric: str,
                       period: str, min_rows: int) -> list[ProductionMetric]:
    """Every version's metric on its labelled predictions, overall and per period of the
    time it scored them; with how late the labels came."""
    outputs = [c for c in logged.columns if c in (predlog.ID, predlog.VERSION, predlog.SCORED_AT, predlog.SOURCE,
                                                  predlog.PREDICTION) or c.startswith(predlog.PROBABILITY)]
    joined = logged[outputs].merge(labels, on=predlog.ID, how="inner")  # the features are not needed here
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
    """The metric of a part of a version's rows (a period, a scoring file): the whole's
    when the part is all of them (one period, one file: a million rows are not scored twice)."""
    values = whole_values if len(part) == len(whole) else _metrics(part, schema)
    return {"value": _finite(values.get(metric)), "rows": len(part)}


def _metrics(rows: pd.DataFrame, schema: ResolvedSchema) -> dict[str, float]:
    """The task's metrics of logged predictions against their labels. Probabilities are
    taken from the probability_<class> columns the model logged."""
    if schema.task == "regression":
        outputs = {"predicted": rows[predlog.PREDICTION].astype(float).to_numpy()}
        return metrics(outputs, rows[predlog.LABEL].astype(float), schema, [])
    columns = sorted(c for c in rows.columns if c.startswith(predlog.PROBABILITY) and rows[c].notna().all())
    classes = [c[len(predlog.PROBABILITY):] for c in columns]
    outputs = {"predicted": rows[predlog.PREDICTION].astype(str).to_numpy()}
    if columns:
        outputs["scores"] = rows[columns].to_numpy(dtype=float)
    return metrics(outputs, rows[predlog.LABEL].astype(str), schema, classes)


def _estimate(rows: pd.DataFrame, metric: str) -> dict[str, float]:
    """What the model's confidence estimated for these rows before their labels came."""
    columns = sorted(c for c in rows.columns if c.startswith(predlog.PROBABILITY) and rows[c].notna().all())
    if len(columns) != 2:
        return {}
    value = estimated_metrics(rows[columns[-1]].to_numpy()).get(metric)
    return {"estimated": value} if value is not None else {}


def _period(scored_at: pd.Series, period: str) -> pd.Series:
    stamps = pd.to_datetime(scored_at, unit="s", utc=True)
    if period == "week":
        iso = stamps.dt.isocalendar()
        return iso["year"].astype(str) + "-W" + iso["week"].astype(str).str.zfill(2)
    return stamps.dt.strftime("%Y-%m" if period == "month" else "%Y-%m-%d")


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def training_rows(logged: pd.DataFrame, fresh: list[tuple[FileRef, pd.DataFrame]], schema: ResolvedSchema,
                  out_dir: str) -> tuple[str | None, list[str]]:
    """The rows just labelled, as a training file: their features as they were scored (the
    latest scoring of an id), the label as the target; and the files they came from."""
    labels = pd.concat([u for _, u in fresh], ignore_index=True)
    scored = logged[logged[predlog.ID].isin(labels[predlog.ID])]
    if not scored[predlog.ID].is_unique:  # scored again (a backfill): the latest scoring counts
        scored = scored.sort_values(predlog.SCORED_AT).drop_duplicates(predlog.ID, keep="last")
    rows = scored.merge(labels, on=predlog.ID, how="inner")
    rows = rows.dropna(subset=[c for c in schema.features if c in rows], how="all")
    if rows.empty:
        return None, []
    columns = {predlog.ID: schema_id(schema), predlog.LABEL: schema.target}
    table = rows[[predlog.ID, *schema.features, predlog.LABEL]].rename(columns=columns)
    origin = sorted(set(rows[predlog.SOURCE].dropna().astype(str))) + [f.name for f, _ in fresh]
    name = "labelled-" + "-".join(Path(f.name).stem for f, _ in fresh)[:80] + ".csv"
    path = Path(out_dir) / name
    # pyarrow's writer: several times faster than pandas' for the million rows a month of labels
    # can bring; missing values are written empty, as the intake reads them.
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    write_atomically(path, lambda fh: pacsv.write_csv(arrow, fh))
    return str(path), origin
