"""The retraining pipeline: a Prefect flow whose steps run on Dask.

Each step is a plain function (testable without Prefect or Dask) with a thin
``@task`` wrapper in :mod:`flows.retrain`. Nothing here imports :mod:`service`.
"""

import core  # noqa: F401  (its import makes parsing with ast thread-safe: core.ast_guard)
