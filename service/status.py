"""What ``retrain status`` and ``retrain models`` show: collected as one plain document
(for ``--json`` and monitoring), rendered with rich tables for people."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from core.records import ModelVersion, ProductionMetric
from flows.judging.policy import live_bar
from flows.models.registry import ModelRegistry
from service.intake.home import Home
from service.intake.ledger import FileState, Ledger
from service.intake.lock import lock_holder
from service.intake.requests import OPERATOR_RUN
from service.integrations.mlflow_export import export_status

MAIN_STATES = ("queued", "running", "archived", "quarantined", "duplicate")
# The names of a run's first files shown (a batch may hold a thousand).
SHOWN_NAMES = 20


def daemon_status(home: Home) -> dict[str, Any]:
    """Alive when the home's lock is held by a live process and its heartbeat is fresh."""
    holder = lock_holder(home.lock_path)
    beat: dict[str, Any] = {}
    try:
        beat = json.loads(home.heartbeat_path.read_text())
    except (FileNotFoundError, ValueError):
        pass
    age = time.time() - beat["heartbeat_unix"] if "heartbeat_unix" in beat else None
    fresh = age is not None and age < max(10.0, 5 * beat.get("heartbeat_seconds", 1.0))
    alive = bool(holder and "watch" in holder and fresh and _pid_alive(beat.get("pid")))
    return {
        "alive": alive,
        "lock_holder": holder,
        "pid": beat.get("pid") if alive else None,
        "state": beat.get("state") if alive else "stopped",
        "started_at": beat.get("started_at") if alive else None,
        "uptime_seconds": _uptime(beat) if alive else None,
        "heartbeat_age_seconds": round(age, 1) if age is not None else None,
        "current_run": beat.get("current_run") if alive else None,
        "batched_files": beat.get("batched", 0) if alive else 0,
        "settling_files": beat.get("settling", 0) if alive else 0,
        "prefect_api_url": beat.get("prefect_api_url") if alive else None,
        "dask_scheduler": beat.get("dask_scheduler") if alive else None,
        # The Prefect deployment whose flow runs the daemon executes; paused: no run starts.
        "deployment": beat.get("deployment") if alive else None,
        "paused": bool(beat.get("paused")) if alive else False,
    }


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _uptime(beat: dict[str, Any]) -> float | None:
    from datetime import datetime

    try:
        started = datetime.fromisoformat(beat["started_at"]).timestamp()
    except (KeyError, ValueError):
        return None
    return round(time.time() - started, 1)


def collect_status(home: Home, settings, runs: int = 10) -> dict[str, Any]:
    with Ledger(home.ledger_path, readonly=True) as ledger:
        counts = ledger.counts()
        recent = ledger.runs(limit=runs)
        names = {r.id: [ledger.get(fid).name for fid in r.file_ids[:SHOWN_NAMES]] for r in recent}
        quarantined = ledger.files(FileState.QUARANTINED)[-5:]
        events = ledger.events(limit=5)
        production, labelled = production_metrics(ledger), ledger.last_completed_run("labels")
    registry = ModelRegistry(home.registry)
    current = registry.current()
    return {
        "home": str(home.root.resolve()),
        "daemon": daemon_status(home),
        "files": {"total": sum(counts.values()), **counts},
        "runs": [
            {
                "id": r.id, "state": r.state, "started_at": _iso(r.started_at),
                "finished_at": _iso(r.finished_at), "files": len(r.file_ids),
                "flow_run_id": r.flow_run_id, "decision": r.decision, "reason": r.reason,
                "model_version": r.model_version, "metric": r.metric,
                "candidate": r.details.get("candidate"),
                "champion": r.details.get("champion"),
                "rows": r.details.get("rows"),
                "train_rows": r.details.get("train_rows"),
                **{key: r.details.get(key) for key in ("live", "policy", "comparison")},
                "drift": _drift_summary(r.details.get("drift")),
                # What started it: "files", "operator" (Run button, API, automation), "schedule".
                "trigger": r.details.get("trigger"),
                "requested_by": r.details.get("requested_by"),
                # A scoring run: the metrics its confidence estimates before the labels come.
                "estimated": r.details.get("estimated"),
                "file_names": names[r.id],
            }
            for r in recent
        ],
        "current_model": None if current is None else {
            "version": current.version, "created_at": current.created_at,
            "deployed_at": _iso(registry.switched_at()),
            "metric": current.lineage.get("metric"), "metrics": current.metrics,
            "flow_run_id": current.flow_run_id,
            # Its latest live metric, and the drift measured with it.
            **_latest_live(recent, current.version),
            # What it actually served, joined with the labels that came later.
            "production": next((m.model_dump() for m in production if m.version == current.version), None),
            "estimated": next((r.details["estimated"] for r in recent
                               if r.model_version == current.version and r.details.get("estimated")), None),
        },
        # Every version's production metric, and what the last labels run made of its labels.
        "production": {"metrics": [m.model_dump() for m in production],
                       "labels": labelled.details.get("labels") if labelled else None,
                       "run": labelled.id if labelled else None},
        "quarantined": [
            {"name": Path(f.path).name, "reason": (f.error or {}).get("reason"), "file_id": f.id}
            for f in reversed(quarantined)
        ],
        "operator_actions": [{**e, "at": _iso(e["at"])} for e in events],
        "gate": {"metric": settings.evaluation.metric_for(settings.schema_.task),
                 "threshold": settings.evaluation.threshold,
                 # The margin of non-inferiority; None: the metric's default (core.specs).
                 "tolerance": settings.evaluation.tolerance,
                 "must_show": settings.evaluation.must_show,
                 "confidence": settings.evaluation.confidence},
        "policy": {**settings.policy.model_dump(), "live_bar": live_bar(settings)},
        "mlflow": export_status(settings),
    }


def production_metrics(ledger: Ledger) -> list[ProductionMetric]:
    """Every version's production metric, as the last labels run computed it (over every
    label so far)."""
    run = ledger.last_completed_run("labels")
    return [ProductionMetric.model_validate(m) for m in (run.details.get("production") or [])] if run else []


def _drift_summary(drift: dict[str, Any] | None) -> dict[str, Any] | None:
    """The drift of a run for status: the largest features' scores (the ledger keeps all)."""
    if not drift:
        return None
    return {"statistic": drift.get("statistic"), "rows": drift.get("rows"), "label": drift.get("label"),
            "top": dict(drift.get("top") or [])}


def _latest_live(runs, version: str) -> dict[str, Any]:
    for r in runs:
        live = r.details.get("live")
        if live and live.get("version") == version and live.get("enough"):
            return {"live": live, "live_run": r.id, "drift": _drift_summary(r.details.get("drift"))}
    return {"live": None, "live_run": None, "drift": None}


def live_history(home: Home, settings, metric: str | None = None, runs: int = 2000):
    """The deployed model's live metric run by run (the last ``runs`` runs), and the moments
    a new version took over (deploys, rollbacks), for the report's live panel."""
    from datetime import datetime, timezone

    from flows.reporting.report import LiveHistory

    if not home.ledger_path.exists():
        return None
    with Ledger(home.ledger_path, readonly=True) as ledger:
        records = list(reversed(ledger.runs(limit=runs)))
        rollbacks = ledger.events("rollback", limit=runs)
    gate = settings.evaluation.metric_for(settings.schema_.task)
    # By default the metric the runs' gates judged by (the latest run's), as in the report's first panel.
    metric = metric or next((r.details["live"]["metric"] for r in reversed(records)
                             if r.details.get("live")), gate)
    history = LiveHistory(metric=metric, bar=live_bar(settings) if metric == gate else None)
    when = lambda ts: datetime.fromtimestamp(ts, timezone.utc)  # noqa: E731
    for r in records:
        live = r.details.get("live")
        value = (live or {}).get("metrics", {}).get(metric)
        if live and live.get("enough") and value is not None and r.finished_at:
            history.points.append({"time": when(r.finished_at), "value": value, "rows": live["rows"],
                                   "version": live["version"]})
        if r.decision == "deployed" and r.model_version and r.finished_at:
            history.takeovers.append({"time": when(r.finished_at), "version": r.model_version})
    history.takeovers += [{"time": when(e["at"]), "version": e["to"]} for e in rollbacks if e.get("to")]
    return history


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%m-%d %H:%M:%S", time.localtime(ts))


def _fmt_metric(values: dict[str, Any] | None, metric: str | None) -> str:
    if not values or not metric or metric not in values:
        return ""
    return f"{values[metric]:.4f}"


def render_status(status: dict[str, Any]):
    """The status as one rich renderable (printed once, or refreshed by ``--watch``)."""
    from rich.console import Group
    from rich.table import Table

    parts: list[Any] = []
    d = status["daemon"]
    if d["alive"]:
        parts.append(f"[bold green]daemon running[/] pid {d['pid']}, up {d['uptime_seconds']:.0f}s, "
                     f"{d['state']}" + (f" (run {d['current_run']})" if d["current_run"] else "")
                     + f"; {d['batched_files']} file(s) batched, {d['settling_files']} settling")
        if d["deployment"]:
            parts.append(f"Prefect deployment {d['deployment']}"
                         + (": [bold yellow]paused[/], files are queued and no run starts (`retrain resume`)"
                            if d["paused"] else ""))
    else:
        parts.append(f"[bold yellow]daemon not running[/] (home {status['home']})")

    files = status["files"]
    shown = {k: v for k, v in files.items() if k != "total" and (v or k in MAIN_STATES)}
    parts.append(f"files: {files['total']} in all — "
                 + ", ".join(f"{state} {count}" for state, count in shown.items()))

    parts += _model_lines(status)
    if status.get("mlflow"):
        parts.append(_mlflow_line(status["mlflow"]))
    parts += _runs_parts(status)

    if status["quarantined"]:
        q = Table(title="Last quarantined files", title_justify="left")
        q.add_column("file")
        q.add_column("reason", overflow="fold")
        for f in status["quarantined"]:
            q.add_row(f["name"], f["reason"] or "")
        parts.append(q)

    if status["operator_actions"]:
        actions = Table(title="Last operator actions", title_justify="left")
        for col in ("at", "action", "what"):
            actions.add_column(col)
        for event in status["operator_actions"]:
            actions.add_row(event["at"], event["kind"], describe_event(event))
        parts.append(actions)
    return Group(*parts)


def _mlflow_line(export: dict[str, Any]) -> str:
    line = (f"MLflow {export['tracking_uri']}: {export['model_name']}@champion = {export['champion'] or 'unset'}, "
            f"{export['exported']} version(s) exported")
    if export["pending"] or export["alias_behind"]:
        line += f"; [bold yellow]behind[/] ({', '.join(export['pending']) or 'the alias'} to do)"
    if export["last_error"]:
        line += f"; last attempt failed ({export['failed_attempts']}x): {export['last_error']}"
    return line


def _model_lines(status: dict[str, Any]) -> list[str]:
    """The current model against the gate, its live metric, the policy."""
    model, gate, policy = status["current_model"], status["gate"], status["policy"]
    if model:
        lines = [f"current model [bold]{model['version']}[/] (trained {model['created_at']}, "
                 f"current since {model['deployed_at']}): "
                 f"{model['metric']} {_fmt_metric(model['metrics'], model['metric'])}; gate: "
                 f"{gate['metric']} >= {gate['threshold']}, {gate['must_show']} within margin "
                 f"{'the metric default' if gate['tolerance'] is None else gate['tolerance']}"]
    else:
        lines = [f"no model deployed yet; gate: {gate['metric']} >= {gate['threshold']}"]
    if model and model.get("live"):
        lines.append(_live_line(model["live"], model.get("drift"), model["live_run"]))
    if model and model.get("production"):
        lines.append(_production_line(model["production"]))
    if model and model.get("estimated") and model["metric"] in model["estimated"]:
        lines.append(f"estimated {model['metric']} {model['estimated'][model['metric']]:.3f} on its last scoring "
                     "batch, from its confidence (before the labels come)")
    lines.append(f"policy: retrain {policy['retrain']}; live bar {policy['live_bar']:g} on at least "
                 f"{policy['min_live_rows']} rows, max_drift {policy['max_drift'] or 'off'}, "
                 f"max_new_rows {policy['max_new_rows'] or 'off'}, max_age {policy['max_age'] or 'off'}")
    return lines


def _production_line(production: dict[str, Any]) -> str:
    value = "n/a" if production["value"] is None else f"{production['value']:.3f}"
    delay = production.get("label_delay_hours") or {}
    late = f"; labels came {delay['median']:.1f} h after the prediction (median)" if "median" in delay else ""
    judged = "" if production.get("enough") else " (too few to judge)"
    return (f"production {production['metric']} {value} on {production['rows']:,} labelled predictions"
            f"{judged}{late}")


def _runs_parts(status: dict[str, Any]) -> list[Any]:
    """The last runs as a table (the live metric included; "?": too few rows to judge), then
    why the last decisions were taken, in full, and what triggered training."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # No vertical borders: the table fits an 80-column terminal with the live metric in it.
    runs = Table(title="Last runs", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                 padding=(0, 0), pad_edge=False)
    for col in ("run", "finished", "files", "rows", "decision", "version", "live", "candidate", "champion"):
        runs.add_column(col, no_wrap=True)
    for r in status["runs"]:
        live = r.get("live") or {}
        runs.add_row(str(r["id"]), r["finished_at"] or r["state"], str(r["files"]),
                     str(r["rows"] or ""), r["decision"] or r["state"], r["model_version"] or "",
                     "" if live.get("value") is None else f"{live['value']:.4f}" + ("" if live["enough"] else "?"),
                     _fmt_metric(r["candidate"], r["metric"]), _fmt_metric(r["champion"], r["metric"]))
    parts: list[Any] = [runs]
    for r in status["runs"][:3]:
        if r["reason"]:
            asked = f" (asked by {r['requested_by']})" if r.get("requested_by") else ""
            parts.append(Text(f"  run {r['id']}{asked}: {r['reason']}"))
        triggers = [t for t in (r.get("policy") or {}).get("triggers", []) if t != "always"]
        if triggers and r["policy"]["reason"] != r["reason"]:
            parts.append(Text(f"    trained because ({', '.join(triggers)}): {r['policy']['reason']}"))
    return parts


def describe_event(event: dict[str, Any]) -> str:
    """One ledger event (see Ledger.record_event) in words."""
    if event["kind"] == "rollback":
        return f"current {event.get('from') or 'none'} -> {event.get('to')} ({event.get('by', '')})"
    if event["kind"] == "requeue":
        return f"'{event.get('name')}' (file {event.get('file_id')}) back into the inbox"
    if event["kind"] == OPERATOR_RUN:
        return f"retrain run on the window (run {event.get('run')})"
    detail = {k: v for k, v in event.items() if k not in ("id", "at", "kind")}
    return ", ".join(f"{k} {v}" for k, v in detail.items())


def _live_line(live: dict[str, Any], drift: dict[str, Any] | None, run_id: int) -> str:
    line = (f"live {live['metric']} of {live['version']}: {live['value']:.4f} on {live['rows']:,} new rows "
            f"(run {run_id})" if live.get("value") is not None else
            f"live {live['metric']} of {live['version']}: not computable on {live['rows']:,} rows (run {run_id})")
    if drift and drift.get("top"):
        line += "; largest drift " + ", ".join(f"{k} {v:.3f}" for k, v in list(drift["top"].items())[:3])
    return line


def print_status(status: dict[str, Any]) -> None:
    from rich.console import Console

    Console().print(render_status(status))


def watch_status(collect, interval: float) -> None:
    """Redraw the status every ``interval`` seconds until Ctrl+C."""
    from rich.live import Live

    try:  # Ctrl+C is how it ends, even during the first draw
        with Live(render_status(collect()), auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(render_status(collect()), refresh=True)
    except KeyboardInterrupt:
        pass


def print_models(versions: list[ModelVersion], current: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Model versions", title_justify="left")
    for col in ("", "version", "created", "decision", "metric", "value", "champion", "rows", "files"):
        table.add_column(col)
    for v in versions:
        metric = v.lineage.get("metric")
        training = v.lineage.get("training", {})
        decision = f"{v.decision} (removed)" if v.removed_at else v.decision
        table.add_row("*" if v.version == current else "", v.version, v.created_at, decision,
                      metric or "", _fmt_metric(v.metrics, metric),
                      _fmt_metric(v.champion_metrics, metric), str(training.get("train_rows", "")),
                      str(len(v.lineage.get("files", []))))
    console = Console()
    console.print(table)
    console.print(f"current: {current or 'none'}")


def models_diff(a: ModelVersion, b: ModelVersion) -> dict[str, Any]:
    """Metrics side by side and the training files only one of them used."""
    files_a = {f["sha256"]: f["name"] for f in a.lineage.get("files", [])}
    files_b = {f["sha256"]: f["name"] for f in b.lineage.get("files", [])}
    metrics = sorted(set(a.metrics) | set(b.metrics))
    return {
        "a": a.version, "b": b.version,
        "metrics": {m: {"a": a.metrics.get(m), "b": b.metrics.get(m),
                        "change": (b.metrics[m] - a.metrics[m]) if m in a.metrics and m in b.metrics else None}
                    for m in metrics},
        "only_in_a": sorted(files_a[s] for s in files_a.keys() - files_b.keys()),
        "only_in_b": sorted(files_b[s] for s in files_b.keys() - files_a.keys()),
        "common_files": len(files_a.keys() & files_b.keys()),
        "estimator": {"a": a.lineage.get("training", {}).get("estimator"),
                      "b": b.lineage.get("training", {}).get("estimator")},
        "decision": {"a": a.decision, "b": b.decision},
    }


def print_models_diff(diff: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{diff['a']} vs {diff['b']}", title_justify="left")
    for col in ("metric", diff["a"], diff["b"], "change"):
        table.add_column(col, justify="right")
    for name, m in diff["metrics"].items():
        table.add_row(name, *("" if m[k] is None else f"{m[k]:.4f}" for k in ("a", "b")),
                      "" if m["change"] is None else f"{m['change']:+.4f}")
    console = Console()
    console.print(table)
    console.print(f"training files in common: {diff['common_files']}; only in {diff['a']}: "
                  f"{', '.join(diff['only_in_a']) or 'none'}; only in {diff['b']}: "
                  f"{', '.join(diff['only_in_b']) or 'none'}")
