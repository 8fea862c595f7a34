"""Predictions of a registered model on a CSV of new rows (no target column needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from flows.errors import InvalidDataError
from flows.records import ResolvedSchema

MISSING_TOKENS = ["", "NA", "N/A", "null", "NULL", "NaN", "nan", "None"]


def read_rows(path: str | Path) -> pd.DataFrame:
    """Every column as text, as the model's preprocessing expects to coerce it."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=MISSING_TOKENS,
                           encoding="utf-8", skipinitialspace=True)
    except FileNotFoundError:
        raise InvalidDataError(f"{path}: no such file; give the path of a CSV file") from None
    except UnicodeDecodeError as exc:
        raise InvalidDataError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InvalidDataError(f"{path}: not a readable CSV ({str(exc).strip()}); check the file") from None


def prepare_features(frame: pd.DataFrame, schema: ResolvedSchema, name: str) -> pd.DataFrame:
    """The model's feature columns, typed as in training. Unparseable numbers become
    missing (the model's imputer handles them) rather than failing the whole request."""
    missing = [c for c in schema.features if c not in frame.columns]
    if missing:
        raise InvalidDataError(
            f"{name}: missing feature column(s) {', '.join(missing)}; the model needs "
            f"{', '.join(schema.features)}",
            {"missing_columns": missing},
        )
    out = pd.DataFrame(index=frame.index)
    for column in schema.numeric:
        out[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in schema.categorical:
        values = frame[column].astype(object).where(frame[column].notna(), np.nan)
        out[column] = values.map(lambda v: v.strip() if isinstance(v, str) else v).replace("", np.nan)
    return out[schema.features]


def predict_frame(model, features: pd.DataFrame, task: str) -> pd.DataFrame:
    """``prediction`` and, for classifiers with probabilities, ``probability_<class>``."""
    result = pd.DataFrame({"prediction": model.predict(features)}, index=features.index)
    if task == "classification" and hasattr(model, "predict_proba"):
        proba = model.predict_proba(features)
        for i, label in enumerate(model.classes_):
            result[f"probability_{label}"] = proba[:, i]
    return result
