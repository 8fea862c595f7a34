"""The model a prediction server answers with, swapped whole when ``current`` moves.

Each request reads where ``current`` points (one readlink). When it moved, one background
thread loads the new version completely (hash-checked, through the registry) while requests
keep being answered by the old one; then one assignment swaps it in. A request holds on to
the ``LoadedModel`` it started with, so it is always answered by one whole model. When
``current`` is removed (rolled back to nothing), the last model keeps serving; a version
that cannot be loaded is logged once and the previous one keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from core.errors import ModelNotFoundError, RetrainError
from core.records import ModelVersion, ResolvedSchema
from flows.models.registry import ModelRegistry

log = logging.getLogger("retrain.serve")


@dataclass(frozen=True)
class LoadedModel:
    version: str
    model: Any  # anything with predict (and predict_proba/classes_ for classifiers)
    schema: ResolvedSchema
    record: ModelVersion
    categories: dict[str, list[str]]  # per categorical feature, the values seen in training
    current_since: float | None  # when `current` was switched to it (deploy or rollback)
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0

    @property
    def classes(self) -> list[Any]:
        """The labels a classifier's probabilities are given for (none for a regressor)."""
        if self.schema.task != "classification" or not hasattr(self.model, "predict_proba"):
            return []
        return [c.item() if hasattr(c, "item") else c for c in getattr(self.model, "classes_", [])]


class ModelHolder:
    """The model being served; swapped whole when ``current`` moves."""

    def __init__(self, registry: ModelRegistry, trusted_types: list[str],
                 on_swap: Callable[[str | None, LoadedModel], None] | None = None,
                 on_failure: Callable[[str], None] | None = None):
        self.registry = registry
        self.trusted_types = trusted_types
        self.on_swap = on_swap  # (previous version, the model swapped in)
        self.on_failure = on_failure  # (the version that cannot be loaded)
        self._loaded: LoadedModel | None = None
        self._loading = threading.Lock()  # one load at a time
        self._failed: dict[str, str] = {}  # version -> why it cannot be loaded

    @property
    def serving(self) -> LoadedModel | None:
        """The model loaded now, without looking at ``current``."""
        return self._loaded

    def get(self) -> LoadedModel | None:
        """The model to answer with now; None while no version was ever deployed. Raises
        RetrainError when a version is deployed but none could be loaded yet."""
        version = self.registry.current_version()
        loaded = self._loaded
        if version is None or (loaded is not None and loaded.version == version):
            return loaded
        if version in self._failed:
            if loaded is None:
                raise RetrainError(self._failed[version])
            return loaded
        if loaded is None:  # nothing to answer with meanwhile: wait for the load
            with self._loading:
                if self._loaded is None or self._loaded.version != version:
                    self._swap_in(version)
            if self._loaded is None:
                raise RetrainError(self._failed[version])
            return self._loaded
        if self._loading.acquire(blocking=False):
            threading.Thread(target=self._swap_in_background, args=(version,), name=f"load-{version}",
                             daemon=True).start()
        return loaded

    def _swap_in_background(self, version: str) -> None:
        try:
            self._swap_in(version)
        finally:
            self._loading.release()

    def _swap_in(self, version: str) -> None:
        started = time.perf_counter()
        try:
            loaded = self._load(version)
        except RetrainError as exc:
            self._failed[version] = f"deployed version {version} cannot be served: {exc}"
            log.error("%s%s", self._failed[version],
                      f"; still serving {self._loaded.version}" if self._loaded else "")
            if self.on_failure is not None:
                self.on_failure(version)
            return
        loaded = replace(loaded, load_seconds=time.perf_counter() - started)
        previous, self._loaded = self._loaded, loaded
        log.info("serving model %s (loaded in %.2fs)", version, loaded.load_seconds)
        if self.on_swap is not None:
            self.on_swap(previous.version if previous else None, loaded)

    def _load(self, version: str) -> LoadedModel:
        record = self.registry.get(version)
        switched = self.registry.switched_at()
        model = self.registry.load_model(version, self.trusted_types)
        try:
            schema = ResolvedSchema.model_validate(record.lineage["schema"])
        except (KeyError, ValidationError):
            raise ModelNotFoundError(f"version {version} has no readable schema in its metadata") from None
        return LoadedModel(version=version, model=model, schema=schema, record=record,
                           categories=training_categories(record.lineage, model, schema),
                           current_since=switched)


def training_categories(metadata: Mapping[str, Any], model: Any, schema: ResolvedSchema) -> dict[str, list[str]]:
    """Per categorical feature, the values seen in training: as recorded with the version,
    or, for versions trained before that was recorded, from the one-hot encoder of the
    scikit-learn Pipeline (an empty list when neither knows them)."""
    recorded = (metadata.get("training") or {}).get("categories")
    if recorded is None:
        recorded = _encoder_categories(model, schema)
    return {column: [str(v) for v in recorded.get(column, [])] for column in schema.categorical}


def _encoder_categories(model: Any, schema: ResolvedSchema) -> dict[str, list[str]]:
    try:
        encoder = (model.named_steps["prepare"].named_transformers_["categorical"]
                   .named_steps["onehot"])
        return {column: sorted(str(v) for v in values if isinstance(v, str))
                for column, values in zip(schema.categorical, encoder.categories_)}
    except (AttributeError, KeyError, TypeError):
        return {}
