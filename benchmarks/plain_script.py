"""The baseline: what an ML engineer would run from cron instead of the service.

One process, pandas + scikit-learn, no orchestration: read every CSV, clean it, split off a
holdout, fit the same Pipeline the service fits (same estimator, same preprocessing), score
it against the model now deployed on the same holdout rows, and save it with skops when it
wins. It does the service's work, minus what a script does not have: the ledger, the
partition cache, retries, the registry's atomic switch and lineage.

    python benchmarks/plain_script.py FILE... --model-dir DIR [--target churned]

Prints one JSON line: timings per stage, rows, the training frame's in-memory size, the
decision, and this process's peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

started = time.perf_counter()

import numpy as np  # noqa: E402  (imports are part of what the script costs)
import pandas as pd  # noqa: E402
import skops.io as sio  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402

from core.specs import DEFAULT_BOOSTING_PARAMS  # noqa: E402  (the estimator the service fits by default)

NUMERIC = ["age", "income", "tenure_months", "usage_hours", "support_calls"]
CATEGORICAL = ["plan", "region"]


def load(paths: list[str], target: str) -> pd.DataFrame:
    frames = []
    for path in paths:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        for column in NUMERIC:
            frame[column] = pd.to_numeric(frame[column].str.strip().replace("", None), errors="coerce")
        for column in CATEGORICAL:
            frame[column] = frame[column].str.strip().replace("", None)
        frame[target] = frame[target].str.strip()
        frames.append(frame.loc[frame[target] != "", [*NUMERIC, *CATEGORICAL, target]])
    return pd.concat(frames, ignore_index=True)


def pipeline() -> Pipeline:
    return Pipeline([
        ("prepare", ColumnTransformer([
            ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")),
                                  ("scale", StandardScaler())]), NUMERIC),
            ("categorical", Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                                      ("onehot", OneHotEncoder(handle_unknown="infrequent_if_exist",
                                                               max_categories=64, sparse_output=False))]),
             CATEGORICAL),
        ])),
        ("model", HistGradientBoostingClassifier(random_state=0, **DEFAULT_BOOSTING_PARAMS)),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--target", default="churned")
    parser.add_argument("--holdout-fraction", type=float, default=0.2)
    args = parser.parse_args()
    seconds = {"import": time.perf_counter() - started}

    t = time.perf_counter()
    frame = load(args.files, args.target)
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    holdout = (hashes % np.uint64(10_000)) < np.uint64(round(args.holdout_fraction * 10_000))
    train, test = frame[~holdout], frame[holdout]
    seconds["read_and_clean"] = time.perf_counter() - t

    t = time.perf_counter()
    model = pipeline().fit(train[NUMERIC + CATEGORICAL], train[args.target])
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    positive = model.classes_[-1]
    candidate = roc_auc_score(test[args.target] == positive,
                              model.predict_proba(test[NUMERIC + CATEGORICAL])[:, 1])
    current = os.path.join(args.model_dir, "model.skops")
    champion = None
    if os.path.exists(current):
        deployed = sio.load(current, trusted=sio.get_untrusted_types(file=current))
        champion = roc_auc_score(test[args.target] == positive,
                                 deployed.predict_proba(test[NUMERIC + CATEGORICAL])[:, 1])
    seconds["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    deploy = candidate >= 0.6 and (champion is None or candidate >= champion - 1.0)
    if deploy:
        os.makedirs(args.model_dir, exist_ok=True)
        sio.dump(model, current + ".tmp")
        os.replace(current + ".tmp", current)
    seconds["deploy"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started

    print(json.dumps({
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "rows": len(frame), "train_rows": len(train), "holdout_rows": len(test),
        "train_frame_bytes": int(train.memory_usage(deep=True).sum()),
        "roc_auc": round(candidate, 4), "champion_roc_auc": champion, "deployed": bool(deploy),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
