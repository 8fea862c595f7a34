"""Preprocessing: cut files into partitions, and turn one partition into cached parquet.

``plan_partitions`` runs in the flow (it only reads the header and a sample of line
lengths); ``preprocess_partition`` runs on a Dask worker, once per partition, and reads
only its own byte range of the file.

Partitions are byte ranges: the row that *starts* inside [start, end) belongs to the
partition, so each row is read exactly once whatever the boundaries. A quoted field that
contains a newline would be cut at a boundary; such files are read as one partition
(``plan_partitions`` checks the sample for quotes spanning lines).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from flows.errors import InvalidDataError
from flows.records import FileRef, PartitionPlan, PartitionSummary, Rejection, ResolvedSchema
from flows.schema import validate_frame

# Bump when the cleaning/encoding below changes: it is part of every cache key.
PREPROCESS_VERSION = "1"
HOLDOUT_COLUMN = "__holdout"
MISSING_TOKENS = ["", "NA", "N/A", "null", "NULL", "NaN", "nan", "None"]
_SAMPLE_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"


# -- reading ----------------------------------------------------------------------------------

def _header_bytes(path: str | Path, name: str) -> bytes:
    """The first line of the file, newline included; checks it is text."""
    with open(path, "rb") as fh:
        head = fh.read(_SAMPLE_BYTES)
    if not head:
        raise InvalidDataError(f"{name}: the file is empty; drop a CSV with a header and rows",
                               {"size": 0}, hint="the file has no content")
    newline = head.find(b"\n")
    line = head if newline < 0 else head[: newline + 1]
    _check_text(line, name, 0)
    return line


def _check_text(data: bytes, name: str, offset: int) -> None:
    """Refuse binary content and text that is not UTF-8, naming where."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InvalidDataError(
            f"{name}: binary content (a NUL byte at offset {offset + nul}), not CSV text; "
            "export the data as CSV", {"offset": offset + nul},
            hint="the file is not a text CSV file")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            return  # a multi-byte character cut by the end of this range; the next range has it
        raise InvalidDataError(
            f"{name}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {offset + exc.start}); "
            "save the file as UTF-8", {"offset": offset + exc.start},
            hint="re-export the file with UTF-8 encoding") from None


def read_header(path: str | Path, name: str | None = None) -> list[str]:
    """The column names of a CSV file (first line)."""
    name = name or Path(path).name
    line = _header_bytes(path, name).removeprefix(_BOM).decode("utf-8")
    columns = [c.strip() for c in next(csv.reader([line.rstrip("\r\n")]), [])]
    if not columns or all(not c for c in columns):
        raise InvalidDataError(f"{name}: the first line has no column names; add a header line",
                               hint="the first line must name the columns")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise InvalidDataError(f"{name}: duplicated column name(s) {', '.join(duplicated)}; "
                               "make the header names unique", {"duplicated": duplicated})
    return columns


def _parse(data: bytes, columns: list[str], name: str) -> tuple[pd.DataFrame, int]:
    """Parse CSV rows (no header line in ``data``) with every column as text.
    Returns the frame and the number of malformed rows skipped."""
    skipped = 0

    def skip_row(row) -> str:
        nonlocal skipped
        skipped += 1
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=columns, block_size=1 << 26),
            # Quoted newlines need the slower serial parser; most files have none.
            parse_options=pacsv.ParseOptions(invalid_row_handler=skip_row,
                                             newlines_in_values=b"\"" in data),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns}, null_values=MISSING_TOKENS,
                strings_can_be_null=True, quoted_strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        raise InvalidDataError(f"{name}: not a readable CSV ({str(exc).splitlines()[0]}); check the file",
                               hint="the file could not be parsed as CSV") from None
    if table.num_rows == 0 and not data.strip():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns}), skipped
    return table.to_pandas(), skipped


def read_sample(path: str | Path, rows: int = 1000, name: str | None = None) -> pd.DataFrame:
    """The first ``rows`` rows of a CSV, every column as text."""
    name = name or Path(path).name
    columns = read_header(path, name)
    header = _header_bytes(path, name)
    with open(path, "rb") as fh:
        fh.seek(len(header))
        data = fh.read(_SAMPLE_BYTES)
    cut = _nth_newline(data, rows)
    data = data[:cut]
    _check_text(data, name, len(header))
    if not data.strip():
        raise InvalidDataError(f"{name}: has a header but no rows; drop it again once it has data",
                               {"columns": columns}, hint="the file has no data rows")
    frame, _ = _parse(data, columns, name)
    return frame.head(rows)


def _nth_newline(data: bytes, n: int) -> int:
    """End offset of the n-th line in ``data`` (the whole of it when it has fewer)."""
    pos = -1
    for _ in range(n):
        pos = data.find(b"\n", pos + 1)
        if pos < 0:
            return len(data)
    return pos + 1


def read_partition(plan: PartitionPlan) -> tuple[pd.DataFrame, int]:
    """The rows of one partition, every column as text, and the count of malformed rows."""
    name = plan.file.name
    columns = read_header(plan.file.path, name)
    with open(plan.file.path, "rb") as fh:
        start = plan.start
        fh.seek(start)
        if plan.index > 0:
            # The row that starts exactly at `start` is ours only if a newline precedes it.
            fh.seek(start - 1)
            if fh.read(1) != b"\n":
                fh.readline()
            start = fh.tell()
        if plan.end == -1:
            data = fh.read()
        else:
            data = fh.read(max(plan.end - start, 0))
            if data and not data.endswith(b"\n"):
                data += fh.readline()  # finish the row that started inside the range
    _check_text(data, name, start)
    return _parse(data, columns, name)


# -- planning ---------------------------------------------------------------------------------

def plan_partitions(file: FileRef, rows_per_partition: int) -> list[PartitionPlan]:
    """Split one file into byte ranges of about ``rows_per_partition`` rows, estimated from
    the average length of its first lines. Cheap: never parses the whole file."""
    header = _header_bytes(file.path, file.name)
    read_header(file.path, file.name)
    size = os.path.getsize(file.path)
    with open(file.path, "rb") as fh:
        fh.seek(len(header))
        sample = fh.read(_SAMPLE_BYTES)
    _check_text(sample, file.name, len(header))
    if not sample.strip():
        raise InvalidDataError(f"{file.name}: has a header but no rows; drop it again once it has data",
                               hint="the file has no data rows")
    lines = max(sample.count(b"\n"), 1)
    bytes_per_row = len(sample) / lines
    body = size - len(header)
    estimated_rows = body / bytes_per_row
    # Quotes in the sample may hide newlines inside values: cutting could split a row.
    if estimated_rows <= rows_per_partition * 1.5 or b'"' in sample:
        return [PartitionPlan(file=file, index=0, count=1, start=len(header), end=-1)]
    count = math.ceil(estimated_rows / rows_per_partition)
    step = body / count
    bounds = [len(header) + round(i * step) for i in range(count)] + [-1]
    return [PartitionPlan(file=file, index=i, count=count, start=bounds[i], end=bounds[i + 1])
            for i in range(count)]


# -- the holdout and the cache ------------------------------------------------------------------

def is_holdout(frame: pd.DataFrame, columns: list[str], fraction: float) -> pd.Series:
    """Deterministic, leak-free holdout membership: a hash of the row's values, so a row is
    in the holdout in every run (pandas' hash is keyed by a fixed key, not per process)."""
    if frame.empty:
        return pd.Series(False, index=frame.index)
    hashes = pd.util.hash_pandas_object(frame[columns], index=False).to_numpy()
    return pd.Series((hashes % np.uint64(10_000)) < np.uint64(round(fraction * 10_000)),
                     index=frame.index)


def cache_key(plan: PartitionPlan, schema: ResolvedSchema, holdout_fraction: float) -> str:
    """Content hash of the input partition + schema + holdout fraction + code version."""
    parts = {
        "sha256": plan.file.sha256, "start": plan.start, "end": plan.end,
        "schema": schema.model_dump(), "holdout_fraction": holdout_fraction,
        "version": PREPROCESS_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / key[:2] / f"{key}.parquet"


def preprocess_partition(plan: PartitionPlan, schema: ResolvedSchema, cache_dir: str | Path,
                         holdout_fraction: float) -> PartitionSummary:
    """Read, validate and clean one partition and write it as parquet under ``cache_dir``
    (temporary name, then os.replace), with the HOLDOUT_COLUMN added. A cache hit skips
    the work. A problem of the file returns a summary with a Rejection instead of raising."""
    started = time.perf_counter()
    base = {"file_id": plan.file.file_id, "file_name": plan.file.name,
            "sha256": plan.file.sha256, "index": plan.index}
    key = cache_key(plan, schema, holdout_fraction)
    path = _cache_path(cache_dir, key)
    if path.exists():
        counts = json.loads(pq.read_schema(path).metadata[b"retrain"])
        return PartitionSummary(**base, parquet_path=str(path), cached=True,
                                seconds=time.perf_counter() - started, **counts)
    try:
        raw, malformed = read_partition(plan)
        first_line = 2 if plan.index == 0 else 0
        clean, dropped = validate_frame(raw, schema, plan.file.name, first_line=first_line)
        total = len(raw) + malformed
        unusable = dropped + malformed
        if total and unusable / total > schema.max_bad_row_fraction:
            raise InvalidDataError(
                f"{plan.file.name}: {unusable} of {total} rows are malformed (wrong number of "
                f"fields or bad values), over the limit of {schema.max_bad_row_fraction:.0%}",
                {"rows": total, "malformed_rows": malformed, "unusable_rows": unusable},
                hint="fix the rows, or raise schema.max_bad_row_fraction")
        if plan.count == 1 and total == 0:
            raise InvalidDataError(f"{plan.file.name}: has a header but no rows; drop it again once it has data",
                                   hint="the file has no data rows")
    except InvalidDataError as exc:
        return PartitionSummary(**base, parquet_path=None, seconds=time.perf_counter() - started,
                                rejection=Rejection(reason=str(exc), hint=exc.hint, details=exc.details))
    clean[HOLDOUT_COLUMN] = is_holdout(clean, [*schema.features, schema.target], holdout_fraction).to_numpy()
    counts = {"rows": len(clean), "rejected_rows": unusable,
              "holdout_rows": int(clean[HOLDOUT_COLUMN].sum())}
    table = pa.Table.from_pandas(clean, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"retrain": json.dumps(counts).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return PartitionSummary(**base, parquet_path=str(path), seconds=time.perf_counter() - started,
                            **counts)


def load_partitions(paths: list[str], columns: list[str] | None = None) -> pd.DataFrame:
    """Concatenate cached parquet partitions, in the order given. Text columns come back as
    object dtype with NaN for missing, as scikit-learn's imputers and encoders expect."""
    if not paths:
        return pd.DataFrame(columns=columns or [])
    tables = [pq.read_table(p, columns=columns) for p in paths]
    frame = pa.concat_tables(tables, promote_options="default").to_pandas()
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column]):
            values = frame[column].astype(object)
            frame[column] = values.where(values.notna(), np.nan)
    return frame
