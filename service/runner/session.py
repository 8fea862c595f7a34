"""A run session: what a process that runs the flow on a home holds for its whole life.

``retrain watch`` (the daemon) and ``retrain run`` (one batch) open the same session, in
two steps, each pushing what it takes on the caller's ExitStack so that everything is
released in reverse order:

1. ``open_home``: the home's folders; its lock (one such process per home); the ledger;
   the repair of whatever an unclean stop left: the registry's deploy lease released,
   half-written model versions removed, folders and ledger reconciled, deletions of
   expired archive files finished.
2. ``start_runtime``: the Prefect API and the Dask cluster; flow runs that an interrupted
   run left "Running" in Prefect are marked Crashed; the home's Prefect deployment is
   registered (``service.runtime.deployment``): every run is one of its flow runs.

The daemon starts its watcher between the two (intake needs neither the API nor the
cluster); ``retrain run`` takes its files only after both, so that a scheduler or an API
that does not answer leaves them alone.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack

from flows.models.registry import ModelRegistry
from service.config import Settings
from service.intake.home import Home
from service.intake.inbox import reconcile
from service.intake.ledger import Ledger
from service.intake.lock import HomeLock
from service.runner.agreement import mend_current
from service.runner.retention import finish_expiry
from service.runner.runs import Runner
from service.runtime.deployment import DeploymentRef, register_deployment
from service.runtime.scheduler_watch import SchedulerWatch

log = logging.getLogger("retrain.session")

# What Prefect shows on a flow run whose process stopped before recording its end.
CRASH_REASON = "the retrain process running it stopped during this run; its files were queued again"


class RunSession:
    def __init__(self, settings: Settings, holder: str, resources: ExitStack):
        """``holder`` names the process in the lock ("retrain watch", "retrain run"), so a
        second one is told who holds the home."""
        self.settings = settings
        self.holder = holder
        self.home = Home(settings.home)
        self.resources = resources
        self.ledger: Ledger | None = None
        self.registry: ModelRegistry | None = None
        self.api_url: str | None = None
        self.scheduler_address: str | None = None
        self.scheduler_watch: SchedulerWatch | None = None  # on an existing scheduler: watched across restarts
        self.deployment: DeploymentRef | None = None
        self.runner: Runner | None = None  # from open_home on; runs once start_runtime is done
        self.api = None  # service.runtime.api.PrefectApi, once started

    def open_home(self) -> Ledger:
        """Lock the home, open the ledger and repair what an unclean stop left."""
        started = time.perf_counter()
        home = self.home.ensure()
        self.resources.enter_context(HomeLock(home.lock_path, self.holder))
        self.ledger = Ledger(home.ledger_path)
        self.resources.callback(self.ledger.close)
        self.registry = ModelRegistry(home.registry)
        # Intake needs the runner's claims before the runtime is up: it gets its deployment
        # and cluster in ``start_runtime``.
        self.runner = Runner(self.settings, home, self.ledger, self.registry, None, "")
        # A deploy still running for a run of a killed process (on a shared cluster) must
        # not switch `current` any more: no run holds the registry until the next starts.
        self.registry.release_lease()
        self.resources.callback(self.registry.release_lease)
        self._repair()
        log.debug("start-up: home locked, ledger open and repaired in %.2fs", time.perf_counter() - started)
        return self.ledger

    def _repair(self) -> None:
        assert self.ledger is not None and self.registry is not None
        leftovers = self.registry.clean_staging()
        repaired = reconcile(self.ledger, self.home, self.settings.daemon.max_attempts)
        repaired["expiries_finished"] = finish_expiry(self.ledger)
        repaired["current_mended"] = int(mend_current(self.ledger, self.registry, "start-up repair") is not None)
        if leftovers or any(repaired.values()):
            log.info("recovered after an unclean stop: %s%s",
                     ", ".join(f"{k}={v}" for k, v in repaired.items() if v) or "ledger consistent",
                     f"; removed {len(leftovers)} half-written model(s)" if leftovers else "")

    def start_runtime(self, in_process: bool = False) -> str:
        """Start (or reach) the Prefect API and the Dask cluster, at the same time (the API
        takes seconds to boot, the workers too); returns the scheduler's address. A local
        cluster is of worker processes, or ``in_process`` of threads of this process. Prefect
        is imported here, not before: it reads its environment at import."""
        from concurrent.futures import ThreadPoolExecutor

        from service.runtime.api import PrefectApi
        from service.runtime.cluster import (
            check_scheduler,
            dask_cluster,
            quiet_libraries,
        )

        started = time.perf_counter()
        if self.settings.dask.address:
            # Before the API starts: a scheduler that does not answer stops us at once.
            check_scheduler(self.settings.dask.address)
        quiet_libraries()
        # Its URL is in the environment from here on, before any worker starts.
        daemon = self.settings.daemon
        # The daemon's API serves the UI too; a one-shot `retrain run` needs none.
        ui = (daemon.prefect_ui_host, daemon.prefect_ui_port) if daemon.prefect_ui and self.holder == "retrain watch" \
            else None
        api = PrefectApi(daemon.prefect_history_days, ui)
        self.resources.callback(api.stop)
        if not api.embedded:  # an existing API: checked first, quickly, before any worker starts
            api.start()

        def api_ready() -> DeploymentRef:
            """In the API's thread, while the workers warm up: the API, then the deployment."""
            if api.embedded:
                api.start()
            with api.settings():
                self._report_interrupted_flow_runs()
                return register_deployment(self.settings, self.home.root)

        with ThreadPoolExecutor(1, thread_name_prefix="prefect-api") as pool:
            deployment = pool.submit(api_ready)
            try:
                self.scheduler_address = self.resources.enter_context(dask_cluster(self.settings.dask, in_process))
                if self.settings.dask.address:  # its plugins, registered again whenever it restarts
                    self.scheduler_watch = SchedulerWatch(self.scheduler_address)
                    self.scheduler_watch.register()
            finally:
                self.deployment = deployment.result()  # raises when the API did not start
        self.api_url = api.url
        assert self.runner is not None
        self.runner.deployment, self.runner.scheduler_address = self.deployment, self.scheduler_address
        self.resources.enter_context(api.settings())
        quiet_libraries()  # again: importing distributed sets its loggers' levels from Dask's config
        log.debug("start-up: API and cluster ready in %.1fs", time.perf_counter() - started)
        return self.scheduler_address

    def _report_interrupted_flow_runs(self) -> None:
        from service.runtime.api import mark_flow_runs_crashed

        assert self.ledger is not None
        ids = [r.flow_run_id for r in self.ledger.runs(limit=20)
               if r.state == "interrupted" and r.flow_run_id]
        if ids and mark_flow_runs_crashed(ids, CRASH_REASON):
            log.info("marked flow runs of interrupted runs as crashed in Prefect")
