"""Feature rows as one compact numeric matrix, for estimators with native categorical support.

Training reads text columns from parquet as pandas categoricals; ``retrain predict`` and
``retrain serve`` prepare them as object strings (``flows.data.features``). ``FeatureMatrix``
maps both the same way: each categorical column becomes the code of its value among the
categories seen in ``fit`` (sorted; unseen and missing values are NaN), each numeric column
a float32. The result is one float32 matrix, numeric columns first: no one-hot columns, no
object arrays, half the bytes of float64.

This module is part of the model file's format: a model saved with ``FeatureMatrix`` names
``flows.encoders.FeatureMatrix``, which the registry trusts explicitly (see
``flows.models.modelfile.OWN_TRUSTED_TYPES``). Its fitted state is plain lists and strings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

# HistGradientBoosting takes at most max_bins - 1 = 254 categories per feature; the rarer
# ones share the missing value's branch.
MAX_CATEGORIES = 254


def category_codes(values: pd.Series, categories: list[str]) -> np.ndarray:
    """Codes of ``values`` among ``categories`` as float32, NaN for missing or unseen
    values. A categorical column is recoded by its categories (no per-row strings); an
    object column is looked up once per value."""
    dtype = pd.CategoricalDtype(categories)
    if isinstance(values.dtype, pd.CategoricalDtype):
        coded = values.cat.set_categories(categories)
    else:
        coded = pd.Series(pd.Categorical(values.to_numpy(), dtype=dtype), index=values.index)
    codes = coded.cat.codes.to_numpy().astype(np.float32)
    codes[codes < 0] = np.nan
    return codes


def known_categories(values: pd.Series, limit: int = MAX_CATEGORIES) -> list[str]:
    """The categories a column is coded with: its ``limit`` most frequent values (ties by
    value), sorted, so the same rows give the same codes whatever order they came in."""
    counts = values.value_counts(dropna=True)
    frequent = sorted(((str(v), int(n)) for v, n in counts.items() if n > 0),
                      key=lambda item: (-item[1], item[0]))[:limit]
    return sorted(value for value, _ in frequent)


class FeatureMatrix(TransformerMixin, BaseEstimator):
    """Numeric columns as float32, categorical columns as float32 category codes (the
    categories seen in fit; unseen and missing are NaN), in the order numeric + categorical."""

    def __init__(self, numeric: list[str] | None = None, categorical: list[str] | None = None):
        self.numeric = numeric
        self.categorical = categorical

    def fit(self, X: pd.DataFrame, y=None) -> "FeatureMatrix":
        self.categories_ = [known_categories(X[c]) for c in self.categorical or []]
        self.n_features_in_ = len(self.numeric or []) + len(self.categorical or [])
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        return self.matrix(X)

    def matrix(self, X: pd.DataFrame, rows: np.ndarray | None = None) -> np.ndarray:
        """The float32 matrix of ``X`` (only the positions ``rows``, in that order, when
        given), built a column at a time: no copy of the frame."""
        numeric, categorical = self.numeric or [], self.categorical or []
        out = np.empty((len(X) if rows is None else len(rows), len(numeric) + len(categorical)), dtype=np.float32)
        for i, column in enumerate(numeric):
            values = X[column].to_numpy(dtype=np.float32, na_value=np.nan)
            out[:, i] = values if rows is None else values[rows]
        for j, (column, categories) in enumerate(zip(categorical, self.categories_)):
            codes = category_codes(X[column], categories)
            out[:, len(numeric) + j] = codes if rows is None else codes[rows]
        return out

    def categorical_mask(self) -> list[bool]:
        """Which output columns are categorical (the estimator's ``categorical_features``)."""
        return [False] * len(self.numeric or []) + [True] * len(self.categorical or [])
