"""Scoring over the window: partition by partition, kept per partition."""

from __future__ import annotations

from pathlib import Path

from flow_fixtures import (
    CLASSIFY,
    FAST,
    load,
    partitions,
)

from flows.data.window import Window
from flows.models.scoring import score
from flows.training.train import train_candidate


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


def test_one_metric_alone_is_the_same_number_as_among_all(tmp_path: Path) -> None:
    from flows.models.scoring import classes_of, metrics, model_outputs

    window = Window(partitions(tmp_path, CLASSIFY, rows=3000, seed=3), CLASSIFY)
    model = load(train_candidate(window, FAST, tmp_path / "m.skops"))
    rows = window.holdout_rows()
    outputs, y = model_outputs(model, rows, CLASSIFY), rows[CLASSIFY.target]
    every = metrics(outputs, y, CLASSIFY, classes_of(model))
    assert set(every) == {"accuracy", "balanced_accuracy", "f1", "roc_auc"}
    assert metrics(outputs, y, CLASSIFY, classes_of(model), only="roc_auc") == {"roc_auc": every["roc_auc"]}
    alone = metrics(outputs, y, CLASSIFY, classes_of(model), only="f1")
    assert "roc_auc" not in alone and alone["f1"] == every["f1"]
