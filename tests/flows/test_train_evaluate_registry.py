"""Training, the gate, the registry and deployment as plain functions on real files."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from flow_fixtures import (
    CLASSIFY,
    FAST,
    REGRESS,
    TRAINED,
    load,
    load_unchecked,
    partitions,
    register,
    registry_of,
)

from core.errors import (
    ConfigError,
    DeployError,
    ModelNotFoundError,
    RegistryIntegrityError,
    TrainingError,
)
from core.files import sha256_file
from core.records import FileRef, TrainResult
from core.specs import EvaluationSpec, ModelSpec
from flows.data.preprocess import plan_partitions, preprocess_partition
from flows.data.window import Window
from flows.judging.evaluate import decide, evaluate_against_champion
from flows.models.deploy import post_deploy_check, rollback
from flows.models.modelfile import MODEL_FILE, load_model_file
from flows.models.registry import ModelRegistry
from flows.models.scoring import score
from flows.training.train import build_estimator, early_stopping_split, train_candidate
from service.sample import sample_frame

# -- training ---------------------------------------------------------------------------------

def test_training_is_deterministic_and_scores_well(tmp_path: Path) -> None:
    paths = partitions(tmp_path, CLASSIFY)
    spec = ModelSpec(estimator="random_forest", params={"n_estimators": 20})
    first = train_candidate(Window(paths, CLASSIFY), spec, tmp_path / "a.skops")
    second = train_candidate(Window(paths, CLASSIFY), spec, tmp_path / "b.skops")
    assert first.train_rows == second.train_rows and 3000 < first.train_rows < 3400
    assert first.classes == ["0", "1"] and first.params["random_state"] == 0
    holdout = pd.concat(pd.read_parquet(p) for p in paths)
    holdout = holdout[holdout["__holdout"]]
    a, b = load(first), load(second)
    assert score(a, holdout, CLASSIFY) == score(b, holdout, CLASSIFY)
    assert score(a, holdout, CLASSIFY)["roc_auc"] > 0.75


def test_early_stopping_rows_are_set_apart_as_the_estimator_would_and_placed_last(tmp_path: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    y = np.array([1] * 4000 + [0] * 16000)
    order, fit_rows = early_stopping_split(HistGradientBoostingClassifier(random_state=0), y, "classification")
    assert sorted(order.tolist()) == list(range(20000)) and fit_rows == 18000  # validation_fraction 0.1
    held = y[order[fit_rows:]]
    assert held.sum() == 400  # stratified: a fifth of them positive, as in the whole
    again, _ = early_stopping_split(HistGradientBoostingClassifier(random_state=0), y, "classification")
    assert (again == order).all()
    # No held-out rows where the estimator would not stop early on a fraction of them.
    assert early_stopping_split(HistGradientBoostingClassifier(), y[:10500], "classification") == (None, 10500)
    assert early_stopping_split(HistGradientBoostingClassifier(early_stopping=False), y, "classification") == \
        (None, 20000)
    assert early_stopping_split(HistGradientBoostingClassifier(validation_fraction=None), y, "classification") == \
        (None, 20000)

    # The default estimator on a window above 10,000 training rows stops early on those rows.
    paths = partitions(tmp_path, CLASSIFY, rows=16000)
    result = train_candidate(Window(paths, CLASSIFY), ModelSpec(), tmp_path / "m.skops")
    estimator = load(result).steps[-1][1]
    assert result.train_rows > 12000 and len(estimator.validation_score_) == estimator.n_iter_ + 1
    assert estimator.n_iter_ < 100  # it stopped before max_iter


def test_unknown_estimator_parameter_names_what_is_accepted() -> None:
    with pytest.raises(ConfigError, match=r"model.params max_depht not accepted by LogisticRegression"):
        build_estimator(ModelSpec(estimator="logistic_regression", params={"max_depht": 3}), "classification")
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_estimator(ModelSpec(factory="no_such_module:make"), "classification")


def test_one_class_window_cannot_train(tmp_path: Path) -> None:
    frame = sample_frame(500, 3)
    frame["churned"] = 1
    path = tmp_path / "one.csv"
    frame.to_csv(path, index=False)
    ref = FileRef(file_id=1, name="one.csv", path=str(path), sha256=sha256_file(path), size=path.stat().st_size)
    summary = preprocess_partition(plan_partitions(ref, 200_000)[0], CLASSIFY, tmp_path / "c", 0.2)
    with pytest.raises(TrainingError, match="only one class"):
        train_candidate(Window([summary.parquet_path], CLASSIFY), FAST, tmp_path / "m.skops")


def test_regression_metrics_and_multiclass_auc(tmp_path: Path) -> None:
    paths = partitions(tmp_path, REGRESS)
    result = train_candidate(Window(paths, REGRESS), ModelSpec(estimator="ridge"), tmp_path / "r.skops")
    holdout = pd.concat(pd.read_parquet(p) for p in paths)
    scores = score(load(result), holdout[holdout["__holdout"]], REGRESS)
    assert set(scores) == {"r2", "rmse", "mae"} and scores["r2"] > 0.8 and 0 < scores["mae"] < scores["rmse"]

    multi = CLASSIFY.model_copy(update={"target": "plan", "categorical": ["region"]})
    paths = partitions(tmp_path / "multi", multi, seed=2)
    result = train_candidate(Window(paths, multi), FAST, tmp_path / "m.skops")
    holdout = pd.concat(pd.read_parquet(p) for p in paths)
    scores = score(load(result), holdout[holdout["__holdout"]], multi)
    assert set(scores) == {"accuracy", "balanced_accuracy", "f1", "roc_auc"}
    assert 0.4 < scores["roc_auc"] <= 1.0


# -- the gate ---------------------------------------------------------------------------------

def test_gate_threshold_and_tolerance_at_the_edge() -> None:
    spec = EvaluationSpec(threshold=0.7, tolerance=0.02)
    first = decide({"roc_auc": 0.75}, None, spec, "classification", 100)
    assert first.deploy and "no champion" in first.reason
    assert not decide({"roc_auc": 0.69}, None, spec, "classification", 100).deploy
    # Exactly at champion - tolerance is "not worse"; a hair below is.
    edge = decide({"roc_auc": 0.78}, {"roc_auc": 0.80}, spec, "classification", 100, "v0001")
    assert edge.deploy, edge.reason
    below = decide({"roc_auc": 0.7799}, {"roc_auc": 0.80}, spec, "classification", 100, "v0001")
    assert not below.deploy and not below.not_worse_than_champion and below.passed_threshold
    assert "worse than the champion" in below.reason and "v0001 0.8000" in below.reason
    nan = decide({"roc_auc": float("nan")}, None, spec, "classification", 100)
    assert not nan.deploy and "could not be computed" in nan.reason


def test_gate_lower_is_better_for_errors() -> None:
    spec = EvaluationSpec(metric="rmse", threshold=10.0, tolerance=0.5)
    assert decide({"rmse": 9.0}, {"rmse": 8.6}, spec, "regression", 50, "v0002").deploy
    worse = decide({"rmse": 9.2}, {"rmse": 8.6}, spec, "regression", 50, "v0002")
    assert not worse.deploy and "9.2000 > champion v0002 8.6000 + margin 0.5000" in worse.reason
    too_high = decide({"rmse": 10.5}, None, spec, "regression", 50)
    assert not too_high.deploy and "rmse 10.5000 > threshold 10.0000" in too_high.reason


def test_candidate_and_champion_scored_on_the_same_rows(tmp_path: Path) -> None:
    paths = partitions(tmp_path, CLASSIFY)
    window = Window(paths, CLASSIFY)
    good = train_candidate(window, FAST, tmp_path / "good.skops")
    noisy_paths = partitions(tmp_path / "noisy", CLASSIFY, seed=5, noise=0.5)
    noisy = train_candidate(Window(noisy_paths, CLASSIFY), FAST, tmp_path / "noisy.skops")
    spec = EvaluationSpec(threshold=0.6)
    registry = ModelRegistry(tmp_path / "registry")
    champion = register(registry, good.model_path)
    result = evaluate_against_champion(noisy, champion, window, spec, registry, [])
    assert not result.deploy and result.champion["roc_auc"] > result.candidate["roc_auc"]
    same = evaluate_against_champion(good, champion, window, spec, registry, [])
    assert same.deploy and same.candidate == same.champion
    assert same.check_rows == min(1000, same.holdout_rows) and same.check_value is not None


# -- the registry -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("trained")
    paths = partitions(folder, CLASSIFY, rows=2000)
    result = train_candidate(Window(paths, CLASSIFY), FAST, folder / "model.skops")
    return Path(result.model_path), paths


def test_versions_are_numbered_and_current_switches(tmp_path: Path, trained) -> None:
    model, _ = trained
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.current() is None and registry.versions() == []
    v1 = register(registry, str(model), roc_auc=0.8)
    v2 = register(registry, str(model), "rejected", roc_auc=0.7)
    assert (v1.version, v2.version) == ("v0001", "v0002")
    assert registry.promote("v0001") is None
    assert registry.promote("v0002") == "v0001" and registry.current().version == "v0002"
    assert registry.get("v0001").model_sha256 == sha256_file(model)
    with pytest.raises(ModelNotFoundError, match="no model version 'v0009'; known versions: v0001, v0002"):
        registry.get("v0009")
    # Rolling back without a name goes to the newest earlier *deployed* version.
    assert registry.rollback_to() == ("v0002", "v0001")
    with pytest.raises(ModelNotFoundError, match="no earlier deployed version"):
        registry.rollback_to()


def test_half_written_versions_are_never_visible_and_get_cleaned(tmp_path: Path, trained) -> None:
    model, _ = trained
    registry = registry_of(tmp_path / "registry", model, 1)
    registry.promote("v0001")
    # What a killed writer leaves behind: a staged directory, a dangling temporary link,
    # a version directory without metadata.
    (registry.staging / "v0002-deadbeef").mkdir(parents=True)
    (registry.staging / "v0002-deadbeef" / MODEL_FILE).write_bytes(b"partial")
    (registry.root / ".current-12345678").symlink_to("v0002")
    (registry.root / "v0003").mkdir()
    assert [v.version for v in registry.versions()] == ["v0001"]
    removed = registry.clean_staging()
    assert set(removed) == {"v0002-deadbeef", ".current-12345678", "v0003"}
    assert registry.current_version() == "v0001"
    assert register(registry, str(model)).version == "v0002"


def test_readers_never_see_a_missing_or_partial_current(tmp_path: Path, trained) -> None:
    model, _ = trained
    registry = registry_of(tmp_path / "registry", model, 2)
    registry.promote("v0001")
    stop, seen, errors = threading.Event(), set(), []

    def read() -> None:
        reader = ModelRegistry(registry.root)
        while not stop.is_set():
            try:
                seen.add(reader.current().version)
            except Exception as exc:  # any failure to read is the bug this test looks for
                errors.append(repr(exc))

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for i in range(300):
        registry.promote("v0002" if i % 2 == 0 else "v0001")
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == [] and seen == {"v0001", "v0002"}


class _Exploit:
    """Writes a marker file when loaded (by pickle or by skops): stands for arbitrary code
    in a model file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).write_text("executed")


def test_pickle_payload_in_a_model_file_is_refused_without_running(tmp_path: Path, trained) -> None:
    model, _ = trained
    marker = tmp_path / "pwned"
    registry = ModelRegistry(tmp_path / "registry")
    version = register(registry, str(model)).version
    target = registry.root / version / MODEL_FILE

    # 1. The model file replaced by a pickle: the checksum refuses it first...
    target.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(RegistryIntegrityError, match="does not match its recorded sha256"):
        registry.load_model(version)
    # ...and a pickle is not a skops file even when the checksum is bypassed.
    with pytest.raises(RegistryIntegrityError, match="not a readable skops model file"):
        load_unchecked(target)

    # 2. A well-formed skops file that carries an object whose loading runs code.
    forged = load_unchecked(model)
    forged.exploit = _Exploit(str(marker))
    forged_path = tmp_path / "forged.skops"
    sio.dump(forged, forged_path)
    with pytest.raises(RegistryIntegrityError, match=f"not trusted.*{__name__}._Exploit"):
        load_unchecked(forged_path)
    with pytest.raises(RegistryIntegrityError, match="not trusted"):
        load_model_file(forged_path, sha256_file(forged_path))
    assert not marker.exists()
    # The forgery is real: a loader that trusts whatever the file lists runs the payload.
    sio.load(forged_path, trusted=sio.get_untrusted_types(file=forged_path))
    assert marker.read_text() == "executed"


# -- deployment -------------------------------------------------------------------------------

def test_post_deploy_check_passes_then_catches_a_different_model(tmp_path: Path, trained) -> None:
    model, paths = trained
    registry = registry_of(tmp_path / "registry", model, 1)
    window = Window(paths, CLASSIFY)
    candidate = TrainResult.model_validate({**TRAINED, "model_path": str(model), "model_sha256": sha256_file(model)})
    result = evaluate_against_champion(candidate, None, window, EvaluationSpec(), registry, [])
    registry.promote("v0001")
    post_deploy_check(registry, "v0001", window, result, [])
    with pytest.raises(DeployError, match="current is v0001, expected v0002"):
        post_deploy_check(registry, "v0002", window, result, [])
    with pytest.raises(DeployError, match="evaluation measured"):
        post_deploy_check(registry, "v0001", window, result.model_copy(update={"check_value": result.check_value - 0.01}), [])


def test_rollback_restores_the_previous_current(tmp_path: Path, trained) -> None:
    model, _ = trained
    registry = registry_of(tmp_path / "registry", model, 2)
    registry.promote("v0001")
    previous = registry.promote("v0002")
    rollback(registry, previous, "v0002")
    assert registry.current_version() == "v0001" and registry.get("v0002").decision == "deploy_failed"
    fresh = registry_of(tmp_path / "fresh", model, 1)
    fresh.promote("v0001")
    rollback(fresh, None, "v0001")
    assert fresh.current_version() is None


def test_window_scores_equal_whole_scores_and_are_kept_per_partition(tmp_path: Path) -> None:
    import shutil

    from flows.models.modelfile import ModelFile
    from flows.models.scoring import score_window

    paths = partitions(tmp_path / "a", CLASSIFY, rows=3000, seed=8) + partitions(tmp_path / "b", CLASSIFY, rows=3000, seed=9)
    window = Window(paths, CLASSIFY)
    trained = train_candidate(window, FAST, tmp_path / "m.skops")
    whole = score(load(trained), window.holdout_rows(), CLASSIFY)
    model = ModelFile(trained.model_path, trained.model_sha256, "m")
    kept = tmp_path / "outputs"
    assert score_window(window, [model], []) == (len(window.holdout_rows()), {model.key: whole})
    assert score_window(window, [model], [], str(kept))[1][model.key] == whole
    assert len(list((kept / model.key).glob("*.npz"))) == len(paths)
    # Kept outputs are used as they are: a model that would score differently is not asked.
    other = train_candidate(Window(paths[:1], CLASSIFY), FAST, tmp_path / "o.skops")
    other_model = ModelFile(other.model_path, other.model_sha256, "o")
    assert score_window(window, [other_model], [])[1][other_model.key] != whole
    shutil.copytree(kept / model.key, kept / other_model.key)
    assert score_window(window, [other_model], [], str(kept))[1][other_model.key] == whole


def test_only_the_lease_holder_switches_current(tmp_path: Path, trained) -> None:
    from flows.models.deploy import switch_current

    model, _ = trained
    registry = registry_of(tmp_path / "registry", model, 2)
    registry.take_lease("run-a")
    assert switch_current(registry, "v0001", "run-a") is None
    registry.take_lease("run-b")  # a later run took over
    with pytest.raises(DeployError, match="run-a no longer holds the registry"):
        switch_current(registry, "v0002", "run-a")
    registry.release_lease()  # the daemon stopped
    with pytest.raises(DeployError, match=r"\(lease: released\)"):
        switch_current(registry, "v0002", "run-b")
    assert registry.current_version() == "v0001"
