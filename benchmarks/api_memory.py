"""The embedded Prefect API's resident memory against the number of flow runs it records.

    python benchmarks/api_memory.py [--runs 300] [--every 25]

Starts the embedded API (service.runtime.api.PrefectApi) on a fresh home and runs a small
flow (six tasks and an artifact) against it again and again, printing the API server's
resident memory and the size of its database every ``--every`` runs. Run it with
``MALLOC_ARENA_MAX`` set in the environment to see what glibc's arenas cost (the daemon
sets 2 for its API: see service/runtime/api.py; an operator's own value wins).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--every", type=int, default=25)
    args = parser.parse_args()

    import psutil

    from service.intake.home import Home
    from service.runtime.api import PrefectApi, prepare_environment

    home = Home(Path(tempfile.mkdtemp(prefix="api-memory-"))).ensure()
    prepare_environment(home)
    api = PrefectApi()
    api.start()
    try:
        with api.settings():
            from prefect import flow, task
            from prefect.artifacts import create_markdown_artifact

            @task
            def work(i: int) -> int:
                return i * 2

            @flow(name="api-memory")
            def small_flow(n: int) -> int:
                futures = [work.submit(i) for i in range(6)]
                create_markdown_artifact(f"run {n}", key="api-memory-report")
                return sum(f.result() for f in futures)

            server = psutil.Process(api.server.process.pid)
            for i in range(args.runs + 1):
                small_flow(i)
                if i % args.every == 0:
                    rss = sum(p.memory_info().rss for p in [server, *server.children(recursive=True)]) / 2**20
                    db = sum(p.stat().st_size for p in Path(os.environ["PREFECT_HOME"]).rglob("*.db*")) / 2**20
                    print(f"run {i:4d}: API resident {rss:6.1f} MiB, database {db:5.1f} MiB", flush=True)
    finally:
        api.stop()


if __name__ == "__main__":
    main()
