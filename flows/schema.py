"""The data's schema: resolving the configured schema against real columns, and
validating/cleaning a frame against the resolved schema."""

from __future__ import annotations

import pandas as pd

from flows.errors import InvalidDataError
from flows.records import ResolvedSchema
from flows.specs import SchemaSpec


def resolve_schema(spec: SchemaSpec, sample: pd.DataFrame, file_name: str) -> ResolvedSchema:
    """Fill in what the config leaves open, from a sample of one file (header + first rows,
    read with every column as text).

    features = spec.features or every column except target and spec.drop;
    categorical = spec.categorical, or (when None) the features whose non-missing sample
    values do not all parse as numbers; numeric = the other features.
    Raises InvalidDataError naming the file and column when the target or a configured
    feature is missing.
    """
    raise NotImplementedError


def validate_frame(frame: pd.DataFrame, schema: ResolvedSchema, file_name: str,
                   first_line: int = 2) -> tuple[pd.DataFrame, int]:
    """Check and clean one partition read with every column as text (``dtype=str``).

    Returns (clean frame with exactly schema.features + target, numeric columns as float64,
    categorical as pandas string/object with surrounding whitespace stripped and empty
    strings as missing; number of rows dropped).
    Rows are dropped when the target is missing or a numeric value does not parse; if the
    dropped share exceeds schema.max_bad_row_fraction the whole partition is rejected with
    InvalidDataError whose details name the columns, counts and a few example line numbers
    and values (``first_line`` is the file line number of the frame's first row).
    For classification the target is kept as text; for regression it must be numeric.
    Missing columns raise InvalidDataError naming them.
    """
    raise NotImplementedError
