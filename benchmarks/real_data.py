"""Real public tabular data, shipped inside packages of the package index (nothing is
downloaded at run time), through the service as four arrival batches, against a
hand-written scikit-learn pipeline on the same split.

    make bench-real-data                 # writes benchmarks/real-data-results.md
    python benchmarks/real_data.py --only fair --out /tmp/r.md
    python benchmarks/real_data.py --candidates   # the default search's candidates, offline:
                                                  # benchmarks/real-data-candidates.md

Per data set: a seeded test split (25%, stratified for classification, every copy of a
row on one side); the other rows,
shuffled, in four CSV batches, each given to `retrain run FILE`, handed to a daemon
(`retrain watch`, its cluster warm; one Prefect API for the whole benchmark) on a home of its own, once with the
default config and once with the default model search (`[[model.candidates]]`,
``core.specs.DEFAULT_CANDIDATES``); then `retrain predict` on the test split. The
hand-written pipeline (median imputation, one-hot categories, HistGradientBoosting, as a
careful user would write it) is fitted on all four batches at once. The metric is the
gate's: roc_auc for classification, r2 for regression, with a paired bootstrap interval
of (service - hand-written) on the test rows.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RETRAIN = str(Path(sys.executable).parent / "retrain")
BATCHES = 4


def breast_cancer() -> tuple[pd.DataFrame, str, str]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    return frame, "target", "classification"


def diabetes() -> tuple[pd.DataFrame, str, str]:
    from sklearn.datasets import load_diabetes

    return load_diabetes(as_frame=True, scaled=False).frame, "target", "regression"


def fair() -> tuple[pd.DataFrame, str, str]:
    """Fair's affairs survey (statsmodels): whether a respondent had an affair."""
    import statsmodels.api as sm

    frame = sm.datasets.fair.load_pandas().data
    frame["had_affair"] = (frame.pop("affairs") > 0).astype(int)
    for column in ("occupation", "occupation_husb", "religious"):  # codes, not quantities
        frame[column] = frame[column].astype(int).map(lambda v: f"c{v}")
    return frame, "had_affair", "classification"


def randhie() -> tuple[pd.DataFrame, str, str]:
    """The RAND health insurance experiment (statsmodels): doctor visits per year."""
    import statsmodels.api as sm

    return sm.datasets.randhie.load_pandas().data, "mdvis", "regression"


DATASETS: dict[str, Callable[[], tuple[pd.DataFrame, str, str]]] = {
    "fair": fair, "randhie": randhie, "breast_cancer": breast_cancer, "diabetes": diabetes}


def split(frame: pd.DataFrame, target: str, task: str, seed: int = 0) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """A seeded 25% test split that keeps every copy of a row on one side (stratified for
    classification), as the service's holdout does: a test row whose exact copy was trained
    on scores what a model memorised, not what it learned (55% of randhie's rows are copies
    of another row, 19% of fair's). Without copies, the same split as on the rows alone."""
    from sklearn.model_selection import train_test_split

    frame = frame.reset_index(drop=True)
    key = pd.util.hash_pandas_object(frame, index=False)
    firsts = key.drop_duplicates().index.to_numpy()  # each row's first copy, in row order
    copies = pd.Series(frame.index, index=key.to_numpy()).groupby(level=0).agg(list)
    train_firsts, test_firsts = train_test_split(
        firsts, test_size=0.25, random_state=seed,
        stratify=frame[target].to_numpy()[firsts] if task == "classification" else None)
    train, test = (frame.loc[[row for first in side for row in copies[key[first]]]]
                   for side in (train_firsts, test_firsts))
    train = train.sample(frac=1.0, random_state=seed)
    bounds = np.linspace(0, len(train), BATCHES + 1).astype(int)
    return test.reset_index(drop=True), [train.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds, bounds[1:])]


def hand_written(train: pd.DataFrame, test: pd.DataFrame, target: str, task: str,
                 estimator: Any = None, scaled: bool = False) -> np.ndarray:
    """What a careful user writes by hand: impute, one-hot the text columns, boosted trees
    with scikit-learn's defaults (or ``estimator``, its numbers scaled when ``scaled``)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features = [c for c in train.columns if c != target]
    text = [c for c in features if not pd.api.types.is_numeric_dtype(train[c])]
    numbers = make_pipeline(SimpleImputer(strategy="median"), StandardScaler()) if scaled \
        else SimpleImputer(strategy="median")
    prepare = ColumnTransformer([("num", numbers, [c for c in features if c not in text]),
                                 ("cat", OneHotEncoder(handle_unknown="ignore"), text)])
    if estimator is None:
        model = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
        estimator = model(random_state=0)
    pipeline = make_pipeline(prepare, estimator).fit(train[features], train[target])
    if task == "classification":
        return pipeline.predict_proba(test[features])[:, 1]
    return pipeline.predict(test[features])


def compare_candidates(names: list[str]) -> dict[str, Any]:
    """Each candidate of the default search (``core.specs.DEFAULT_CANDIDATES``) in place of
    the hand-written pipeline's estimator, on the same split and the same four batches: which
    estimator does best across the data sets (the default's choice), and at what fit time."""
    from core.specs import DEFAULT_BOOSTING_PARAMS, DEFAULT_CANDIDATES, ModelSpec
    from flows.training.train import build_estimator

    found: dict[str, Any] = {}
    for name in names:
        frame, target, task = DATASETS[name]()
        test, batches = split(frame, target, task)
        train = pd.concat(batches, ignore_index=True)
        hand = hand_written(train, test, target, task)
        rows = []
        for candidate in DEFAULT_CANDIDATES[task]:
            spec = ModelSpec(estimator=candidate["estimator"], params=candidate["params"])
            started = time.perf_counter()
            ours = hand_written(train, test, target, task, build_estimator(spec, task),
                                scaled=candidate["estimator"] in ("logistic_regression", "ridge"))
            rows.append({"estimator": candidate["estimator"], "params": candidate["params"],
                         "default": candidate["estimator"] == ModelSpec().estimator
                         and candidate["params"] == DEFAULT_BOOSTING_PARAMS,
                         "seconds": round(time.perf_counter() - started, 2),
                         **paired_interval(test[target], ours, hand, task)})
        found[name] = rows
        print(f"candidates on {name}: " + ", ".join(f"{r['difference']:+.4f}" for r in rows), flush=True)
    return found


def render_candidates(found: dict[str, Any], started: str, load: str) -> str:
    names = list(found)
    lines = ["# Which estimator as the default (python benchmarks/real_data.py --candidates)", "",
             f"Run {started} (load average at start {load}). Each candidate of the default search in place of "
             "the hand-written pipeline's estimator (same imputation and one-hot; numbers scaled for the linear "
             "models, as the service does), fitted on the same four batches and scored on the same test split "
             "as `real-data-results.md`. Each cell: the candidate - the hand-written pipeline (scikit-learn's "
             "boosting defaults), with its 95% paired interval; the fit time. The service's default (no "
             "`params`) is marked.", "",
             "| candidate | " + " | ".join(names) + " | worst difference |",
             "|---|" + "---|" * len(names) + "---:|"]
    for i, first in enumerate(found[names[0]]):
        cells, worst = [], float("inf")
        for name in names:
            row = found[name][i]
            worst = min(worst, row["difference"])
            cells.append(f"{row['difference']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}], {row['seconds']} s")
        # Per task its own linear model (logistic regression, ridge): one label per distinct candidate.
        kinds = dict.fromkeys(f"{found[n][i]['estimator']} {json.dumps(found[n][i]['params'])}" for n in names)
        label = " / ".join(kinds) + (" **(default)**" if first["default"] else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {worst:+.4f} |")
    return "\n".join([*lines, ""])


def config_text(target: str, task: str, search: bool) -> str:
    from core.specs import DEFAULT_CANDIDATES

    # The threshold is the operator's bar for the domain: r2 of 0.6 is out of reach for doctor
    # visits, so regression runs take any model better than the mean.
    lines = ["[schema]", f'target = "{target}"', f'task = "{task}"', "",
             "[evaluation]", f"threshold = {0.6 if task == 'classification' else 0.0}", ""]
    if search:
        for candidate in DEFAULT_CANDIDATES[task]:
            lines += ["[[model.candidates]]", f'estimator = "{candidate["estimator"]}"',
                      f"params = {json.dumps(candidate['params']).replace(':', ' =')}", ""]
    return "\n".join(lines)


def run_service(home: Path, batches: list[Path], test: Path, config: str, env: dict[str, str]
                ) -> dict[str, Any]:
    """A daemon on ``home`` (its cluster kept warm across the batches, as in production), each
    batch given to it by `retrain run FILE`, then `retrain predict` on the test split."""
    home.mkdir(parents=True)
    (home / "retrain.toml").write_text(config)
    env = {**env, "RETRAIN_HOME": str(home), "RETRAIN_CONFIG": str(home / "retrain.toml"),
           "RETRAIN_DASK__DASHBOARD_ADDRESS": "null"}
    log_path = home.parent / f"{home.name}-daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen([RETRAIN, "watch"], env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    try:
        while "press Ctrl+C to stop" not in log_path.read_text(errors="replace"):
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        runs = []
        for batch in batches:
            started = time.perf_counter()
            done = subprocess.run([RETRAIN, "run", str(batch)], env=env, cwd=home, capture_output=True, text=True,
                                  timeout=1800)
            line = next((l for l in done.stdout.splitlines() if l.startswith("run ")), done.stderr.strip()[-300:])
            runs.append({"batch": batch.name, "returncode": done.returncode,
                         "seconds": round(time.perf_counter() - started, 1), "line": line})
            print(f"  {batch.name}: exit {done.returncode}: {line[:160]}", flush=True)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=300)
    out = home / "predictions.csv"
    predicted = subprocess.run([RETRAIN, "predict", str(test), "--output", str(out)], env=env, cwd=home,
                               capture_output=True, text=True, timeout=600)
    found: dict[str, Any] = {"runs": runs, "predict_returncode": predicted.returncode}
    if predicted.returncode == 0:
        found["predictions"] = pd.read_csv(out)
    else:
        found["predict_error"] = predicted.stderr.strip()[-300:]
    return found


def paired_interval(truth: pd.Series, ours: np.ndarray, theirs: np.ndarray, task: str) -> dict[str, float]:
    """(service - hand-written) on the test rows: the difference and its 95% paired interval
    (the gate's bootstrap, ``flows.judging.compare``)."""
    from core.records import ResolvedSchema
    from flows.judging.compare import paired_comparison, row_statistics
    from flows.models.scoring import metrics

    schema = ResolvedSchema(target="y", task=task, numeric=[], categorical=[], max_bad_row_fraction=0.0)
    y = truth.astype(str) if task == "classification" else truth.astype(float)
    metric, classes = ("roc_auc", ["0", "1"]) if task == "classification" else ("r2", [])

    def outputs(values: np.ndarray) -> dict[str, np.ndarray]:
        if task == "regression":
            return {"predicted": values.astype(float)}
        return {"predicted": np.where(values > 0.5, "1", "0"), "scores": np.column_stack([1 - values, values])}

    pair = [outputs(ours), outputs(theirs)]
    values = [metrics(o, y, schema, classes)[metric] for o in pair]
    stats = [row_statistics(metric, o, y, schema, classes) for o in pair]
    comparison = paired_comparison(metric, values[0] - values[1], *stats, 0.95, "not_worse")
    return {"metric": metric, "service": values[0], "hand": values[1], "difference": comparison.difference,
            "low": comparison.low, "high": comparison.high}


def measure(name: str, work: Path, env: dict[str, str]) -> dict[str, Any]:
    frame, target, task = DATASETS[name]()
    test, batches = split(frame, target, task)
    folder = work / name
    folder.mkdir(parents=True)
    paths = []
    for i, batch in enumerate(batches):
        paths.append(folder / f"{name}-batch-{i + 1}.csv")
        batch.to_csv(paths[-1], index=False)
    test_path = folder / f"{name}-test.csv"
    test.drop(columns=[target]).to_csv(test_path, index=False)
    train = pd.concat(batches, ignore_index=True)
    started = time.perf_counter()
    hand = hand_written(train, test, target, task)
    result: dict[str, Any] = {"rows": len(frame), "task": task, "target": target, "test_rows": len(test),
                              "hand_seconds": round(time.perf_counter() - started, 2)}
    for label, search in (("default", False), ("search", True)):
        service = run_service(folder / label, paths, test_path, config_text(target, task, search), env)
        predictions = service.pop("predictions", None)
        if predictions is not None:
            column = "probability_1" if task == "classification" else "prediction"
            service["score"] = paired_interval(test[target], predictions[column].to_numpy(dtype=float), hand, task)
        result[label] = service
        print(f"{name} / {label}: {service.get('score')}", flush=True)
    return result


def render(results: dict[str, Any], started: str, load: str, threads: int = 0) -> str:
    threads_note = f", the service's model.threads = {threads}" if threads else ""
    lines = ["# Real data through the service, against a hand-written pipeline (make bench-real-data)", "",
             f"Run {started} on a shared 2-core machine (load average at start {load}{threads_note}). "
             "Each data set: a seeded "
             "25% test split (every copy of a row on one side); the rest as four batches through `retrain run`, then `retrain predict` on the "
             "test split; the hand-written pipeline (median imputation, one-hot, HistGradientBoosting) fitted on "
             "the four batches at once. Difference: service - hand-written, with its 95% paired bootstrap "
             "interval on the test rows. \"matches\": the interval reaches 0 or the service is ahead; "
             "\"beats\": the interval lies above 0.", "",
             "| data set | rows | metric | hand-written | default config | vs hand | search | vs hand | runs completed |",
             "|---|---:|---|---:|---:|---|---:|---|---|"]
    details = ["", "## Runs", ""]
    for name, r in results.items():
        cells = []
        for label in ("default", "search"):
            score = r[label].get("score")
            if score is None:
                cells += ["failed", r[label].get("predict_error", "")]
                continue
            verdict = "beats" if score["low"] > 0 else ("matches" if score["high"] >= 0 else "**behind**")
            cells += [f"{score['service']:.4f}", f"{score['difference']:+.4f} [{score['low']:+.4f}, "
                                                 f"{score['high']:+.4f}] {verdict}"]
        metric = (r["default"].get("score") or r["search"].get("score") or {}).get("metric", "")
        hand = (r["default"].get("score") or r["search"].get("score") or {}).get("hand", float("nan"))
        completed = sum(run["returncode"] in (0, 3) for label in ("default", "search") for run in r[label]["runs"])
        lines.append(f"| {name} | {r['rows']:,} | {metric} | {hand:.4f} | {cells[0]} | {cells[1]} | {cells[2]} | "
                     f"{cells[3]} | {completed} of {2 * BATCHES} |")
        for label in ("default", "search"):
            details.append(f"- **{name}, {label}**:")
            details += [f"  - {run['batch']} (exit {run['returncode']}, {run['seconds']} s): {run['line']}"
                        for run in r[label]["runs"]]
    return "\n".join([*lines, *details, ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated data sets (default: all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "real-data-results.md"))
    parser.add_argument("--threads", type=int, default=0,
                        help="the service's model.threads (0: its default, every core); scores do not depend on it")
    parser.add_argument("--candidates", action="store_true",
                        help="only compare the default search's candidates in the hand-written pipeline "
                             "(benchmarks/real-data-candidates.md)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n in DATASETS] if args.only else list(DATASETS)
    started, load = time.strftime("%Y-%m-%d %H:%M"), f"{os.getloadavg()[0]:.1f}"
    if args.candidates:
        out = ROOT / "benchmarks" / "real-data-candidates.md"
        out.write_text(render_candidates(compare_candidates(names), started, load))
        print(f"written {out}")
        return 0
    with tempfile.TemporaryDirectory(prefix="retrain-real-data-") as tmp:
        work = Path(tmp)
        from service.intake.home import Home
        from service.runtime.api import prefect_api, prepare_environment

        # The benchmark's one Prefect API keeps its database in a home of its own.
        prepare_environment(Home(work / "prefect").ensure())
        with prefect_api() as url:
            env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
            env.update({"PREFECT_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"})
            if args.threads:
                env["RETRAIN_MODEL__THREADS"] = str(args.threads)
            results: dict[str, Any] = {}
            for name in names:  # written after each data set: a long run cut short keeps what it measured
                results[name] = measure(name, work, env)
                Path(args.out).write_text(render(results, started, load, args.threads))
                Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
                print(f"written {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
