"""Synthetic customer data for demos, tests and benchmarks.

Columns: customer_id, age, income, tenure_months, usage_hours, support_calls, plan,
region, and the target: ``churned`` (0/1, classification) or ``monthly_spend``
(regression). A few values are missing, as in real exports. The signal is learnable
(ROC AUC around 0.85 for a gradient-boosted model) unless label noise is added.

Label noise p: with probability min(1, 2p) a label is replaced by an independent draw
from the labels' own distribution, so p = 0.5 leaves no signal at all.

Drift, for demos of the retraining policy:
- covariate shift S: income is drawn S standard deviations higher (log scale); labels still
  follow the same relation, so a model keeps working while the inputs drift;
- concept shift C: the effect of every feature on the label is scaled by 1 - 2C (0: as
  before, 0.5: no relation left, 1: every feature acts the other way), the features' own
  distribution unchanged, so a model trained before the shift gets worse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.files import write_atomically

SAMPLE_TARGET = {"classification": "churned", "regression": "monthly_spend"}
SAMPLE_ID_COLUMN = "customer_id"
PLANS = np.array(["basic", "plus", "pro"])
REGIONS = np.array(["north", "south", "east", "west"])


def sample_frame(rows: int, seed: int, label_noise: float = 0.0, task: str = "classification",
                 covariate_shift: float = 0.0, concept_shift: float = 0.0) -> pd.DataFrame:
    if task not in SAMPLE_TARGET:
        raise ValueError(f"unknown task {task!r}")
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows).astype(float)
    income = np.round(rng.lognormal(10.8 + 0.45 * covariate_shift, 0.45, rows), 2)
    tenure = rng.integers(0, 120, rows)
    usage = np.round(rng.gamma(2.0, 10.0, rows), 1)
    calls = rng.poisson(1.5, rows)
    plan = PLANS[rng.choice(3, rows, p=[0.5, 0.3, 0.2])]
    region = REGIONS[rng.integers(0, 4, rows)]

    plan_effect = np.select([plan == "basic", plan == "plus"], [0.6, 0.0], -0.7)
    region_effect = np.where(region == "south", 0.4, 0.0)
    effects = (0.55 * calls - 0.03 * tenure - 0.04 * (usage - 20) + plan_effect
               + region_effect + 0.015 * (age - 45) - 0.25 * (np.log(income) - 10.8))
    logit = -0.5 + (1 - 2 * concept_shift) * effects
    frame = pd.DataFrame({
        SAMPLE_ID_COLUMN: [f"c{seed:05d}-{i:07d}" for i in range(rows)],
        "age": age, "income": income, "tenure_months": tenure, "usage_hours": usage,
        "support_calls": calls, "plan": plan, "region": region,
    })
    if task == "classification":
        labels = (rng.random(rows) < 1 / (1 + np.exp(-2.0 * logit))).astype(int)
        replace = rng.random(rows) < min(1.0, 2 * label_noise)
        labels[replace] = rng.random(replace.sum()) < labels.mean()
        frame[SAMPLE_TARGET[task]] = labels.astype(int)
    else:
        effects = (0.0004 * income + 0.8 * usage + np.select([plan == "basic", plan == "plus"], [0, 15], 35)
                   + 0.1 * tenure)
        # Around the effects' typical level, so a reversed relation keeps spend in the same range.
        spend = 20 + 55 + (1 - 2 * concept_shift) * (effects - 55) + rng.normal(0, 6, rows)
        replace = rng.random(rows) < min(1.0, 2 * label_noise)
        spend[replace] = rng.permutation(spend)[replace]
        frame[SAMPLE_TARGET[task]] = np.round(spend, 2)
    # A few missing values, as real exports have.
    for column, share in (("age", 0.02), ("usage_hours", 0.02), ("plan", 0.01)):
        frame.loc[rng.random(rows) < share, column] = None
    frame["age"] = frame["age"].astype("Int64")
    return frame


def write_samples(out_dir: str | Path, files: int = 1, rows: int = 1000, seed: int = 0,
                  label_noise: float = 0.0, task: str = "classification",
                  prefix: str = "batch", covariate_shift: float = 0.0,
                  concept_shift: float = 0.0) -> list[Path]:
    """Write ``files`` CSV files of ``rows`` rows each, atomically (a hidden temporary name,
    then a rename), so a daemon watching ``out_dir`` only ever sees finished files. Names
    carry the seed, so batches of different seeds never collide. Not fsynced: synthetic
    data is worth nothing after a power cut."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        frame = sample_frame(rows, seed * 1000 + i, label_noise, task, covariate_shift, concept_shift)
        suffix = ("-noisy" if label_noise else "") + ("-covariate" if covariate_shift else "") + \
            ("-concept" if concept_shift else "")
        path = out / f"{prefix}-{seed:04d}-{i:03d}{suffix}.csv"
        paths.append(write_atomically(path, lambda fh: frame.to_csv(fh, index=False),
                                      durable=False))
    return paths
