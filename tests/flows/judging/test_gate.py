"""The gate's rules: non-inferiority shown, the parts of the holdout, batches with nothing to learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.records import PairedComparison, ResolvedSchema
from core.specs import EvaluationSpec
from flows.judging.compare import chance_outputs
from flows.judging.evaluate import decide
from flows.judging.gate import (
    Scored,
    check_signal,
    compare_parts,
    holdout_parts,
    verdict_of,
)
from flows.models.scoring import metrics

CLASSES = ResolvedSchema(target="y", task="classification", numeric=["x"], categorical=[], max_bad_row_fraction=0.1)
REGRESS = CLASSES.model_copy(update={"task": "regression"})


def interval(low: float, high: float, rows: int = 2000, difference: float | None = None) -> PairedComparison:
    return PairedComparison(metric="roc_auc", difference=(low + high) / 2 if difference is None else difference,
                            low=low, high=high, confidence=0.95, samples=2000, must_show="not_worse", rows=rows)


def model(y: pd.Series, seed: int, signal: float = 0.3, noise: float = 0.2) -> dict[str, np.ndarray]:
    """A model's outputs on labels ``y``: scores that carry them with ``signal``."""
    score = np.clip(0.5 - signal / 2 + signal * y.astype(int).to_numpy()
                    + np.random.default_rng(seed).normal(0, noise, len(y)), 0, 1)
    return {"predicted": np.where(score > 0.5, "1", "0"), "scores": np.column_stack([1 - score, score])}


def labels(n: int, seed: int = 0) -> pd.Series:
    return pd.Series(np.random.default_rng(seed).integers(0, 2, n)).astype(str)


# -- non-inferiority ------------------------------------------------------------------------------

def test_the_readme_noise_run_is_no_longer_deployed() -> None:
    """The issue's run: -0.0049 (95% interval -0.0123 to +0.0022). It was deployed because the
    interval did not lie wholly below -tolerance; non-inferiority asks its lower bound to lie
    above -margin, and -0.0123 < -0.01."""
    gate = decide({"roc_auc": 0.7645}, {"roc_auc": 0.7695}, EvaluationSpec(), "classification", 2000, "v0001",
                  interval(-0.0123, 0.0022, difference=-0.0049))
    assert not gate.deploy and not gate.not_worse_than_champion and gate.tolerance == 0.01
    assert "not shown non-inferior, it may be up to 0.0123 worse, more than the margin 0.0100" in gate.reason
    # The same interval, shifted up to lie above -margin, is shown non-inferior.
    assert decide({"roc_auc": 0.7695}, {"roc_auc": 0.7695}, EvaluationSpec(), "classification", 2000, "v0001",
                  interval(-0.0072, 0.0073, difference=0.0)).deploy


def test_the_rule_on_every_side_of_the_margin() -> None:
    margin = 0.01
    assert verdict_of(interval(-0.0099, 0.02), "not_worse", True, margin) == "shown"
    assert verdict_of(interval(-0.0101, 0.02), "not_worse", True, margin) == "not shown"
    assert verdict_of(interval(-0.05, -0.0101), "not_worse", True, margin) == "worse"
    assert verdict_of(interval(0.0101, 0.03), "better", True, margin) == "shown"
    assert verdict_of(interval(0.005, 0.03), "better", True, margin) == "not shown"
    # Lower is better (rmse): a negative difference is an improvement.
    assert verdict_of(interval(-0.02, 0.0099), "not_worse", False, margin) == "shown"
    assert verdict_of(interval(-0.02, 0.0101), "not_worse", False, margin) == "not shown"


def test_a_holdout_too_small_to_show_anything_says_so_with_numbers() -> None:
    gate = decide({"roc_auc": 0.80}, {"roc_auc": 0.80}, EvaluationSpec(), "classification", 150, "v0001",
                  interval(-0.04, 0.04, rows=150, difference=0.0))
    assert not gate.deploy
    assert "the holdout is too small to show it: its 150 rows give an interval 0.0800 wide" in gate.reason
    assert "about 2,400 holdout rows would narrow it to ±0.0100" in gate.reason  # 150 * (0.04 / 0.01)^2
    for what in ("holdout_fraction", "min_holdout_rows", "evaluation.tolerance", "more data"):
        assert what in gate.reason


def test_default_margins_per_metric() -> None:
    spec = EvaluationSpec()
    assert [spec.margin(m) for m in ("roc_auc", "accuracy", "balanced_accuracy", "r2", "f1")] == \
        [0.01, 0.01, 0.01, 0.01, 0.02]
    assert spec.margin("rmse", 12.5) == pytest.approx(0.25)  # 2% of the champion's error
    assert spec.margin("mae", None) == 0.0
    assert EvaluationSpec(tolerance=0.05).margin("rmse", 12.5) == 0.05


# -- parts of the holdout ----------------------------------------------------------------------

def test_holdout_parts_follow_partitions_and_slice_values() -> None:
    region = pd.Series(["a", "b", None, "a", "b", "b"], dtype="category")
    parts = holdout_parts([2, 0, 4], [False, True, True], {"region": region})
    new, role = parts["new rows"]
    assert role == "record" and new.tolist() == [False, False, True, True, True, True]
    assert parts["earlier rows"][1] == "prove" and parts["earlier rows"][0].tolist() == (~new).tolist()
    assert parts["region=a"][0].tolist() == [True, False, False, True, False, False]
    assert parts["region=b"][1] == "guard" and "region=None" not in parts and "region=nan" not in parts


def test_a_candidate_worse_on_the_earlier_rows_is_refused_though_better_overall() -> None:
    """Better on the new rows, worse beyond the margin on those the champion handled."""
    y = labels(8000, seed=3)
    old, new = np.arange(8000) < 4000, np.arange(8000) >= 4000
    champion = model(y, 1)
    candidate = {k: np.where(old[:, None] if v.ndim == 2 else old, model(y, 2, noise=0.27)[k],
                             model(y, 2, noise=0.02)[k]) for k, v in champion.items()}
    spec = EvaluationSpec(threshold=0.5)
    scored = Scored("roc_auc", CLASSES, y, candidate, champion, ["0", "1"], ["0", "1"], spec)
    parts = compare_parts(scored, {"new rows": (new, "record"), "earlier rows": (old, "prove")}, True, 0.01)
    assert [p.name for p in parts] == ["new rows", "earlier rows"]
    assert parts[0].verdict == "recorded" and parts[0].candidate > parts[0].champion
    assert parts[1].verdict == "worse" and parts[1].candidate < parts[1].champion
    values = [metrics(o, y, CLASSES, ["0", "1"])["roc_auc"] for o in (candidate, champion)]
    whole = scored.compare(np.ones(len(y), dtype=bool))
    assert whole.low > -0.005  # not worse on the whole holdout
    gate = decide({"roc_auc": values[0]}, {"roc_auc": values[1]}, spec, "classification", len(y), "v0001",
                  whole, parts)
    assert not gate.deploy and "shown not worse" in gate.reason
    assert "but on the earlier rows (4,000 holdout rows)" in gate.reason and "worse than the champion beyond the margin" in gate.reason
    assert gate.slices == parts


def test_slices_guard_against_a_regression_shown_and_skip_small_ones() -> None:
    y = labels(3000, seed=4)
    south = np.arange(3000) % 3 == 0
    champion = model(y, 5)
    candidate = {k: np.where(south[:, None] if v.ndim == 2 else south, model(y, 6, signal=0.05)[k],
                             model(y, 6)[k]) for k, v in champion.items()}
    spec = EvaluationSpec(min_slice_rows=200)
    scored = Scored("roc_auc", CLASSES, y, candidate, champion, ["0", "1"], ["0", "1"], spec)
    tiny = np.zeros(3000, dtype=bool)
    tiny[:50] = True
    parts = compare_parts(scored, {"region=south": (south, "guard"), "region=north": (~south, "guard"),
                                   "region=tiny": (tiny, "guard")}, True, 0.01)
    verdicts = {p.name: p.verdict for p in parts}
    assert verdicts["region=south"] == "worse" and verdicts["region=tiny"] == "too few rows"
    assert verdicts["region=north"] in ("shown", "not shown")  # a guard passes unless a loss is shown


# -- batches with nothing to learn -------------------------------------------------------------------

def test_noise_on_the_new_rows_is_told_from_a_new_concept() -> None:
    y = labels(1000, seed=7)
    everything = np.ones(1000, dtype=bool)
    spec = EvaluationSpec(min_signal_rows=100)
    # Neither model carries the labels: nothing to learn.
    noise = Scored("roc_auc", CLASSES, y, model(y, 8, signal=0.0), model(y, 9, signal=0.0), ["0", "1"],
                   ["0", "1"], spec)
    check = check_signal(noise, everything, True, "v0001")
    assert check.verdict == "no_signal" and check.champion_near_chance and not check.learnable
    assert check.chance == 0.5 and "carry nothing to learn" in check.reason
    gate = decide({"roc_auc": 0.70}, {"roc_auc": 0.70}, EvaluationSpec(threshold=0.5), "classification", 5000,
                  "v0001", interval(-0.005, 0.005, difference=0.0), [], check)
    assert not gate.deploy and gate.no_signal
    assert gate.reason.startswith("not deployed, no signal: the new rows carry nothing to learn")
    assert gate.reason.endswith("v0001 stays deployed")
    # The champion knows nothing of them but the candidate learned them: a new concept.
    concept = Scored("roc_auc", CLASSES, y, model(y, 8), model(y, 9, signal=0.0), ["0", "1"], ["0", "1"], spec)
    check = check_signal(concept, everything, True, "v0001")
    assert check.verdict == "new_concept" and check.learnable and check.candidate.low > 0
    # The champion is better than chance on them: the batch carries a signal, no check.
    assert check_signal(Scored("roc_auc", CLASSES, y, model(y, 8), model(y, 9), ["0", "1"], ["0", "1"], spec),
                        everything, True, "v0001") is None
    # Far worse than chance: the relation reversed, which is a signal too; the gate decides.
    reversed_y = y.map({"0": "1", "1": "0"})
    assert check_signal(Scored("roc_auc", CLASSES, y, model(y, 8, signal=0.0), model(reversed_y, 9), ["0", "1"],
                               ["0", "1"], spec), everything, True, "v0001") is None
    # Too few new rows to tell (and too few earlier rows to ask whether the champion lost skill).
    few = np.arange(1000) < 60
    assert check_signal(Scored("roc_auc", CLASSES, y[:150], *(part(m, 150) for m in noise.outputs),
                               ["0", "1"], ["0", "1"], spec), few[:150], True, "v0001").verdict == "too_few_rows"


def part(outputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    return {key: value[:rows] for key, value in outputs.items()}


def joined(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([first[key], second[key]]) for key in first}


def test_near_chance_on_the_new_rows_needs_a_loss_of_skill_shown_against_the_earlier_rows() -> None:
    """A champion whose real skill is small looks "not better than chance" on a few hundred
    new rows; a batch must not be set aside for that. The noise batch of the README: the
    champion's skill on the earlier rows is lost on the new ones."""
    spec = EvaluationSpec(min_signal_rows=100)
    earlier, new = labels(1500, seed=3), labels(300, seed=4)
    y = pd.concat([earlier, new], ignore_index=True)
    is_new = np.arange(len(y)) >= len(earlier)
    weak = joined(model(earlier, 1, signal=0.02), model(new, 2, signal=0.02))
    candidate = joined(model(earlier, 5, signal=0.02), model(new, 6, signal=0.0))
    assert check_signal(Scored("roc_auc", CLASSES, y, candidate, weak, ["0", "1"], ["0", "1"], spec), is_new, True,
                        "v0001") is None
    lost = joined(model(earlier, 1, signal=0.3), model(new, 2, signal=0.0))
    check = check_signal(Scored("roc_auc", CLASSES, y, candidate, lost, ["0", "1"], ["0", "1"], spec), is_new, True,
                         "v0001")
    assert check.verdict == "no_signal" and "on the earlier rows" in check.reason


def test_a_model_that_learned_nothing_scores_chance() -> None:
    y = labels(500, seed=1)
    outputs = chance_outputs(y, CLASSES, ["0", "1"])
    assert metrics(outputs, y, CLASSES, ["0", "1"])["roc_auc"] == 0.5
    truth = pd.Series(np.random.default_rng(2).normal(size=400))
    assert metrics(chance_outputs(truth, REGRESS, []), truth, REGRESS, [])["r2"] == pytest.approx(0.0)


def test_slices_must_be_features() -> None:
    from pydantic import ValidationError

    from core.specs import PipelineSpec

    assert PipelineSpec.model_validate({"evaluation": {"slices": ["region"]}}).evaluation.slices == ["region"]
    for wrong in ({"evaluation": {"slices": ["churned"]}},
                  {"schema": {"drop": ["region"]}, "evaluation": {"slices": ["region"]}}):
        with pytest.raises(ValidationError, match="evaluation.slices: 'churned' is not a feature|'region' is not"):
            PipelineSpec.model_validate(wrong)
