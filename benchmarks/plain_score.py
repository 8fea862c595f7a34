"""The baseline of the production loop: what an ML engineer would run from cron instead.

    python benchmarks/plain_score.py score MODEL FILE... --out DIR --id customer_id
    python benchmarks/plain_score.py join LABELS... --predictions FILE... --id customer_id --target churned

``score``: one process, pandas + scikit-learn: load the model (the service's own skops file,
trusting what it contains), then per file read the CSV, prepare the features, predict, and
write id, prediction and probabilities as CSV. ``join``: read the labels and the predictions
(CSV), merge them by id and compute the roc_auc of what was served. Prints one JSON line of
timings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

started = time.perf_counter()

import numpy as np  # noqa: E402  (imports are part of what the script costs)
import pandas as pd  # noqa: E402
import skops.io as sio  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

NUMERIC = ["age", "income", "tenure_months", "usage_hours", "support_calls"]
CATEGORICAL = ["plan", "region"]


def score(model_path: str, files: list[str], out: Path, id_column: str) -> dict:
    model = sio.load(model_path, trusted=sio.get_untrusted_types(file=model_path))
    rows = 0
    for path in files:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        features = pd.DataFrame({c: pd.to_numeric(frame[c].str.strip().replace("", None), errors="coerce")
                                 for c in NUMERIC})
        for column in CATEGORICAL:
            features[column] = frame[column].str.strip().replace("", None).to_numpy(dtype=object)
        proba = model.predict_proba(features)
        result = pd.DataFrame({"id": frame[id_column], "prediction": model.classes_[np.argmax(proba, axis=1)]})
        for i, label in enumerate(model.classes_):
            result[f"probability_{label}"] = proba[:, i]
        result.to_csv(out / Path(path).name, index=False)
        rows += len(result)
    return {"rows": rows}


def join(labels: list[str], predictions: list[str], id_column: str, target: str) -> dict:
    truth = pd.concat([pd.read_csv(p, dtype={id_column: str, target: str}) for p in labels], ignore_index=True)
    served = pd.concat([pd.read_csv(p, dtype={"id": str}) for p in predictions], ignore_index=True)
    joined = served.merge(truth.rename(columns={id_column: "id"}), on="id", how="inner")
    auc = roc_auc_score(joined[target] == "1", joined["probability_1"])
    return {"rows": len(joined), "roc_auc": float(auc)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["score", "join"])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--out")
    parser.add_argument("--predictions", nargs="*", default=[])
    parser.add_argument("--id", default="customer_id")
    parser.add_argument("--target", default="churned")
    args = parser.parse_args()
    if args.what == "score":
        report = score(args.paths[0], args.paths[1:], Path(args.out), args.id)
    else:
        report = join(args.paths, args.predictions, args.id, args.target)
    report["seconds"] = time.perf_counter() - started
    print(json.dumps(report))


if __name__ == "__main__":
    main()
