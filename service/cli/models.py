"""``retrain models`` (list, show, rollback, diff) and ``retrain report``: the registry's
versions and their history."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.cli.base import existing_home, load


def add_models(sub, common: argparse.ArgumentParser) -> None:
    models = sub.add_parser("models", parents=[common], help="the model registry",
                            description="List versions; show, roll back or compare them.")
    models.add_argument("--json", action="store_true", help="one JSON document")
    models.set_defaults(func=cmd_models_list)
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    show = msub.add_parser("show", parents=[common], help="metadata, lineage and metrics of a version")
    show.add_argument("version")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_models_show)
    rollback = msub.add_parser("rollback", parents=[common],
                               help="point current back at the previous (or a named) deployed version")
    rollback.add_argument("version", nargs="?")
    rollback.set_defaults(func=cmd_models_rollback)
    diff = msub.add_parser("diff", parents=[common], help="metrics and training data that differ")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=cmd_models_diff)


def add_report(sub, common: argparse.ArgumentParser) -> None:
    report = sub.add_parser("report", parents=[common], help="PNG chart of the metric of every version",
                            description="Two panels: each trained version's metric next to the "
                                        "champion's on the same holdout rows (what its gate compared; "
                                        "deployed and rejected told apart, with the threshold), and the "
                                        "deployed model's live metric on each batch's new rows, with the "
                                        "policy's bar and the moments a new version took over.")
    report.add_argument("--out", default=None, metavar="PATH", help="default: HOME/report.png")
    report.add_argument("--metric", help="another metric than the gate's")
    report.set_defaults(func=cmd_report)


def open_registry(args: argparse.Namespace):
    from flows.models.registry import ModelRegistry

    settings = load(args)
    return settings, ModelRegistry(existing_home(settings).registry)


def cmd_models_list(args: argparse.Namespace) -> int:
    from service.status import print_models

    settings, registry = open_registry(args)
    versions = _history(settings, registry)
    current = registry.current_version()
    if args.json:
        print(json.dumps({"current": current, "versions": [v.model_dump() for v in versions]},
                         indent=2, default=str))
    else:
        print_models(versions, current)
    return 0


def _history(settings, registry):
    """Every version ever trained: on disk, and removed by retention (from the ledger)."""
    from service.intake.home import Home
    from service.intake.ledger import Ledger
    from service.runner.retention import version_history

    with Ledger(Home(settings.home).ledger_path, readonly=True) as ledger:
        return version_history(registry, ledger)


def cmd_models_show(args: argparse.Namespace) -> int:
    _, registry = open_registry(args)
    version = registry.get(args.version)
    data = version.model_dump()
    data["current"] = registry.current_version() == version.version
    # A model search: every candidate's parameters and validation score, first.
    data = {"candidates": version.lineage.get("training", {}).get("candidates", []), **data}
    print(json.dumps(data, indent=2, default=str))
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from service.intake.home import Home
    from service.intake.ledger import Ledger

    settings, registry = open_registry(args)
    old, new = registry.rollback_to(args.version)
    with Ledger(Home(settings.home).ledger_path) as ledger:
        ledger.record_event("rollback", {"from": old, "to": new, "by": "retrain models rollback"})
    print(f"current: {old} -> {new}")
    if settings.mlflow.tracking_uri:
        # The MLflow alias follows now, in this process (a background export would be cut
        # short by the command's exit); a failure is said, and the daemon's next export mends it.
        from core.errors import RetrainError
        from service.integrations.mlflow_export import sync

        try:
            sync(settings)
        except RetrainError as exc:
            print(f"retrain: warning: {exc}; the MLflow alias follows at the next export", file=sys.stderr)
    return 0


def cmd_models_diff(args: argparse.Namespace) -> int:
    from service.status import models_diff, print_models_diff

    _, registry = open_registry(args)
    diff = models_diff(registry.get(args.a), registry.get(args.b))
    if args.json:
        print(json.dumps(diff, indent=2, default=str))
    else:
        print_models_diff(diff)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from flows.reporting.report import write_report
    from service.status import live_history

    settings, registry = open_registry(args)
    home = existing_home(settings)
    out = Path(args.out) if args.out else home.report_path
    threshold = settings.evaluation.threshold if not args.metric else None
    write_report(_history(settings, registry), out, threshold, registry.current_version(), args.metric,
                 live=live_history(home, settings, args.metric))
    print(out)
    return 0
