"""Model files: written in formats whose loading runs no code, and loaded only when their
bytes hash to what was recorded.

- skops (``model.skops``): scikit-learn Pipelines, loaded with an explicit list of trusted
  types (scikit-learn, numpy, scipy, the named classes of ours below, and
  ``model.trusted_types``); anything else is refused without being executed.
- XGBoost's UBJSON (``model.ubj``): a booster and, in its attributes, what ``XGBModel``
  needs to prepare feature rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import RegistryIntegrityError
from core.files import sha256_bytes

# The model file of a version, by format: skops for scikit-learn Pipelines, XGBoost's own
# UBJSON for XGBoost models. A version's metadata records its file (``model_file``).
MODEL_FILES = {".skops": "model.skops", ".ubj": "model.ubj"}


MODEL_FILE = MODEL_FILES[".skops"]


# Types from these packages are what our Pipelines are made of; anything else in a model
# file must be trusted explicitly (model.trusted_types).
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.")


# Other types our own Pipelines are made of, each named (never a blanket "flows." prefix):
# FeatureMatrix holds lists of names and categories only; a partial is only its function
# and arguments, which skops checks as types of their own (HistGradientBoosting keeps a
# partial of sklearn's check_array).
OWN_TRUSTED_TYPES = ("flows.encoders.FeatureMatrix", "functools.partial")


def model_file_name(path: str | Path) -> str:
    """The name a model file has in a version directory, from its format (its suffix)."""
    suffix = Path(path).suffix
    if suffix not in MODEL_FILES:
        raise RegistryIntegrityError(f"{path}: not a model file format retrain knows "
                                     f"({', '.join(MODEL_FILES)})")
    return MODEL_FILES[suffix]


@dataclass(frozen=True)
class ModelFile:
    """A model file and the sha256 it must have: what a step passes to wherever the model
    is loaded (always through ``load_model_file``)."""

    path: str
    sha256: str
    what: str

    @property
    def key(self) -> str:
        """Models are told apart by content (kept outputs are filed under this)."""
        return self.sha256[:32]

    def load(self, trusted_types: list[str] | None = None):
        return load_model_file(self.path, self.sha256, trusted_types, what=self.what)


def load_model_file(path: str | Path, sha256: str, trusted_types: list[str] | None = None,
                    what: str | None = None):
    """Load a model file only if its bytes hash to ``sha256`` (read once: the bytes checked
    are the bytes loaded), trusting only known-safe types and ``trusted_types``; anything
    else is refused without being executed. The format is the file's suffix: ``.ubj`` is an
    XGBoost model (``XGBModel``), anything else skops."""
    what = what or str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RegistryIntegrityError(f"model file of {what} is missing ({path})") from None
    if sha256_bytes(data) != sha256:
        raise RegistryIntegrityError(f"model {what} does not match its recorded sha256; "
                                     "the file was changed after it was written")
    if Path(path).suffix == ".ubj":
        return XGBModel.from_bytes(data, what)
    return load_skops_bytes(data, trusted_types, what)


def load_skops_bytes(data: bytes, trusted_types: list[str] | None, what: str):
    import skops.io as sio  # here: it imports scikit-learn, which status and hand-offs never need

    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:
        raise RegistryIntegrityError(f"{what} is not a readable skops model file ({type(exc).__name__}); "
                                     "it may be damaged") from None
    allowed = {*OWN_TRUSTED_TYPES, *(trusted_types or [])}
    refused = [t for t in untrusted if t not in allowed and not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise RegistryIntegrityError(
            f"{what} contains types that are not trusted ({', '.join(refused[:5])}); it was not "
            "loaded. If you trust them, list them in model.trusted_types")
    try:
        return sio.loads(data, trusted=untrusted)
    except Exception as exc:
        raise RegistryIntegrityError(f"{what} could not be loaded ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


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
                                         f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}); "
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
