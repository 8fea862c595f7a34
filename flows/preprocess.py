"""Preprocessing: cut files into partitions, and turn one partition into cached parquet.

``plan_partitions`` runs in the flow (it only reads headers and a sample of line
lengths); ``preprocess_partition`` runs on a Dask worker, once per partition.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flows.records import FileRef, PartitionPlan, PartitionSummary, ResolvedSchema

# Bump when the cleaning/encoding below changes: it is part of every cache key.
PREPROCESS_VERSION = "1"
HOLDOUT_COLUMN = "__holdout"


def plan_partitions(file: FileRef, rows_per_partition: int) -> list[PartitionPlan]:
    """Split one file into byte ranges of about ``rows_per_partition`` rows, estimated from
    the average length of its first lines. Small files are one partition. Cheap: reads
    only the header and a sample of lines, never parses the whole file."""
    raise NotImplementedError


def read_header(path: str | Path) -> list[str]:
    """The column names of a CSV file (first line). Raises InvalidDataError for an empty
    file, a file that is not UTF-8 text, or binary content."""
    raise NotImplementedError


def read_sample(path: str | Path, rows: int = 1000) -> pd.DataFrame:
    """The first ``rows`` rows of a CSV, every column as text. Raises InvalidDataError
    (one line naming the file) when the file is empty, has a header but no rows, is not
    UTF-8, or is not CSV."""
    raise NotImplementedError


def read_partition(plan: PartitionPlan) -> pd.DataFrame:
    """The rows of one partition, every column as text (rows that *start* inside
    [start, end) belong to it; partition 0 starts after the header)."""
    raise NotImplementedError


def is_holdout(frame: pd.DataFrame, columns: list[str], fraction: float) -> pd.Series:
    """Deterministic, leak-free holdout membership: a hash of the row's values in
    ``columns`` (the features and the target), so a row is in the holdout in every run."""
    raise NotImplementedError


def cache_key(plan: PartitionPlan, schema: ResolvedSchema, holdout_fraction: float) -> str:
    """Content hash of the input partition + schema + holdout fraction + PREPROCESS_VERSION."""
    raise NotImplementedError


def preprocess_partition(plan: PartitionPlan, schema: ResolvedSchema, cache_dir: str | Path,
                         holdout_fraction: float) -> PartitionSummary:
    """Read, validate and clean one partition and write it as parquet under ``cache_dir``
    (written to a temporary name, then os.replace), with the HOLDOUT_COLUMN added.

    A cache hit (parquet for the same cache_key exists) skips the work (cached=True).
    A file-level problem (InvalidDataError) does not raise: it returns a summary with
    parquet_path=None and a Rejection (reason, hint, details). Other errors raise.
    """
    raise NotImplementedError


def load_partitions(paths: list[str], columns: list[str] | None = None) -> pd.DataFrame:
    """Concatenate cached parquet partitions (with the HOLDOUT_COLUMN)."""
    raise NotImplementedError
