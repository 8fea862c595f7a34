"""The one preparation of feature rows.

How a raw value (text read from a CSV, or a value of a JSON request) becomes a feature:
numbers are parsed after stripping whitespace, the missing-value tokens and ``inf``/``-inf``
become missing, text is stripped and empty text is missing. Preprocessing (and so training
and evaluation), ``retrain predict`` and ``retrain serve`` all go through these functions,
so the same row gives the same features everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.errors import InvalidDataError
from core.records import ResolvedSchema

# Values that mean "missing", compared after stripping surrounding whitespace.
MISSING_TOKENS = ["", "NA", "N/A", "null", "NULL", "NaN", "nan", "None"]
EXAMPLES = 3  # example bad values kept per column


def normalise_text(values: pd.Series) -> pd.Series:
    """Text stripped, missing tokens as NA (vectorised: no per-row Python)."""
    text = values.astype("str").str.strip()
    return text.mask(text.isin(MISSING_TOKENS) | values.isna())


def parse_numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, mask of the values present but not numbers). Missing values and
    ``inf``/``-inf`` are NaN: "inf" parses, but no estimator can use it."""
    if values.dtype.kind in "iuf":
        # Already numbers (a JSON request): every value is one, and the text route would give
        # the same floats back (a float's text parses to that float), only slower.
        numbers = values.to_numpy(dtype="float64", na_value=np.nan, copy=True)
        numbers[np.isinf(numbers)] = np.nan
        return numbers, np.zeros(len(numbers), dtype=bool)
    text = normalise_text(values)
    numbers = pd.to_numeric(text, errors="coerce").astype("float64").to_numpy(copy=True)
    unparsed = text.notna().to_numpy() & np.isnan(numbers)
    numbers[np.isinf(numbers)] = np.nan
    return numbers, unparsed


def clean_text(values: pd.Series) -> pd.Series:
    """Strings stripped; empty and missing as NaN; object dtype (what scikit-learn's
    imputers and encoders expect, and what survives a parquet round trip unchanged)."""
    text = normalise_text(values).astype(object)
    return text.where(text.notna(), np.nan)


@dataclass
class PreparedRows:
    """Feature columns typed as in training, and the numeric values that did not parse
    (made missing): column -> {"count": n, "examples": [(row, value), ...]}."""

    features: pd.DataFrame
    unparsed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def unparsed_message(self, name: str) -> str:
        """One line naming each column with values that are not numbers."""
        parts = [f"column '{c}' expects numbers but {d['count']} value(s) are not "
                 f"(e.g. row {d['examples'][0][0] + 1}: {str(d['examples'][0][1])[:40]!r})"
                 for c, d in self.unparsed.items()]
        return f"{name}: " + "; ".join(parts)


def prepare_features(frame: pd.DataFrame, schema: ResolvedSchema, name: str) -> PreparedRows:
    """The model's feature columns of ``frame`` (raw text or JSON values), prepared exactly
    as preprocessing prepares training rows. A missing feature column raises
    InvalidDataError; values that are not numbers become missing and are listed in
    ``unparsed`` (training drops such rows; a prediction keeps the row and says so)."""
    missing = [c for c in schema.features if c not in frame.columns]
    if missing:
        raise InvalidDataError(
            f"{name}: missing feature column(s) {', '.join(missing)}; the model needs "
            f"{', '.join(schema.features)}", {"missing_columns": missing},
            hint="send every feature column (a value may be empty)")
    out: dict[str, Any] = {}
    unparsed: dict[str, dict[str, Any]] = {}
    for column in schema.numeric:
        numbers, bad = parse_numbers(frame[column])
        out[column] = numbers
        if bad.any():
            rows = np.flatnonzero(bad)
            unparsed[column] = {"count": int(bad.sum()),
                                "examples": [(int(r), frame[column].iloc[r]) for r in rows[:EXAMPLES]]}
    for column in schema.categorical:
        out[column] = clean_text(frame[column]).to_numpy()
    features = pd.DataFrame(out, index=frame.index)[schema.features]
    return PreparedRows(features, unparsed)
