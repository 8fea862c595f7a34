"""Model files: written in formats whose loading runs no code, and loaded only when their
bytes hash to what was recorded.

- skops (``model.skops``): scikit-learn Pipelines, loaded with an explicit list of trusted
  types (scikit-learn, numpy, scipy, the named classes of ours below, and
  ``model.trusted_types``); anything else is refused without being executed.
- XGBoost's UBJSON (``model.ubj``): a booster and, in its attributes, what ``XGBModel``
  needs to prepare feature rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import RegistryIntegrityError, one_line
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
        from flows.models.xgbmodel import (
            XGBModel,  # here: it imports pandas, which status never needs
        )

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
        raise RegistryIntegrityError(f"{what} could not be loaded ({one_line(exc)})") from None


