"""Monitoring as plain functions on real files: reference statistics, drift, and the
champion's live metric on every new row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from flow_fixtures import CLASSIFY, FAST

from core.files import sha256_file
from core.records import FileRef
from flows.data.preprocess import HOLDOUT_COLUMN, plan_partitions, preprocess_partition
from flows.data.window import Window, load_partitions
from flows.judging.monitor import (
    add_drift_counts,
    drift_counts,
    drift_of_counts,
    drift_report,
    monitor_champion,
    psi,
    reference_statistics,
)
from flows.models.registry import ModelRegistry
from flows.models.scoring import kept_outputs_path, load_outputs, model_outputs, score
from flows.training.train import train_candidate
from service.sample import sample_frame


def parts(folder: Path, seed: int, rows: int = 3000, **shift) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"data-{seed}.csv"
    sample_frame(rows, seed, **shift).to_csv(path, index=False)
    ref = FileRef(file_id=seed, name=path.name, path=str(path), sha256=sha256_file(path), size=path.stat().st_size)
    return [preprocess_partition(p, CLASSIFY, folder / "cache", 0.2).parquet_path
            for p in plan_partitions(ref, 200_000)]


def rows_of(paths: list[str]) -> pd.DataFrame:
    return load_partitions(paths, [*CLASSIFY.features, CLASSIFY.target])


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    same = np.array([0.25, 0.25, 0.5])
    assert psi(same, same) == 0.0
    assert 0 < psi(same, [0.3, 0.2, 0.5]) < psi(same, [0.6, 0.2, 0.2])
    assert np.isfinite(psi(same, [0.0, 0.5, 0.5]))  # an empty bin does not make it infinite


def test_drift_is_small_for_new_rows_like_the_training_rows_and_large_for_a_moved_feature(tmp_path: Path) -> None:
    reference = reference_statistics(Window(parts(tmp_path, 1), CLASSIFY))
    assert reference["rows"] > 2000 and set(reference["columns"]) == {*CLASSIFY.features, "churned"}
    assert len(reference["columns"]["income"]["edges"]) == 9  # deciles
    assert reference["columns"]["plan"]["categories"] == ["basic", "plus", "pro"]

    same = drift_report(rows_of(parts(tmp_path, 2)), reference, CLASSIFY)
    assert max(same.scores.values()) < 0.05 and same.label < 0.05 and same.rows == 3000

    moved = drift_report(rows_of(parts(tmp_path, 3, covariate_shift=2.0)), reference, CLASSIFY)
    assert list(moved.scores)[0] == "income" and moved.scores["income"] > 1.0
    assert all(score < 0.05 for name, score in moved.scores.items() if name != "income")


def test_drift_sees_a_new_category_and_missing_values(tmp_path: Path) -> None:
    reference = reference_statistics(Window(parts(tmp_path, 1), CLASSIFY))
    frame = rows_of(parts(tmp_path, 2))
    frame["plan"] = "enterprise"  # a plan the model never saw
    frame["age"] = np.nan  # a column that arrives empty
    scores = drift_report(frame, reference, CLASSIFY).scores
    assert list(scores)[:2] == ["age", "plan"] or list(scores)[:2] == ["plan", "age"]
    assert scores["plan"] > 1.0 and scores["age"] > 1.0


def test_the_drift_of_parts_counted_apart_is_the_drift_of_the_whole(tmp_path: Path) -> None:
    reference = reference_statistics(Window(parts(tmp_path, 1), CLASSIFY))
    frame = rows_of(parts(tmp_path, 3, covariate_shift=1.0))
    frame["plan"] = frame["plan"].astype(object)
    frame.loc[frame.index[:100], "plan"] = "enterprise"
    pieces = [frame.iloc[:700], frame.iloc[700:2500], frame.iloc[2500:]]
    counts = add_drift_counts([drift_counts(piece, reference, CLASSIFY) for piece in pieces])
    assert drift_of_counts(counts, len(frame), reference, CLASSIFY) == drift_report(frame, reference, CLASSIFY)
    assert drift_of_counts(counts, len(frame), reference, CLASSIFY).scores["income"] > 0.25


def test_the_champion_scores_every_new_row_and_leaves_its_holdout_outputs_for_evaluation(tmp_path: Path) -> None:
    window = Window(parts(tmp_path / "old", 1), CLASSIFY)
    trained = train_candidate(window, FAST, tmp_path / "m.skops")
    registry = ModelRegistry(tmp_path / "registry")
    champion = registry.register(trained.model_path, {"model_sha256": trained.model_sha256,
                                                      "lineage": {"reference": reference_statistics(window)}})
    new = parts(tmp_path / "new", 2, rows=2500)
    outputs = tmp_path / "outputs"

    live, drift, note = monitor_champion(champion, [2], new, CLASSIFY, "roc_auc", 200, registry, [],
                                         outputs_dir=str(outputs))
    model = registry.load_model(champion.version)
    every_row = rows_of(new)
    assert note == "" and live.rows == len(every_row) == 2500 and live.enough and live.file_ids == [2]
    assert live.metrics == score(model, every_row, CLASSIFY) and live.value == live.metrics["roc_auc"]
    assert drift is not None and drift.rows == 2500
    # What evaluation will look for: the champion's outputs on the holdout rows only.
    kept = load_outputs(kept_outputs_path(outputs, champion.model_sha256[:32], new[0]))
    holdout = load_partitions(new, [*CLASSIFY.features, CLASSIFY.target], holdout=True)
    expected = model_outputs(model, holdout, CLASSIFY)
    assert len(kept["predicted"]) == len(holdout) < 2500
    assert (kept["predicted"] == expected["predicted"]).all() and np.allclose(kept["scores"], expected["scores"])

    few, _, _ = monitor_champion(champion, [2], new, CLASSIFY, "roc_auc", 5000, registry, [])
    assert not few.enough and few.rows == 2500
    assert load_partitions(new, [HOLDOUT_COLUMN])[HOLDOUT_COLUMN].any()


def test_a_champion_that_cannot_score_is_noted(tmp_path: Path) -> None:
    window = Window(parts(tmp_path, 1), CLASSIFY)
    trained = train_candidate(window, FAST, tmp_path / "m.skops")
    registry = ModelRegistry(tmp_path / "registry")
    champion = registry.register(trained.model_path, {"model_sha256": trained.model_sha256})
    Path(champion.path, "model.skops").write_bytes(b"changed")
    live, drift, note = monitor_champion(champion, [1], window.parquet_paths, CLASSIFY, "roc_auc", 1,
                                         registry, [])
    assert live is None and drift is None and note.startswith(f"champion {champion.version} cannot score")
