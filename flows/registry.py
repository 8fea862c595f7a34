"""The model registry: immutable versions and an atomically switched ``current``.

Layout under the registry root::

    v0001/model.skops      the fitted Pipeline (skops: loading runs no code)
    v0001/metadata.json    ModelVersion: metrics, decision, lineage, config, versions
    current                symlink -> v0001, switched with os.replace of a temporary link
    .staging/              half-written versions; never visible, removed at start

A version directory appears only by an atomic rename of a complete, fsynced directory,
so readers never see a half-written version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.records import ModelVersion


class ModelRegistry:
    def __init__(self, root: str | Path):
        raise NotImplementedError

    def staging_path(self, name: str) -> Path:
        """A fresh path under .staging/ for a candidate model file being written."""
        raise NotImplementedError

    def register(self, model_file: str | Path, metadata: dict[str, Any]) -> ModelVersion:
        """Copy/move the staged model into a new version directory (next number, zero-padded
        "v0001"), with metadata.json holding ModelVersion fields (model_sha256 computed
        here); fsync files and directories; rename into place. Decision starts "pending"."""
        raise NotImplementedError

    def update(self, version: str, **fields: Any) -> ModelVersion:
        """Rewrite metadata.json of a version (decision, reason...) atomically."""
        raise NotImplementedError

    def versions(self) -> list[ModelVersion]:
        """Every complete version, oldest first."""
        raise NotImplementedError

    def get(self, version: str) -> ModelVersion:
        """Raises ModelNotFoundError with the known versions in the message."""
        raise NotImplementedError

    def current(self) -> ModelVersion | None:
        raise NotImplementedError

    def promote(self, version: str) -> str | None:
        """Point ``current`` at ``version`` atomically (temporary symlink + os.replace +
        fsync of the directory). Returns the previous current version (or None)."""
        raise NotImplementedError

    def load_model(self, version: str, trusted_types: list[str] | None = None):
        """Load a version's model: check its sha256 against the metadata, refuse types that
        are not trusted (skops.io.get_untrusted_types; only scikit-learn/numpy/scipy types
        and ``trusted_types`` are accepted), then skops.io.load(trusted=[...]).
        Raises RegistryIntegrityError with a one-line reason."""
        raise NotImplementedError

    def clean_staging(self) -> list[str]:
        """Remove half-written staging entries (crash leftovers); returns what was removed."""
        raise NotImplementedError
