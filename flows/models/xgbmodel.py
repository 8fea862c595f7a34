"""An XGBoost model as retrain stores it: the booster, and in its attributes what is needed
to prepare feature rows (columns, categories, classes). Loading it runs no code."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from core.errors import RegistryIntegrityError, first_line

_ATTRIBUTE = "retrain"  # the booster attribute holding XGBModel's preparation


class XGBModel:
    """A trained booster with the preparation of its feature rows: numeric columns as
    float32, categorical ones cast to the training categories (unseen values are missing).
    Answers like a scikit-learn model: ``predict``, ``predict_proba``, ``classes_``."""

    predict_is_argmax = True  # predict() is the class of highest predict_proba

    def __init__(self, booster, layout: dict[str, Any]):
        self.booster = booster
        self.layout = layout  # task, numeric, categorical, categories, classes

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.layout.get("classes") or [])

    def features(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = {c: frame[c].to_numpy(dtype=np.float32, na_value=np.nan) for c in self.layout["numeric"]}
        for column in self.layout["categorical"]:
            out[column] = as_categories(frame[column], self.layout["categories"][column])
        return pd.DataFrame(out, index=frame.index)

    def _raw(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(self.features(frame)))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.layout["task"] != "classification":
            raise AttributeError("a regression model has no predict_proba")
        raw = self._raw(frame).astype(np.float64)
        return np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self.layout["task"] != "classification":
            return self._raw(frame).astype(np.float64)
        return self.classes_[np.argmax(self.predict_proba(frame), axis=1)]

    def to_bytes(self) -> bytes:
        self.booster.set_attr(**{_ATTRIBUTE: json.dumps(self.layout)})
        return bytes(self.booster.save_raw(raw_format="ubj"))

    @classmethod
    def from_bytes(cls, data: bytes, what: str) -> "XGBModel":
        """A model from UBJSON bytes; anything else is refused (RegistryIntegrityError)."""
        import xgboost

        try:
            booster = xgboost.Booster()
            booster.load_model(bytearray(data))
            layout = json.loads(booster.attr(_ATTRIBUTE) or "null")
        except (xgboost.core.XGBoostError, ValueError, TypeError) as exc:
            raise RegistryIntegrityError(f"{what} is not a readable XGBoost model file "
                                         f"({first_line(exc)[:120]}); "
                                         "it may be damaged") from None
        if not isinstance(layout, dict) or not {"task", "numeric", "categorical", "categories"} <= set(layout):
            raise RegistryIntegrityError(f"{what} is an XGBoost model without retrain's feature layout; "
                                         "it was not written by retrain")
        return cls(booster, layout)


def as_categories(values: pd.Series, categories: list[str]) -> pd.Categorical:
    """``values`` (categorical or text) as a categorical of exactly ``categories``."""
    dtype = pd.CategoricalDtype(categories)
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.set_categories(categories).array
    return pd.Categorical(values.to_numpy(), dtype=dtype)
