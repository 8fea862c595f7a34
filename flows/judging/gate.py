"""The gate's rules, on the paired comparisons of ``flows.judging.compare``.

- **Non-inferiority** (``must_show = "not_worse"``): the bound of the interval of
  (candidate - champion) on the side of "worse" lies above -margin: the candidate is shown
  to lose at most the margin. An interval that reaches further down shows nothing either
  way, and refuses: the fewer or noisier the holdout rows, the harder a candidate passes,
  never the easier. ``"better"``: the same bound lies above +margin.
- **Parts of the holdout**: the rows of the earlier window (those the champion already
  handled) must show non-inferiority too; the new files' rows are recorded. Each value of
  a slice feature (``evaluation.slices``) with enough rows must not be shown worse beyond
  the margin: a proof on each of many small slices would refuse nearly every candidate (a
  200-row slice's AUC interval is about 0.1 wide), so slices guard against a regression
  shown, while the whole holdout and the earlier rows carry the proof.
- **Nothing to learn**: when the champion is neither shown better nor shown worse than
  chance (by more than the metric's default margin) on the new rows, and, where the holdout
  has earlier rows, is shown to have lost the skill it has on them, the candidate must be
  shown better than chance (the new rows are a new concept), or the batch is noise: it
  never replaces a model. "Chance" is a model that learned nothing
  (``flows.judging.compare.chance_outputs``), paired with each model on the same rows.

Plain code, no Prefect.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.records import PairedComparison, ResolvedSchema, SignalCheck, SliceComparison
from core.specs import EvaluationSpec, default_margin
from flows.judging.compare import chance_outputs, paired_comparison, row_statistics
from flows.models.scoring import metrics

EPS = 1e-12
Outputs = dict[str, np.ndarray]


def improvement_bounds(comparison: PairedComparison, higher: bool) -> tuple[float, float]:
    """(worst, best) improvement of the candidate the interval allows (positive: better)."""
    sign = 1.0 if higher else -1.0
    worst, best = sorted((sign * comparison.low, sign * comparison.high))
    return worst, best


def verdict_of(comparison: PairedComparison, must_show: str, higher: bool, margin: float) -> str:
    """"shown" (what ``must_show`` asks, with the interval's confidence), "worse" (a loss
    beyond the margin shown) or "not shown"."""
    worst, best = improvement_bounds(comparison, higher)
    if best < -margin - EPS:
        return "worse"
    if must_show == "better":
        return "shown" if worst > margin + EPS else "not shown"
    return "shown" if worst >= -margin - EPS else "not shown"


def interval_text(comparison: PairedComparison) -> str:
    return (f"difference {comparison.difference:+.4f} ({comparison.confidence:.0%} interval "
            f"{comparison.low:+.4f} to {comparison.high:+.4f})")


def judge_champion(comparison: PairedComparison, spec: EvaluationSpec, higher: bool, value: float,
                   champ_value: float, champion_version: str | None, margin: float) -> tuple[bool, str]:
    """(passes, why) of the candidate against the champion on the whole holdout."""
    verdict = verdict_of(comparison, spec.must_show, higher, margin)
    head = (f"{comparison.metric} {value:.4f} vs champion {champion_version} {champ_value:.4f} on "
            f"{comparison.rows:,} holdout rows: {interval_text(comparison)}")
    worst, _ = improvement_bounds(comparison, higher)
    if verdict == "shown":
        claim = "not worse by more than" if spec.must_show == "not_worse" else "better by more than"
        return True, f"{head}, shown {claim} the margin {margin:.4f}"
    if verdict == "worse":
        return False, f"{head}: worse than the champion by more than the margin {margin:.4f}"
    if spec.must_show == "not_worse":
        why = f"{head}: not shown non-inferior, it may be up to {-worst:.4f} worse, more than the margin {margin:.4f}"
    else:
        why = f"{head}: not shown better by more than the margin {margin:.4f}"
    return False, why + too_few_rows(comparison, margin)


def too_few_rows(comparison: PairedComparison, margin: float) -> str:
    """When the interval is wider than twice the margin, no candidate as good as the champion
    could pass: say so, with the rows that would narrow it enough and what to change."""
    half = (comparison.high - comparison.low) / 2
    if half <= margin or comparison.rows <= 0:
        return ""
    # The interval narrows as 1/sqrt(rows).
    needed = math.ceil(comparison.rows * (half / max(margin, 1e-9)) ** 2) if margin > 0 else None
    more = f"about {needed:,} holdout rows would narrow it to ±{margin:.4f}; " if needed else ""
    return (f"; the holdout is too small to show it: its {comparison.rows:,} rows give an interval "
            f"{comparison.high - comparison.low:.4f} wide, more than twice the margin; {more}send more data, "
            f"raise evaluation.holdout_fraction (or evaluation.min_holdout_rows, to train only once the "
            f"holdout is that large), or widen evaluation.tolerance")


class Scored:
    """Candidate and champion outputs on the holdout rows, to compare on any part of them."""

    def __init__(self, metric: str, schema: ResolvedSchema, y: pd.Series, candidate: Outputs, champion: Outputs,
                 candidate_classes: list[str], champion_classes: list[str], spec: EvaluationSpec) -> None:
        self.metric, self.schema, self.y, self.spec = metric, schema, y.reset_index(drop=True), spec
        self.outputs = (candidate, champion)
        self.classes = (candidate_classes, champion_classes)

    def value(self, which: int, mask: np.ndarray) -> float | None:
        found = metrics(_part(self.outputs[which], mask), self.y[mask], self.schema, self.classes[which]).get(self.metric)
        return None if found is None or math.isnan(found) else float(found)

    def compare(self, mask: np.ndarray, against_chance: int | None = None) -> PairedComparison | None:
        """Candidate - champion on the rows of ``mask``; with ``against_chance`` (0: the
        candidate, 1: the champion), that model - a model that learned nothing."""
        y = self.y[mask]
        if against_chance is None:
            pair = [(_part(o, mask), c) for o, c in zip(self.outputs, self.classes)]
        else:
            classes = self.classes[against_chance]
            pair = [(_part(self.outputs[against_chance], mask), classes),
                    (chance_outputs(y, self.schema, classes), classes)]
        rows = [row_statistics(self.metric, o, y, self.schema, c) for o, c in pair]
        values = [metrics(o, y, self.schema, c).get(self.metric) for o, c in pair]
        if rows[0] is None or rows[1] is None or any(v is None or math.isnan(v) for v in values):
            return None
        found = paired_comparison(self.metric, values[0] - values[1], rows[0], rows[1], self.spec.confidence,
                                  self.spec.must_show)
        return found.model_copy(update={"rows": int(mask.sum())})


def _part(outputs: Outputs, mask: np.ndarray) -> Outputs:
    return {key: value[mask] for key, value in outputs.items()}


def compare_parts(scored: Scored, parts: dict[str, tuple[np.ndarray, str]], higher: bool,
                  margin: float) -> list[SliceComparison]:
    """Each part of the holdout (name -> (rows, role)) compared and judged by its role (see
    ``SliceComparison.role``)."""
    found = []
    for name, (mask, role) in parts.items():
        rows = int(mask.sum())
        if rows == 0:
            continue
        if role == "guard" and rows < scored.spec.min_slice_rows:
            found.append(SliceComparison(name=name, role=role, rows=rows, candidate=None, champion=None, comparison=None,
                                         verdict="too few rows"))
            continue
        comparison = scored.compare(mask)
        if comparison is not None:
            comparison = comparison.model_copy(update={"margin": margin})
        if comparison is None:
            verdict = "not computable"
        elif role == "record":
            verdict = "recorded"
        else:
            verdict = verdict_of(comparison, "not_worse", higher, margin)
        found.append(SliceComparison(name=name, role=role, rows=rows, candidate=scored.value(0, mask),
                                     champion=scored.value(1, mask), comparison=comparison, verdict=verdict))
    return found


def refusing_part(parts: list[SliceComparison], margin: float) -> str | None:
    """Why a part of the holdout refuses the candidate, or None."""
    for part in parts:
        failed = part.verdict == "worse" or (part.role == "prove" and part.verdict == "not shown")
        if failed and part.comparison is not None:
            what = ("not shown non-inferior" if part.verdict == "not shown"
                    else "worse than the champion beyond the margin")
            return (f"on the {part.name} ({part.rows:,} holdout rows) {part.comparison.metric} "
                    f"{part.candidate:.4f} vs champion {part.champion:.4f}, {interval_text(part.comparison)}: "
                    f"{what} {margin:.4f}" + (too_few_rows(part.comparison, margin) if part.verdict == "not shown"
                                              else ""))
    return None


def check_signal(scored: Scored, new_rows: np.ndarray, higher: bool, champion_version: str) -> SignalCheck | None:
    """Whether the new rows carry anything to learn (see the module's docstring); None when
    the champion is shown better, or worse, than chance by more than the metric's default
    margin on them (they do), when it is not shown to have lost the skill it has on the
    earlier rows, or when it cannot be compared. "Better than chance" is itself a claim of
    superiority by that margin: pure noise passes it far more rarely than the 2.5% of a
    bound above chance alone."""
    rows = int(new_rows.sum())
    if rows == 0:
        return None
    y_new = scored.y[new_rows]
    chance = metrics(chance_outputs(y_new, scored.schema, scored.classes[0]), y_new, scored.schema,
                     scored.classes[0]).get(scored.metric)
    margin = default_margin(scored.metric, chance)
    champion = scored.compare(new_rows, against_chance=1)
    if champion is None:
        return None
    worst, best = improvement_bounds(champion, higher)
    # Shown better than chance: the rows carry what the champion knows. Shown *worse*: they
    # carry a relation too, one that changed (a reversed concept); the gate decides.
    if worst > margin + EPS or best < -margin - EPS:
        return None
    # "Not shown better than chance" alone is absence of evidence: on a noisy metric (r2 of
    # a heavy-tailed target) a few hundred rows never show the champion's real but small
    # skill, and a real batch would be set aside. With earlier rows in the holdout, the
    # champion must also be shown to have lost skill: its best on the new rows below its
    # worst on the earlier ones (both against chance; two 95% intervals that do not overlap).
    earlier_rows = ~new_rows
    earlier_note = ""
    if earlier_rows.sum() >= scored.spec.min_signal_rows:
        earlier = scored.compare(earlier_rows, against_chance=1)
        if earlier is None or best >= improvement_bounds(earlier, higher)[0] - EPS:
            return None
        earlier_note = (f" (on the earlier rows it scores {_fmt(scored.value(1, earlier_rows))}, "
                        f"{earlier.metric} - chance {interval_text(earlier)})")
    candidate = scored.compare(new_rows, against_chance=0)
    learnable = candidate is not None and improvement_bounds(candidate, higher)[0] > margin + EPS
    metric, confidence = scored.metric, f"{scored.spec.confidence:.0%}"
    numbers = (f"on the new files' {rows:,} holdout rows champion {champion_version} scores {metric} "
               f"{_fmt(scored.value(1, new_rows))} and the candidate {_fmt(scored.value(0, new_rows))}, "
               f"chance {_fmt(chance)}{earlier_note}")
    if learnable:
        verdict, reason = "new_concept", (
            f"a new concept: {numbers}; the candidate is better than chance by more than {margin:.4f} with "
            f"{confidence} confidence ({interval_text(candidate)})")
    elif rows < scored.spec.min_signal_rows:
        verdict, reason = "too_few_rows", (
            f"too few new rows to tell a new concept from noise: {numbers}; fewer than "
            f"evaluation.min_signal_rows {scored.spec.min_signal_rows:,}")
    else:
        shown = "" if candidate is None else f"; candidate - chance: {interval_text(candidate)}"
        verdict, reason = "no_signal", (
            f"the new rows carry nothing to learn: {numbers}; neither is shown better than chance by more "
            f"than {margin:.4f} with {confidence} confidence{shown}")
    return SignalCheck(rows=rows, chance=float("nan") if chance is None else float(chance), champion=champion,
                       candidate=candidate, champion_near_chance=True, learnable=learnable,
                       verdict=verdict, reason=reason)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def holdout_parts(counts: list[int], is_new: list[bool], slice_values: dict[str, pd.Series]
                  ) -> dict[str, tuple[np.ndarray, str]]:
    """The parts of the holdout rows to compare on: the new files' rows and the earlier
    window's (``counts`` holdout rows per partition, ``is_new`` per partition), and each
    value of each slice feature (its values on the holdout rows, in window order)."""
    new = np.repeat(np.asarray(is_new, dtype=bool), np.asarray(counts, dtype=int))
    parts: dict[str, tuple[np.ndarray, str]] = {}
    if new.any():
        parts["new rows"] = (new, "record")
    if new.any() and (~new).any():
        parts["earlier rows"] = (~new, "prove")
    for column, values in slice_values.items():
        text = values.astype(object)
        for value in sorted({str(v) for v in text.dropna().unique()}):
            parts[f"{column}={value}"] = ((text.astype(str) == value).to_numpy() & text.notna().to_numpy(), "guard")
    return parts
