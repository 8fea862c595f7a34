"""A Dask worker plugin that keeps the first run of a warm daemon as fast as the next ones."""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin


class WarmUp(WorkerPlugin):
    """Imports the flow's code (Prefect, pandas, pyarrow, scikit-learn, skops) when a worker
    starts, so that the first run does not pay for it. Registered by name: registering it
    again (a restarted daemon on the same cluster) replaces it, and workers started later
    by adaptive scaling run it too."""

    name = "retrain-warm-up"
    idempotent = True

    def setup(self, worker) -> None:
        import flows.retrain  # noqa: F401
