"""The data layer under training, evaluation and deployment.

Every step reads data through here, never through another step: the rows of the window
(from the cached parquet partitions, on one side of the holdout split), a registered model
(always hash-checked, see ``flows.models.registry``), and the threads the numeric libraries may
use while a model is fitted or scored.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.records import ResolvedSchema
from flows.data.preprocess import HOLDOUT_COLUMN

# Arrow allocates through the C library's malloc, as numpy and pandas do: its large
# buffers (a partition being read) are then given back to the system when freed, where
# Arrow's own allocators (mimalloc, jemalloc) keep them for reuse. Measured on a training
# step (benchmarks/profile_memory.py): the resident peak over idle is about a quarter lower.
pa.set_memory_pool(pa.system_memory_pool())


@contextmanager
def model_threads(threads: int) -> Iterator[None]:
    """Let the numeric libraries (OpenMP, BLAS) use ``threads`` threads, 0 for every core.
    Dask gives each worker's libraries one thread; training and scoring run alone."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads or os.cpu_count() or 1):
        yield


@contextmanager
def cluster_client(required: bool = True) -> Iterator[Any]:
    """A client of the Dask cluster this code runs on, so that a step can spread its work
    over the workers. In a task on a worker, the task's thread secedes from the worker's
    pool meanwhile (``worker_client``): the tasks it submits may use that worker too.
    Elsewhere the process's current client; None when there is none and not ``required``."""
    import distributed

    try:
        distributed.get_worker()
    except ValueError:
        try:
            client = distributed.get_client()
        except ValueError:
            if required:
                raise
            client = None
        yield client
        return
    with distributed.worker_client() as client:
        yield client


@dataclass(frozen=True)
class Window:
    """The training window of a run: its cached partitions in window order (oldest file
    first, partitions in order within a file) and the schema they were cleaned with."""

    parquet_paths: list[str]
    schema: ResolvedSchema

    @property
    def columns(self) -> list[str]:
        return [*self.schema.features, self.schema.target]

    def training_rows(self, validation: bool | None = None, fraction: float = 0.0) -> pd.DataFrame:
        """Every row outside the holdout; with ``validation`` True or False, only the rows
        on that side of the validation split (``fraction`` of them, see ``is_validation``)."""
        frame = load_partitions(self.parquet_paths, self.columns, holdout=False)
        if validation is None:
            return frame
        keep = is_validation(frame, self.columns, fraction)
        return frame[keep if validation else ~keep].reset_index(drop=True)

    def training_column(self, column: str) -> pd.Series:
        """One column of the rows outside the holdout (a column at a time keeps memory small)."""
        return load_partitions(self.parquet_paths, [column], holdout=False)[column]

    def holdout_rows(self, limit: int | None = None) -> pd.DataFrame:
        """The holdout rows in window order (the first ``limit`` of them when given: only
        the partitions that hold them are read)."""
        return load_partitions(self.parquet_paths, self.columns, holdout=True, limit=limit)

    def holdout_counts(self) -> list[int]:
        """Holdout rows per partition, in window order (only the split's column is read)."""
        return [int(pc.sum(pq.read_table(path, columns=[HOLDOUT_COLUMN])[HOLDOUT_COLUMN]).as_py() or 0)
                for path in self.parquet_paths]

    def holdout_column(self, column: str) -> pd.Series:
        """One column of the holdout rows, in window order."""
        return load_partitions(self.parquet_paths, [column], holdout=True)[column]

    def holdout_parts(self) -> list[tuple[str, pd.DataFrame]]:
        """The holdout rows of each partition that has any, read once: evaluation scores
        and keeps models' outputs per partition."""
        parts = [(path, load_partitions([path], self.columns, holdout=True)) for path in self.parquet_paths]
        return [(path, part) for path, part in parts if len(part)]


# Mixed into the row hash (the holdout's) before it decides the validation split, so that the
# split is independent of the holdout. (pandas' ``hash_key`` would not do: it keys only text
# values, so on a window of numbers alone the "other" hash was the holdout's, and every
# training row fell outside the validation split.)
_VALIDATION_SALT = np.uint64(0x7265747261696E21)  # b"retrain!"


def validation_position(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Each row's place in [0, 10,000) for the validation split: a hash of the row's values,
    so a row is on the same side in every run and in every process, independent of the
    holdout's hash of the same values."""
    hashes = pd.util.hash_pandas_object(frame[columns], index=False).to_numpy()
    # pandas hashes uint64 values with the splitmix64 finalizer: salted, a new hash.
    return pd.util.hash_array(hashes ^ _VALIDATION_SALT) % np.uint64(10_000)


def is_validation(frame: pd.DataFrame, columns: list[str], fraction: float) -> np.ndarray:
    """Which training rows validate candidates of a model search (``fraction`` of them, by
    ``validation_position``). The gate's holdout is never part of it."""
    if frame.empty or fraction <= 0:
        return np.zeros(len(frame), dtype=bool)
    return validation_position(frame, columns) < np.uint64(round(fraction * 10_000))


def load_partitions(paths: list[str], columns: list[str] | None = None,
                    holdout: bool | None = None, limit: int | None = None) -> pd.DataFrame:
    """Concatenate cached parquet partitions (with the HOLDOUT_COLUMN), in the order given.
    ``holdout`` keeps one side of the split (filtered in Arrow, before any conversion);
    ``limit`` stops reading once that many rows are in hand. Text columns come back as
    categoricals, missing values as NaN, which scikit-learn's imputers and encoders take."""
    if not paths:
        return pd.DataFrame(columns=columns or [])
    # The holdout column is read to filter on, and dropped again unless it was asked for.
    add_holdout = holdout is not None and columns is not None and HOLDOUT_COLUMN not in columns
    read = [*columns, HOLDOUT_COLUMN] if add_holdout else columns
    tables, rows = [], 0
    for path in paths:
        table = pq.read_table(path, columns=read)
        if holdout is not None:
            keep = table[HOLDOUT_COLUMN] if holdout else pc.invert(table[HOLDOUT_COLUMN])
            table = table.filter(keep)
        if add_holdout:
            table = table.drop_columns([HOLDOUT_COLUMN])
        tables.append(table)
        rows += table.num_rows
        if limit is not None and rows >= limit:
            break
    # "default" promotion: a text column that is all missing in one partition is stored
    # with arrow's null type, and must still concatenate with the string partitions.
    table = pa.concat_tables(tables, promote_options="default")
    del tables
    if limit is not None:
        table = table.slice(0, limit)
    # Text as pandas categoricals: a few bytes per value instead of a Python string object
    # (a third of the memory of the training frame on the sample data). Each column is
    # converted into a block of its own and its Arrow buffers freed as it is done
    # (self_destruct), so the table and the frame are not both whole in memory.
    frame = table.to_pandas(strings_to_categorical=True, split_blocks=True, self_destruct=True)
    del table
    pa.default_memory_pool().release_unused()  # Arrow's buffers are no longer needed
    for column in frame.columns:
        if frame[column].dtype == object:  # an all-missing text column (Arrow's null type)
            frame[column] = frame[column].astype("category")
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            # Sorted categories: the same frame whatever order the partitions came in.
            frame[column] = frame[column].cat.reorder_categories(sorted(frame[column].cat.categories))
    return frame
