"""Preprocessing: cut files into partitions, and turn one partition into cached parquet.

``plan_partitions`` runs in the flow (it only reads the header and a sample of line
lengths); ``preprocess_partition`` runs on a Dask worker, once per partition, and reads
only its own byte range of the file.

Partitions are byte ranges: the row that *starts* inside [start, end) belongs to the
partition, so each row is read exactly once whatever the boundaries (Hadoop's rule: a
partition after the first skips to just past the next newline, unless the byte before
its start already is one, and reads on past ``end`` to finish its last row).

Limitation: a quoted field that contains a newline would be cut at a boundary, because
a byte offset cannot tell whether it is inside quotes. ``plan_partitions`` looks for
lines with an odd number of quote characters in its sample (the sign of a quoted
newline) and then plans one partition for the file; quoted newlines that only appear
after the sample are not detected.
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
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core.errors import InvalidDataError, first_line
from core.files import write_atomically
from core.records import (
    FileRef,
    PartitionPlan,
    PartitionSummary,
    Rejection,
    ResolvedSchema,
)
from flows.data.features import MISSING_TOKENS
from flows.data.schema import validate_frame

# Bump when the cleaning/encoding below changes: it is part of every cache key.
PREPROCESS_VERSION = "2"
HOLDOUT_COLUMN = "__holdout"
__all__ = ["HOLDOUT_COLUMN", "PREPROCESS_VERSION", "cache_key", "cached_summary", "is_holdout",
           "plan_partitions", "preprocess_partition", "read_header", "read_partition", "read_sample"]
_SAMPLE_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
_EXAMPLES = 3
# Control bytes that never occur in text (tab, LF, FF, CR and ESC excluded).
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27))


# -- reading ----------------------------------------------------------------------------------

def _header_bytes(path: str | Path, name: str) -> bytes:
    """The first line of the file, newline included; checks it is text."""
    with open(path, "rb") as fh:
        head = fh.read(_SAMPLE_BYTES)
    if not head:
        raise InvalidDataError(f"{name}: the file is empty (0 bytes); drop a CSV with a header "
                               "and rows", {"size": 0}, hint="the file has no content")
    # Judge binary content on the whole first block, not only the first "line": binary
    # data has few newlines, but its first line may well decode.
    _check_binary(head, name, 0)
    newline = head.find(b"\n")
    line = head if newline < 0 else head[: newline + 1]
    _check_text(line, name, 0, complete=newline >= 0 or len(head) < _SAMPLE_BYTES)
    return line


def _check_binary(data: bytes, name: str, offset: int) -> None:
    nul = data.find(b"\x00")
    first = data[:4096]
    controls = len(first) - len(first.translate(None, _CONTROL))
    if nul >= 0 or (first and controls / len(first) > 0.05):
        where = offset + nul if nul >= 0 else offset
        raise InvalidDataError(
            f"{name}: binary content (" + (f"a NUL byte at offset {where}" if nul >= 0
                                          else f"{controls} control bytes in the first {len(first)}")
            + "), not CSV text; export the data as CSV",
            {"offset": where, "control_bytes": controls},
            hint="the file is not a text CSV file")


def _check_text(data: bytes, name: str, offset: int, complete: bool = True) -> None:
    """Refuse binary content and text that is not UTF-8, naming the byte offset.
    ``complete`` is False when ``data`` may end inside a multi-byte character."""
    _check_binary(data, name, offset)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not complete and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            return  # a multi-byte character cut by the end of this block; the next has it
        raise InvalidDataError(
            f"{name}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {offset + exc.start}); "
            "save the file as UTF-8", {"offset": offset + exc.start, "byte": data[exc.start]},
            hint="re-export the file with UTF-8 encoding") from None


def read_header(path: str | Path, name: str | None = None) -> list[str]:
    """The column names of a CSV file (first line). ``name`` is the file's name in messages
    (its inbox name), by default the path's. Raises InvalidDataError for an empty file, a
    file that is not UTF-8 text, binary content, or a header without (unique) names."""
    name = name or Path(path).name
    return _columns(_header_bytes(path, name), name)


def _columns(header: bytes, name: str) -> list[str]:
    line = header.removeprefix(_BOM).decode("utf-8")
    columns = [c.strip() for c in next(csv.reader([line.rstrip("\r\n")]), [])]
    if not columns or all(not c for c in columns):
        raise InvalidDataError(f"{name}: the first line has no column names; add a header line",
                               hint="the first line must name the columns")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise InvalidDataError(f"{name}: duplicated column name(s) {', '.join(duplicated)}; "
                               "make the header names unique", {"duplicated": duplicated},
                               hint="every column needs its own name")
    return columns


def _no_rows(name: str, columns: list[str]) -> InvalidDataError:
    return InvalidDataError(f"{name}: has a header but no rows; drop it again once it has data",
                            {"columns": columns}, hint="the file has no data rows")


def _parse(data: bytes, columns: list[str], name: str) -> tuple[pd.DataFrame, int, list[dict]]:
    """Parse CSV rows (no header line in ``data``) with every column as text.
    Returns the frame, the number of malformed rows skipped, and a few examples of them."""
    skipped = 0
    examples: list[dict[str, Any]] = []

    def skip_row(row: Any) -> str:
        # Called only for bad rows, so this Python callback costs nothing on good data.
        nonlocal skipped
        skipped += 1
        if len(examples) < _EXAMPLES:
            examples.append({"fields": row.actual_columns, "text": row.text[:80]})
        return "skip"

    if not data.strip():
        # pyarrow refuses empty input; a partition may hold no row at all.
        return pd.DataFrame({c: pd.Series(dtype="str") for c in columns}), 0, examples
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=columns, block_size=1 << 26),
            # Quoted newlines need the slower serial parser; most files have no quotes.
            parse_options=pacsv.ParseOptions(invalid_row_handler=skip_row,
                                             newlines_in_values=b"\"" in data),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns}, null_values=MISSING_TOKENS,
                strings_can_be_null=True, quoted_strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        raise InvalidDataError(f"{name}: not a readable CSV ({first_line(exc)}); check the file",
                               {"error": first_line(exc)},
                               hint="the file could not be parsed as CSV") from None
    return table.to_pandas(), skipped, examples


def read_sample(path: str | Path, rows: int = 1000, name: str | None = None) -> pd.DataFrame:
    """The first ``rows`` rows of a CSV, every column as text. Raises InvalidDataError
    (one line naming the file) when the file is empty, has a header but no rows, is not
    UTF-8, or is not CSV."""
    name = name or Path(path).name
    header = _header_bytes(path, name)
    columns = _columns(header, name)
    with open(path, "rb") as fh:
        fh.seek(len(header))
        data = fh.read(_SAMPLE_BYTES)
        truncated = bool(fh.read(1))
    cut = _nth_newline(data, rows)
    if truncated and cut == len(data) and b"\n" in data:
        cut = data.rfind(b"\n") + 1  # a half row at the end of the block would mislead
    data = data[:cut]
    _check_text(data, name, len(header), complete=not truncated)
    if not data.strip():
        raise _no_rows(name, columns)
    frame, _, _ = _parse(data, columns, name)
    return frame.head(rows)


def _nth_newline(data: bytes, n: int) -> int:
    """End offset of the n-th line in ``data`` (the whole of it when it has fewer)."""
    pos = -1
    for _ in range(n):  # n is a sample size (~1000), not the file's row count
        pos = data.find(b"\n", pos + 1)
        if pos < 0:
            return len(data)
    return pos + 1


def _read_range(plan: PartitionPlan, header_length: int) -> tuple[bytes, int]:
    """The bytes of the rows that start in [plan.start, plan.end), and their offset."""
    with open(plan.file.path, "rb") as fh:
        start = max(plan.start, header_length)
        if plan.index > 0 and start > header_length:
            # The row that starts exactly at `start` is ours only if a newline precedes it.
            fh.seek(start - 1)
            if fh.read(1) != b"\n":
                fh.readline()
            start = fh.tell()
        else:
            fh.seek(start)
        if plan.end == -1:
            return fh.read(), start
        data = fh.read(max(plan.end - start, 0))
        if data and not data.endswith(b"\n"):
            data += fh.readline()  # finish the row that started inside the range
        return data, start


def read_partition(plan: PartitionPlan) -> tuple[pd.DataFrame, int]:
    """The rows of one partition, every column as text, and the count of malformed rows
    (wrong number of fields) that were skipped.

    ``frame.attrs`` carries what error messages need: ``first_line`` (the file line of
    the first row when rows map one to one onto lines in partition 0, else 0),
    ``start`` (byte offset of the first row) and ``malformed_examples``.
    """
    name = plan.file.name
    header = _header_bytes(plan.file.path, name)
    columns = _columns(header, name)
    data, start = _read_range(plan, len(header))
    _check_text(data, name, start)
    frame, malformed, examples = _parse(data, columns, name)
    body = data.rstrip(b"\r\n")  # blank lines at the very end shift no line number
    lines = body.count(b"\n") + 1 if body else 0
    exact = plan.index == 0 and lines == len(frame)  # no blank, skipped or multi-line rows
    frame.attrs.update(first_line=2 if exact else 0, start=start, malformed_examples=examples)
    return frame, malformed


# -- planning ---------------------------------------------------------------------------------

def plan_partitions(file: FileRef, rows_per_partition: int) -> list[PartitionPlan]:
    """Split one file into byte ranges of about ``rows_per_partition`` rows, estimated from
    the average length of its first lines. Small files (under 1.5 partitions' worth, so
    no tiny last partition) are one partition. Cheap: reads only the header and a sample
    of lines, never parses the whole file."""
    header = _header_bytes(file.path, file.name)
    columns = _columns(header, file.name)
    size = os.path.getsize(file.path)
    with open(file.path, "rb") as fh:
        fh.seek(len(header))
        sample = fh.read(_SAMPLE_BYTES)
    truncated = len(header) + len(sample) < size
    _check_text(sample, file.name, len(header), complete=not truncated)
    if not sample.strip():
        raise _no_rows(file.name, columns)
    whole = sample[: sample.rfind(b"\n") + 1] if truncated else sample
    lines = max(whole.count(b"\n"), 1)
    bytes_per_row = max(len(whole), 1) / lines
    body = size - len(header)
    estimated_rows = body / bytes_per_row
    if estimated_rows <= rows_per_partition * 1.5 or _has_quoted_newline(whole):
        return [PartitionPlan(file=file, index=0, count=1, start=len(header), end=-1)]
    count = math.ceil(estimated_rows / rows_per_partition)
    step = body / count
    bounds = [len(header) + round(i * step) for i in range(count)] + [-1]
    return [PartitionPlan(file=file, index=i, count=count, start=bounds[i], end=bounds[i + 1])
            for i in range(count)]


def _has_quoted_newline(sample: bytes) -> bool:
    """A line with an odd number of quote characters opens (or closes) a quoted field that
    spans lines ("" escapes come in pairs). Runs over a sample's lines only."""
    if b'"' not in sample:
        return False
    return any(line.count(b'"') % 2 for line in sample.split(b"\n"))


# -- the holdout and the cache ------------------------------------------------------------------

def is_holdout(frame: pd.DataFrame, columns: list[str], fraction: float) -> pd.Series:
    """Deterministic, leak-free holdout membership: a hash of the row's values in
    ``columns`` (the features and the target), so a row is in the holdout in every run,
    and duplicated rows are all on the same side. pandas' hash uses a fixed key, unlike
    Python's ``hash()``, so the answer is the same in every process."""
    if frame.empty:
        return pd.Series(False, index=frame.index, dtype=bool)
    hashes = pd.util.hash_pandas_object(frame[columns], index=False).to_numpy()
    return pd.Series((hashes % np.uint64(10_000)) < np.uint64(round(fraction * 10_000)),
                     index=frame.index)


def cache_key(plan: PartitionPlan, schema: ResolvedSchema, holdout_fraction: float) -> str:
    """Content hash of the input partition + schema + holdout fraction + PREPROCESS_VERSION.
    The file's name and path are left out: the same content under another name reuses it."""
    parts = {
        "sha256": plan.file.sha256, "start": plan.start, "end": plan.end,
        "schema": schema.model_dump(), "holdout_fraction": holdout_fraction,
        "version": PREPROCESS_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / key[:2] / f"{key}.parquet"


def _cached_counts(path: Path) -> dict[str, int] | None:
    """The counts stored with a cached partition, or None when there is no usable one."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        counts = json.loads(metadata[b"retrain"])
        return {k: int(counts[k]) for k in ("rows", "rejected_rows", "holdout_rows")}
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException, KeyError, ValueError):
        return None  # unreadable (e.g. cut short by a crash without fsync): rebuild it


def _summary_base(plan: PartitionPlan) -> dict:
    return {"file_id": plan.file.file_id, "file_name": plan.file.name,
            "sha256": plan.file.sha256, "index": plan.index}


def cached_summary(plan: PartitionPlan, schema: ResolvedSchema, cache_dir: str | Path,
                   holdout_fraction: float) -> PartitionSummary | None:
    """The summary of an already preprocessed partition (read from its parquet footer,
    no data), or None when it has to be preprocessed. Cheap enough to call from the flow
    before any task is submitted, so that cached partitions cost no task at all."""
    started = time.perf_counter()
    path = _cache_path(cache_dir, cache_key(plan, schema, holdout_fraction))
    counts = _cached_counts(path)
    if counts is None:
        return None
    return PartitionSummary(**_summary_base(plan), parquet_path=str(path), cached=True,
                            seconds=time.perf_counter() - started, **counts)


def preprocess_partition(plan: PartitionPlan, schema: ResolvedSchema, cache_dir: str | Path,
                         holdout_fraction: float) -> PartitionSummary:
    """Read, validate and clean one partition and write it as parquet under ``cache_dir``
    (written to a temporary name, then os.replace), with the HOLDOUT_COLUMN added.

    A cache hit (parquet for the same cache_key exists) skips the work (cached=True).
    A file-level problem (InvalidDataError) does not raise: it returns a summary with
    parquet_path=None and a Rejection (reason, hint, details). Other errors raise.
    """
    started = time.perf_counter()
    cached = cached_summary(plan, schema, cache_dir, holdout_fraction)
    if cached is not None:
        return cached
    base = _summary_base(plan)
    path = _cache_path(cache_dir, cache_key(plan, schema, holdout_fraction))
    try:
        clean, unusable = _clean_partition(plan, schema)
    except InvalidDataError as exc:
        return PartitionSummary(**base, parquet_path=None, seconds=time.perf_counter() - started,
                                rejection=Rejection(reason=str(exc), hint=exc.hint, details=exc.details))
    clean[HOLDOUT_COLUMN] = is_holdout(clean, [*schema.features, schema.target],
                                       holdout_fraction).to_numpy()
    counts = {"rows": len(clean), "rejected_rows": unusable,
              "holdout_rows": int(clean[HOLDOUT_COLUMN].sum())}
    table = pa.Table.from_pandas(clean, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"retrain": json.dumps(counts).encode()})
    write_atomically(path, lambda fh: pq.write_table(table, fh))
    return PartitionSummary(**base, parquet_path=str(path), seconds=time.perf_counter() - started,
                            **counts)


def _clean_partition(plan: PartitionPlan, schema: ResolvedSchema) -> tuple[pd.DataFrame, int]:
    """The clean rows of a partition and how many rows were unusable (malformed + dropped)."""
    name = plan.file.name
    raw, malformed = read_partition(plan)
    start = raw.attrs.get("start", plan.start)
    where = {} if plan.count == 1 else {"partition": {"index": plan.index, "count": plan.count,
                                                      "start_byte": start}}
    total = len(raw) + malformed
    if plan.count == 1 and total == 0:
        raise _no_rows(name, list(raw.columns))
    # Later partitions name their part, since row numbers there count from its start.
    label = name if plan.count == 1 else f"{name} (part {plan.index + 1} of {plan.count}, from byte {start})"
    try:
        clean, dropped = validate_frame(raw, schema, label, first_line=raw.attrs.get("first_line", 0))
    except InvalidDataError as exc:
        exc.details = {**exc.details, **where}
        raise
    unusable = dropped + malformed
    if total and unusable / total > schema.max_bad_row_fraction:
        examples: list[dict] = raw.attrs.get("malformed_examples", [])
        shown = "; ".join(f"{e['fields']} fields: {e['text'][:40]!r}" for e in examples[:2])
        values = f" and {dropped} with unusable values" if dropped else ""
        raise InvalidDataError(
            f"{label}: {malformed} of {total} rows have the wrong number of fields (expected "
            f"{len(raw.columns)}; e.g. {shown}){values}, over the limit of "
            f"{schema.max_bad_row_fraction:.0%}; fix the rows or raise schema.max_bad_row_fraction",
            {"rows": total, "malformed_rows": malformed, "unusable_rows": unusable,
             "expected_fields": len(raw.columns), "malformed_examples": examples,
             "max_bad_row_fraction": schema.max_bad_row_fraction, **where},
            hint="every row needs as many fields as the header; fix the rows, or raise "
                 "schema.max_bad_row_fraction")
    return clean, unusable
