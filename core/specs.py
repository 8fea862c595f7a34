"""Settings of the pipeline's steps.

These sections are part of the service's one config object (``service.config``), but
are defined here so that the flow can take them as parameters without importing the
service. Every field has a default; ``config/retrain.toml`` documents each one.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TaskType = Literal["classification", "regression"]

# The estimator menu: name -> "module:Class" for classification and regression.
ESTIMATORS: dict[str, dict[str, str]] = {
    "logistic_regression": {"classification": "sklearn.linear_model:LogisticRegression"},
    "ridge": {
        "classification": "sklearn.linear_model:RidgeClassifier",
        "regression": "sklearn.linear_model:Ridge",
    },
    "random_forest": {
        "classification": "sklearn.ensemble:RandomForestClassifier",
        "regression": "sklearn.ensemble:RandomForestRegressor",
    },
    "hist_gradient_boosting": {
        "classification": "sklearn.ensemble:HistGradientBoostingClassifier",
        "regression": "sklearn.ensemble:HistGradientBoostingRegressor",
    },
    "linear_regression": {"regression": "sklearn.linear_model:LinearRegression"},
    # Not a scikit-learn estimator: trained across the Dask cluster by flows.training.xgb.
    "xgboost": {"classification": "flows.training.xgb:train_xgboost", "regression": "flows.training.xgb:train_xgboost"},
}
# Estimators trained across the whole cluster (their own step), not inside one task.
DISTRIBUTED_ESTIMATORS = frozenset({"xgboost"})

# What `hist_gradient_boosting` fits when the config gives it no params: shallow trees
# (depth 3) that stop early on their own held-out tenth. Of the search's candidates it has
# the best worst case across the real data sets (benchmarks/real-data-candidates.md: never
# shown behind scikit-learn's defaults, well ahead on the small and noisy ones), and on the
# large sample data it scores the same at about 1.6 times the defaults' fit time (more,
# smaller trees).
_STOP_EARLY = {"early_stopping": True, "n_iter_no_change": 20}
DEFAULT_BOOSTING_PARAMS: dict[str, Any] = {"max_depth": 3, "max_iter": 300, **_STOP_EARLY}

# A sensible model search per task, for `[[model.candidates]]` (see config/retrain.toml):
# gradient boosting as scikit-learn has it, a smaller and more regularised one (noisy or
# small data), a larger one (many interactions), the default's shallow one, a linear model
# (small data, near-linear signal) and a forest. The boosted ones past scikit-learn's
# defaults stop early on their own held-out tenth, so their many iterations cost only what
# the data can use.
_TREES: list[dict[str, Any]] = [
    {"estimator": "hist_gradient_boosting", "params": {}},
    {"estimator": "hist_gradient_boosting",
     "params": {"learning_rate": 0.05, "max_iter": 500, "max_leaf_nodes": 7, "min_samples_leaf": 40,
                "l2_regularization": 1.0, **_STOP_EARLY}},
    {"estimator": "hist_gradient_boosting",
     "params": {"learning_rate": 0.05, "max_iter": 800, "max_leaf_nodes": 127, "min_samples_leaf": 10,
                "l2_regularization": 0.1, **_STOP_EARLY}},
    {"estimator": "hist_gradient_boosting", "params": dict(DEFAULT_BOOSTING_PARAMS)},
]
_FOREST = {"estimator": "random_forest", "params": {"n_estimators": 100, "min_samples_leaf": 5, "max_features": 0.5}}
DEFAULT_CANDIDATES: dict[TaskType, list[dict[str, Any]]] = {
    "classification": [*_TREES, {"estimator": "logistic_regression", "params": {"C": 1.0, "max_iter": 1000}},
                       _FOREST],
    "regression": [*_TREES, {"estimator": "ridge", "params": {"alpha": 1.0}}, _FOREST],
}

# metric name -> (task, greater_is_better)
METRICS: dict[str, tuple[TaskType, bool]] = {
    "accuracy": ("classification", True),
    "balanced_accuracy": ("classification", True),
    "f1": ("classification", True),
    "roc_auc": ("classification", True),
    "r2": ("regression", True),
    "rmse": ("regression", False),
    "mae": ("regression", False),
}
DEFAULT_METRIC: dict[TaskType, str] = {"classification": "roc_auc", "regression": "r2"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SchemaSpec(_Section):
    """What the data looks like."""

    target: str = "churned"
    task: TaskType = "classification"
    # Empty: every column except the target and `drop`.
    features: list[str] = Field(default_factory=list)
    # None: inferred (columns whose values are text). [] means "no categorical columns".
    categorical: list[str] | None = None
    drop: list[str] = Field(default_factory=list)
    # Rows that cannot be parsed are dropped and counted; above this share the file is rejected.
    max_bad_row_fraction: float = Field(0.05, ge=0.0, le=1.0)
    # The column that names a row (a customer, a transaction): the id its prediction is
    # logged under and its late label is joined by. None: scored rows get an id made of the
    # file's sha256 and the row's number. Never a feature.
    id: str | None = None

    @model_validator(mode="after")
    def _target_not_a_feature(self) -> "SchemaSpec":
        if self.target in self.features:
            raise ValueError(f"the target {self.target!r} cannot also be listed in features")
        if self.id is not None and (self.id == self.target or self.id in self.features):
            raise ValueError(f"the id column {self.id!r} cannot also be the target or a feature")
        return self


def _known(value: str) -> str:
    if value not in ESTIMATORS:
        raise ValueError(f"expected one of {', '.join(sorted(ESTIMATORS))}")
    return value


class CandidateSpec(_Section):
    """One candidate of a model search: an estimator of the menu and its parameters."""

    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, value: str) -> str:
        return _known(value)


class ModelSpec(_Section):
    """Which estimator to fit: a name from the menu, or a user's `module:function` factory;
    or, with ``candidates``, the best of several on a validation split."""

    estimator: str = "hist_gradient_boosting"
    params: dict[str, Any] = Field(default_factory=dict)
    factory: str | None = None
    # Extra types (fully qualified names) trusted when loading a factory's model with skops.
    trusted_types: list[str] = Field(default_factory=list)
    random_state: int = 0
    # Threads for fitting and scoring; 0: every core of the machine the task runs on. Dask
    # workers give numeric libraries one thread each, but nothing else runs beside training.
    threads: int = Field(0, ge=0)
    # A model search: each candidate is cross-validated (in parallel) on the training rows,
    # and the best, trained on every training row, goes to the gate. Empty: one estimator,
    # the one above, trained on every training row.
    candidates: list[CandidateSpec] = Field(default_factory=list)
    # The folds of the training rows (never the gate's holdout) that candidates are
    # cross-validated on; XGBoost is validated on the first only.
    validation_folds: int = Field(4, ge=2, le=20)
    # No further candidate is started once the search has run this long (seconds); those
    # left are recorded as not tried, and the best of the others is trained.
    search_seconds: float = Field(600.0, gt=0.0)

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, value: str) -> str:
        return _known(value)

    @model_validator(mode="before")
    @classmethod
    def _default_boosting_params(cls, data: Any) -> Any:
        """Boosting with no params given fits DEFAULT_BOOSTING_PARAMS; any params given are
        passed as they are, over scikit-learn's own defaults."""
        if (isinstance(data, dict) and "params" not in data and data.get("factory") is None
                and data.get("estimator", "hist_gradient_boosting") == "hist_gradient_boosting"):
            return {**data, "params": dict(DEFAULT_BOOSTING_PARAMS)}
        return data

    def candidate_specs(self) -> list["ModelSpec"]:
        """What the train step fits: one spec per candidate (this spec with the candidate's
        estimator and params), or this spec alone when there is no search."""
        if not self.candidates:
            return [self]
        return [self.model_copy(update={"estimator": c.estimator, "params": c.params, "factory": None,
                                        "candidates": []})
                for c in self.candidates]

    @property
    def validation_fraction(self) -> float:
        """The share of the training rows in one validation fold."""
        return 1.0 / self.validation_folds

    @property
    def distributed(self) -> bool:
        return self.factory is None and self.estimator in DISTRIBUTED_ESTIMATORS

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str | None) -> str | None:
        if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
            raise ValueError("expected 'module:function', e.g. 'my_models:make_estimator'")
        return value


# The gate's default margin of non-inferiority per metric (``evaluation.tolerance`` unset):
# the loss a careful operator accepts for a model trained on more recent data. One point of
# AUC, accuracy, balanced accuracy or R² is about the spread of those metrics between two
# fits of the same model on resampled data of a few thousand rows, and far below what any
# user notices; f1 moves about twice as much with the decision threshold, so two points.
# rmse and mae are in the target's units: their margin is relative, 2% of the champion's
# value on the rows compared (see ``EvaluationSpec.margin``).
DEFAULT_TOLERANCE: dict[str, float] = {"roc_auc": 0.01, "accuracy": 0.01, "balanced_accuracy": 0.01,
                                       "f1": 0.02, "r2": 0.01}
RELATIVE_TOLERANCE: dict[str, float] = {"rmse": 0.02, "mae": 0.02}


class EvaluationSpec(_Section):
    """How a candidate is judged."""

    metric: str | None = None  # None: roc_auc for classification, r2 for regression
    threshold: float = 0.6
    # The margin of non-inferiority, in the metric's units. None: the metric's default
    # (DEFAULT_TOLERANCE; 2% of the champion's value for rmse and mae).
    tolerance: float | None = Field(None, ge=0.0)
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    min_holdout_rows: int = Field(20, ge=1)
    # What the candidate must show against the champion, judged by a paired bootstrap of the
    # metric's difference on the shared holdout rows: "not_worse" (deployed only when the
    # interval's bound on the side of "worse" lies above -margin: non-inferiority shown) or
    # "better" (deployed only when it lies above +margin: superiority shown).
    must_show: Literal["not_worse", "better"] = "not_worse"
    # Of the two-sided interval; its lower bound is a one-sided test at (1 - confidence) / 2,
    # the usual 2.5% of non-inferiority trials.
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    # Categorical features whose every value with at least `min_slice_rows` holdout rows is a
    # slice of its own: a candidate shown worse than the champion beyond the margin on one is
    # refused.
    slices: list[str] = Field(default_factory=list)
    min_slice_rows: int = Field(200, ge=1)
    # New rows' holdout rows needed to tell a batch with nothing to learn (noise) from a new
    # concept when the champion scores near chance on them; fewer give no verdict.
    min_signal_rows: int = Field(100, ge=1)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is not None and value not in METRICS:
            raise ValueError(f"expected one of {', '.join(METRICS)}")
        return value

    def metric_for(self, task: TaskType) -> str:
        return self.metric or DEFAULT_METRIC[task]

    def margin(self, metric: str, champion_value: float | None = None) -> float:
        """The margin of non-inferiority for ``metric``: ``tolerance`` when set, else the
        metric's default (``default_margin``)."""
        return self.tolerance if self.tolerance is not None else default_margin(metric, champion_value)


def default_margin(metric: str, reference: float | None = None) -> float:
    """The metric's default margin (DEFAULT_TOLERANCE), relative to ``reference`` for rmse
    and mae. The signal check uses it whatever ``tolerance`` says: a wide tolerance set to
    let candidates through must not make "better than chance" impossible to show."""
    if metric in RELATIVE_TOLERANCE:
        value = reference if reference is not None and reference == reference else 0.0
        return RELATIVE_TOLERANCE[metric] * abs(value)
    return DEFAULT_TOLERANCE[metric]


class WindowSpec(_Section):
    """Which data a model is trained on."""

    # 0: every file accepted so far; N: the newest N files (the current batch included).
    last_files: int = Field(0, ge=0)


class PreprocessSpec(_Section):
    """How files are cut into partitions for parallel preprocessing."""

    rows_per_partition: int = Field(200_000, ge=1_000)


class DeploySpec(_Section):
    """How a winning model is deployed."""

    retries: int = Field(3, ge=0)
    retry_delay_seconds: float = Field(1.0, ge=0.0)
    # Rows of the holdout re-scored by the post-deploy check.
    check_rows: int = Field(1000, ge=1)
    # Optional hooks run after the switch, retried like the deploy; a failing hook rolls back.
    hook_command: str | None = None
    hook_url: str | None = None
    hook_timeout_seconds: float = Field(30.0, gt=0.0)


# "7d", "12h", "30m", "45s", "2w": a duration as the config writes it.
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_seconds(text: str) -> float | None:
    """Seconds of a duration such as "7d" or "12h"; None for "" (off)."""
    if not text.strip():
        return None
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"expected a duration such as '7d', '12h', '30m' or '' (off), got {text!r}")
    return float(match.group(1)) * _SECONDS[match.group(2)]


class PolicySpec(_Section):
    """When a batch leads to training: every batch, or only when the deployed model needs it."""

    # "always": every batch with new data trains a candidate. "when_needed": only when a
    # trigger below holds; otherwise the batch is kept (archived into the window, no version).
    retrain: Literal["always", "when_needed"] = "always"
    # The bar of the champion's live metric (the gate's metric on the batch's new rows).
    # None: the gate's threshold. For rmse and mae it is a ceiling.
    min_live_metric: float | None = None
    # Fewer new rows than this give no verdict: they are kept and scored with the next batches.
    min_live_rows: int = Field(200, ge=1)
    # Retrain when a feature's drift (population stability index) is above this. None: off.
    max_drift: float | None = Field(None, gt=0.0)
    # Retrain once this many rows arrived since the champion was trained. 0: off.
    max_new_rows: int = Field(0, ge=0)
    # Retrain when the champion is older than this ("7d", "12h"...). "": off.
    max_age: str = ""
    # A cron schedule ("0 2 * * *": every night at 2:00) of retrains on the current window
    # beside the batches, registered as the schedule of the daemon's Prefect deployment.
    # "": none.
    schedule: str = ""
    # The time zone the schedule is read in (IANA name, e.g. "Europe/Paris").
    timezone: str = "UTC"

    @field_validator("max_age")
    @classmethod
    def _duration(cls, value: str) -> str:
        duration_seconds(value)
        return value

    @property
    def max_age_seconds(self) -> float | None:
        return duration_seconds(self.max_age)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        # The five fields only; Prefect checks each field when the daemon registers it.
        if value.strip() and len(value.split()) != 5:
            raise ValueError("expected a cron schedule of five fields such as '0 2 * * *', or '' (none)")
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("expected an IANA time zone such as 'UTC' or 'Europe/Paris'") from None
        return value


class PredictionsSpec(_Section):
    """Scoring batches and the prediction log."""

    # predictions/<name>: "csv", or "parquet" (predictions/<name>.parquet).
    format: Literal["csv", "parquet"] = "csv"
    # Days a scored row stays in the prediction log, waiting for its label (0: forever).
    keep_days: float = Field(90.0, ge=0.0)
    # Production metric periods: "day", "week" or "month" of the time a row was scored.
    period: Literal["day", "week", "month"] = "day"


class PipelineSpec(_Section):
    """Everything the flow needs to know from the config."""

    schema_: SchemaSpec = Field(default_factory=SchemaSpec, alias="schema")
    model: ModelSpec = Field(default_factory=ModelSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    window: WindowSpec = Field(default_factory=WindowSpec)
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    deploy: DeploySpec = Field(default_factory=DeploySpec)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    predictions: PredictionsSpec = Field(default_factory=PredictionsSpec)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _metric_fits_task(self) -> "PipelineSpec":
        task = self.schema_.task
        metric = self.evaluation.metric_for(task)
        if METRICS[metric][0] != task:
            raise ValueError(f"evaluation.metric {metric!r} is not a {task} metric")
        for column in self.evaluation.slices:
            if column == self.schema_.target or column in self.schema_.drop or \
                    (self.schema_.features and column not in self.schema_.features):
                raise ValueError(f"evaluation.slices: {column!r} is not a feature; slices are categorical features")
        names = [("model.estimator", self.model.estimator)] if self.model.factory is None else []
        names += [(f"model.candidates[{i}].estimator", c.estimator) for i, c in enumerate(self.model.candidates)]
        for key, name in names:
            if task not in ESTIMATORS[name]:
                raise ValueError(f"{key} {name!r} has no {task} variant; choose one of "
                                 + ", ".join(sorted(n for n, v in ESTIMATORS.items() if task in v)))
        return self
