"""Predictions of a registered model on new rows (no target column needed).

Rows are prepared by ``flows.data.features``, exactly as training rows were: the same row
gives the same features, and so the same prediction, through ``retrain predict`` and
``retrain serve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

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
    if task != "classification" or not hasattr(model, "predict_proba"):
        return pd.DataFrame({"prediction": model.predict(features)}, index=features.index)
    proba = model.predict_proba(features)
    final = model.steps[-1][1] if isinstance(model, Pipeline) else model
    # The probabilities are most of a prediction's cost: computed once when they decide it.
    predicted = (model.classes_[np.argmax(proba, axis=1)] if predicts_highest_probability(final)
                 else model.predict(features))
    result = pd.DataFrame({"prediction": predicted}, index=features.index)
    for i, label in enumerate(model.classes_):
        result[f"probability_{label}"] = proba[:, i]
    return result


# scikit-learn classifiers whose predict() is, in its source, the class of highest
# predict_proba: for them the (costly) probabilities are computed once and reused.
_PREDICT_IS_ARGMAX = {"HistGradientBoostingClassifier", "RandomForestClassifier",
                      "ExtraTreesClassifier", "DecisionTreeClassifier"}


def predicts_highest_probability(estimator) -> bool:
    """Whether ``estimator.predict`` is the class of its highest ``predict_proba`` (or
    decision function): ours say so (``predict_is_argmax``), scikit-learn's are listed."""
    cls = type(estimator)
    return getattr(estimator, "predict_is_argmax", False) is True or \
        (cls.__module__.startswith("sklearn.") and cls.__name__ in _PREDICT_IS_ARGMAX)
