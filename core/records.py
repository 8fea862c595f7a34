"""Records that cross step boundaries: small, plain, JSON-serialisable.

Tasks exchange these (paths and summaries), never large DataFrames.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from core.specs import PipelineSpec, TaskType


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileRef(_Record):
    """One input file as the service hands it to the flow."""

    file_id: int
    name: str  # the name it had in the inbox
    path: str  # where it is now (processing/ for new files, archive/ for the window)
    sha256: str
    size: int
    # The files its rows came from, when the service made it (scored rows joined with their
    # late labels): the scoring batches and the labels files, by name.
    origin: list[str] = []


class ProductionMetric(_Record):
    """The metric of what a version actually served: its predictions joined with the labels
    that arrived later, over every period so far and period by period."""

    version: str
    metric: str
    value: float | None  # None when it cannot be computed (one class for roc_auc)
    rows: int  # labelled predictions of this version
    metrics: dict[str, float] = Field(default_factory=dict)  # every metric of the task
    # Period ("2026-12-06", "2026-W49", "2026-12") -> {"value", "rows"}.
    periods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # How late the labels came, in hours after the prediction: median and 90th percentile.
    label_delay_hours: dict[str, float] = Field(default_factory=dict)
    enough: bool = True  # rows >= policy.min_live_rows: a verdict can be drawn from it
    # Scoring file -> {"value", "estimated", "rows"}: the metric of its labelled rows, and what
    # the model's confidence estimated for them before the labels came (binary classifiers).
    batches: dict[str, dict[str, Any]] = Field(default_factory=dict)


class RetrainRequest(_Record):
    """The flow's one parameter: which files, which settings, where to write.

    ``kind`` says what the run does with its new files: "train" (labelled batches: monitor,
    policy, train, evaluate, deploy), "score" (unlabelled batches: predictions by the
    current model, into ``predictions_dir`` and the prediction log), "labels" (late labels:
    joined with the prediction log, the production metric, the joined rows as training data).
    """

    kind: Literal["train", "score", "labels"] = "train"
    new_files: list[FileRef]
    # Files accepted by earlier runs that are still in the training window, oldest first.
    window_files: list[FileRef] = []
    pipeline: PipelineSpec
    registry_dir: str
    cache_dir: str
    # Archived files of earlier kept batches too small for a live metric on their own
    # (fewer than policy.min_live_rows rows): the champion scores them with this batch.
    unscored_files: list[FileRef] = []
    # Rows that arrived since the champion was trained, before this batch (policy.max_new_rows).
    rows_since_champion: int = 0
    # Who asked for this run when it is not a batch of new files: it trains whatever the
    # policy says ("an operator" for `retrain run` without files).
    requested_by: str | None = None
    # Where scoring runs write predictions/<name> and the prediction log (partitioned parquet).
    predictions_dir: str | None = None
    prediction_log_dir: str | None = None
    # A backfill: predictions/<name> gets the version in its name, earlier files are kept.
    backfill: bool = False
    # The champion's production metric (its predictions joined with late labels), judged
    # first by policy.when_needed when it exists.
    production: ProductionMetric | None = None


class PartitionPlan(_Record):
    """A byte range of one file; the row that starts in [start, end) belongs to it.

    ``end == -1`` means "to the end of the file". Partition 0 starts after the header.
    """

    file: FileRef
    index: int
    count: int
    start: int
    end: int


class ResolvedSchema(_Record):
    """The schema with every inferred part filled in, shared by all partitions of a run."""

    target: str
    task: TaskType
    numeric: list[str]
    categorical: list[str]
    max_bad_row_fraction: float
    # Columns left out by inference (identifiers: text with nearly all values distinct).
    ignored: list[str] = []
    # The id column ([schema] id): names a row, never a feature.
    id: str | None = None

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class Rejection(_Record):
    """Why a file was refused, for ``<name>.error.json`` and the run summary."""

    reason: str  # one line, names the file's problem
    hint: str = ""  # what to do about it
    details: dict[str, Any] = Field(default_factory=dict)


class PartitionSummary(_Record):
    """What preprocessing one partition produced."""

    file_id: int
    file_name: str
    sha256: str
    index: int
    parquet_path: str | None  # None when the partition (and so its file) was rejected
    rows: int = 0  # rows kept
    rejected_rows: int = 0  # rows dropped as unparseable
    holdout_rows: int = 0
    cached: bool = False
    seconds: float = 0.0
    rejection: Rejection | None = None


class CandidateScore(_Record):
    """One candidate of a model search, as recorded with the version that came of it."""

    estimator: str  # the menu's name
    params: dict[str, Any]
    validation: dict[str, float] | None = None  # its metrics on the validation folds (their mean)
    validation_rows: int = 0  # the training rows it was validated on
    fit_seconds: float = 0.0  # of its validation fits
    chosen: bool = False
    error: str | None = None  # why it could not be trained


class TrainResult(_Record):
    """A fitted candidate, staged on disk (not yet a registry version)."""

    model_path: str  # its suffix names the format: .skops or .ubj (XGBoost)
    model_sha256: str
    estimator: str  # "module:Class" of the final estimator
    params: dict[str, Any]
    train_rows: int
    fit_seconds: float
    features: list[str]
    categorical: list[str]
    classes: list[Any] | None = None
    # Per categorical feature, the values seen in the training rows (sorted; the most
    # frequent ones when there are more than flows.training.train.MAX_RECORDED_CATEGORIES). None in
    # versions trained before it was recorded.
    categories: dict[str, list[str]] | None = None
    # With a model search: the chosen candidate's metrics on the validation folds, and every
    # candidate's record.
    validation: dict[str, float] | None = None
    validation_rows: int = 0
    candidates: list[CandidateScore] = []


class PairedComparison(_Record):
    """Candidate against champion on the same holdout rows: the metric's difference and a
    bootstrap interval of it (the rows resampled in pairs, seeded)."""

    metric: str
    difference: float  # candidate minus champion
    low: float  # the interval of the difference at `confidence`
    high: float
    confidence: float
    samples: int  # bootstrap resamples
    must_show: Literal["not_worse", "better"]
    rows: int = 0  # the rows compared
    margin: float | None = None  # of non-inferiority, in the metric's units


class SliceComparison(_Record):
    """The paired comparison on one part of the holdout: the new files' rows, the earlier
    window's rows (those the champion already handled), or one value of a slice feature."""

    name: str  # "new rows", "earlier rows", "region=south"
    # "prove": non-inferiority must be shown (the earlier rows); "guard": must not be shown
    # worse beyond the margin (a slice); "record": recorded only (the new rows).
    role: Literal["prove", "guard", "record"]
    rows: int
    candidate: float | None  # the metric on these rows
    champion: float | None
    comparison: PairedComparison | None  # None when the metric cannot be computed on them
    # "shown": non-inferiority shown (or superiority for must_show "better"); "not shown";
    # "worse": a regression beyond the margin shown; "recorded": not judged (new rows);
    # "too few rows": below evaluation.min_slice_rows.
    verdict: str


class SignalCheck(_Record):
    """Whether the new rows carry anything to learn, asked when the champion scores near
    chance on them: each model against a model that learned nothing (the class shares or
    the mean of these rows), paired on the new rows' holdout."""

    rows: int
    chance: float  # the metric of the no-skill model on these rows
    champion: PairedComparison | None  # champion - chance
    candidate: PairedComparison | None  # candidate - chance
    champion_near_chance: bool  # the champion is not shown better than chance
    learnable: bool  # the candidate is shown better than chance
    verdict: Literal["signal", "new_concept", "no_signal", "too_few_rows"]
    reason: str


class EvaluationResult(_Record):
    """Candidate and champion scored on the same holdout rows, and the gate's decision."""

    metric: str
    greater_is_better: bool
    threshold: float
    tolerance: float  # the margin of non-inferiority used
    holdout_rows: int
    candidate: dict[str, float]
    champion: dict[str, float] | None = None
    champion_version: str | None = None
    passed_threshold: bool
    not_worse_than_champion: bool
    deploy: bool
    reason: str  # one line: why deploy or not, with the numbers
    # The candidate's metric on the first `check_rows` holdout rows (in the window's
    # order): what the post-deploy check must reproduce from the deployed file.
    check_rows: int = 0
    check_value: float | None = None
    # The paired comparison the gate judged the champion by (None without a champion).
    comparison: PairedComparison | None = None
    # The same on the new rows, the earlier rows and each slice of `evaluation.slices`.
    slices: list[SliceComparison] = Field(default_factory=list)
    # Whether the new rows carry a signal (asked when the champion is near chance on them).
    signal: SignalCheck | None = None
    # The batch carries nothing to learn: never deployed, its files set aside.
    no_signal: bool = False


class ModelVersion(_Record):
    """One registry entry (the content of ``registry/<version>/metadata.json``)."""

    version: str
    path: str
    created_at: str
    flow_run_id: str | None = None
    model_file: str = "model.skops"  # model.skops or model.ubj (XGBoost)
    model_sha256: str
    metrics: dict[str, float] = Field(default_factory=dict)
    champion_metrics: dict[str, float] | None = None
    # "cancelled": its run was cancelled by an operator (rolled back if it had been deployed);
    # "no_signal": its batch carried nothing to learn (never deployed).
    decision: Literal["deployed", "rejected", "no_signal", "deploy_failed", "cancelled", "pending"] = "pending"
    reason: str = ""
    # Where it came from and how it was made: the gate's metric and evaluation, its training,
    # schema, data files, reference statistics, config and library versions. Versions written
    # before it had this name call it "metadata".
    lineage: dict[str, Any] = Field(default_factory=dict, validation_alias=AliasChoices("lineage", "metadata"))
    # When retention removed the version's files (its record lives on in the ledger).
    removed_at: str | None = None


class LiveMetric(_Record):
    """The champion scored on rows it has never seen: every row of the batch's new files
    (and of earlier small batches carried over), before any training."""

    version: str  # the champion
    metric: str  # the gate's metric
    value: float | None  # None when it cannot be computed (one class for roc_auc)
    rows: int
    metrics: dict[str, float]  # every metric of the task
    file_ids: list[int]  # the files whose rows were scored
    enough: bool  # rows >= policy.min_live_rows: the policy may act on it


class DriftReport(_Record):
    """How far the scored rows moved from the champion's training rows, per feature."""

    statistic: str = "psi"  # population stability index over the reference's bins
    scores: dict[str, float]  # feature -> drift, largest first
    label: float | None = None  # the same statistic for the label's distribution
    rows: int


class PolicyDecision(_Record):
    """Whether this batch trains, and why."""

    retrain: bool
    # What called for training: no_champion, live_metric, drift, new_rows, age, operator,
    # always (the policy). Empty when the champion is kept.
    triggers: list[str] = Field(default_factory=list)
    reason: str  # one line with the numbers
    # When the policy is "always": what "when_needed" would have decided, with its reason.
    when_needed: str | None = None


class LabelsReport(_Record):
    """What a labels run made of its labels."""

    rows: int = 0  # label rows read
    joined: int = 0  # matched a logged prediction
    unknown_ids: int = 0  # no prediction with that id in the log (expired, or never scored)
    duplicate_ids: int = 0  # an id labelled twice in these files (the first label counts)
    relabelled: int = 0  # an id labelled by an earlier labels file (the earlier label counts)
    unparseable: int = 0  # a label that is not a value of the task (empty, not a number)
    examples: dict[str, list[str]] = Field(default_factory=dict)  # a few ids/values per kind
    # The joined rows as a training file (features of the scoring batches, the labels), and
    # the files they came from: the service takes it in like a labelled file.
    training_file: str | None = None
    origin: list[str] = Field(default_factory=list)


class FileOutcome(_Record):
    file_id: int
    name: str
    accepted: bool
    rows: int = 0
    rejected_rows: int = 0
    rejection: Rejection | None = None


class RunOutcome(_Record):
    """What the flow returns to the service."""

    flow_run_id: str | None
    decision: Literal["deployed", "rejected", "no_signal", "kept", "no_valid_data", "not_trained", "deploy_failed",
                      "scored", "labelled"]
    reason: str
    files: list[FileOutcome]
    model_version: str | None = None
    metric: str | None = None
    candidate_metrics: dict[str, float] | None = None
    champion_metrics: dict[str, float] | None = None
    train_rows: int = 0
    holdout_rows: int = 0
    window_files: int = 0
    # Wall time of each stage of the flow (schema, preprocess, train, evaluate, register,
    # deploy), orchestration included: where a run's time went.
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    # The window's cached partitions: retention keeps these and removes the others.
    window_partitions: list[str] = Field(default_factory=list)
    live: LiveMetric | None = None
    drift: DriftReport | None = None
    policy: PolicyDecision | None = None
    comparison: PairedComparison | None = None
    # Files whose rows no live metric has judged yet (a kept batch below min_live_rows):
    # the next run scores them with its own.
    unscored_file_ids: list[int] = Field(default_factory=list)
    requested_by: str | None = None
    # A scoring run: each file's predictions file (file id -> path) and the version that made
    # them; and the metrics its confidence estimates before the labels come (binary classifiers).
    predictions: dict[int, str] = Field(default_factory=dict)
    estimated: dict[str, float] = Field(default_factory=dict)
    # A labels run: the production metric of every version with labelled predictions, what
    # became of the labels, and the joined rows (features + labels) to train on.
    production: list[ProductionMetric] = Field(default_factory=list)
    labels: LabelsReport | None = None
