"""``retrain status``, ``retrain pause`` and ``retrain resume``: what the service is doing,
and holding its runs."""

from __future__ import annotations

import argparse
import json
import os

from core.errors import RetrainError
from service.cli.base import existing_home, load


def add_status(sub, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser("status", parents=[common], help="files per state, last runs, current model",
                            description="What the service is doing and has done.")
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl+C")
    status.add_argument("--runs", type=int, default=10, metavar="N", help="how many runs to show")
    status.set_defaults(func=cmd_status)


def add_pause(sub, common: argparse.ArgumentParser) -> None:
    for name, doing in (("pause", "take files into the queue but start no run"), ("resume", "start runs again")):
        command = sub.add_parser(name, parents=[common], help=f"{name} the daemon's Prefect deployment: {doing}",
                                 description=f"{name.capitalize()} the Prefect deployment the daemon runs "
                                             f"(as `prefect deployment {name}` does): {doing}.")
        command.set_defaults(func=cmd_pause, pause=name == "pause")


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause or resume the deployment through the API the daemon reports to (its embedded
    one while it runs, or PREFECT_API_URL)."""
    from service.runtime.deployment import FLOW_NAME, deployment_name, set_paused
    from service.status import daemon_status

    settings = load(args)
    home = existing_home(settings)
    api = daemon_status(home)["prefect_api_url"] or os.environ.get("PREFECT_API_URL")
    if not api:
        raise RetrainError("no Prefect API to ask: the daemon is not running and PREFECT_API_URL is not set; "
                           "start `retrain watch` (its embedded API holds the deployment) or set PREFECT_API_URL")
    from service.runtime.api import prepare_environment

    prepare_environment(home)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = f"{FLOW_NAME}/{deployment_name(home.root)}"
    with temporary_settings(updates={PREFECT_API_URL: api}):
        was = set_paused(name, args.pause)
    if args.pause:
        print(f"{name} {'was already' if was else 'is now'} paused: the daemon takes files into its queue and "
              "starts no run until `retrain resume`")
    else:
        print(f"{name} {'is running again' if was else 'was not paused'}: the daemon starts runs")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from service.status import collect_status, print_status, watch_status

    settings = load(args)
    home = existing_home(settings)
    if args.watch is not None:
        if args.json or args.watch <= 0:
            raise RetrainError("--watch takes a positive number of seconds and does not combine "
                               "with --json; poll `retrain status --json` instead")
        watch_status(lambda: collect_status(home, settings, runs=args.runs), args.watch)
        return 0
    status = collect_status(home, settings, runs=args.runs)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print_status(status)
    return 0
