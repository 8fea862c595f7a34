"""Predictions of a registered model on new rows (no target column needed).

Rows are prepared by ``flows.data.features``, exactly as training rows were: the same row
gives the same features, and so the same prediction, through ``retrain predict`` and
``retrain serve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import pandas as pd

from core.errors import InvalidDataError
from core.records import ResolvedSchema
from flows.data.features import PreparedRows, prepare_features


def read_rows(source: str | Path | IO[str], name: str | None = None) -> pd.DataFrame:
    """Every column as text, untouched: missing-value tokens and whitespace are the
    preparation's business (``flows.data.features``), not the reader's. ``source`` is a path or
    an open text (a request's body); ``name`` is what errors call it (default: the path)."""
    name = name or str(source)
    try:
        return pd.read_csv(source, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    except FileNotFoundError:
        raise InvalidDataError(f"{name}: no such file; give the path of a CSV file") from None
    except UnicodeDecodeError as exc:
        raise InvalidDataError(f"{name}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InvalidDataError(f"{name}: not a readable CSV ({' '.join(str(exc).split())}); "
                               "check the header and the number of fields per line") from None


def predict_rows(model, frame: pd.DataFrame, schema: ResolvedSchema, name: str) -> tuple[pd.DataFrame, PreparedRows]:
    """Predictions for the raw rows of ``frame`` and the prepared rows they were made from
    (whose ``unparsed`` lists numeric values that were not numbers and counted as missing)."""
    prepared = prepare_features(frame, schema, name)
    return predict_frame(model, prepared.features, schema.task), prepared


def predict_frame(model, features: pd.DataFrame, task: str) -> pd.DataFrame:
    """``prediction`` and, for classifiers with probabilities, ``probability_<class>``."""
    result = pd.DataFrame({"prediction": model.predict(features)}, index=features.index)
    if task == "classification" and hasattr(model, "predict_proba"):
        proba = model.predict_proba(features)
        for i, label in enumerate(model.classes_):
            result[f"probability_{label}"] = proba[:, i]
    return result
