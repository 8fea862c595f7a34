"""The daemon's own local cluster keeps short records: what a process that runs for months
holds levels off within minutes (service.runtime.cluster.LONG_LIVED_DASK_CONFIG)."""

from __future__ import annotations

import pytest
from distributed import Client

from service.config import DaskSpec
from service.runtime.cluster import dask_cluster

pytestmark = pytest.mark.integration


def worker_records(dask_worker=None) -> dict:
    import dask

    return {"extensions": sorted(dask_worker.extensions),
            "profile": dask.config.get("distributed.worker.profile.enabled"),
            "state log": dask_worker.state.log.maxlen, "stimulus log": dask_worker.state.stimulus_log.maxlen,
            "system monitor": dask_worker.monitor.maxlen}


def scheduler_records(dask_scheduler=None) -> dict:
    import dask

    return {"extensions": sorted(dask_scheduler.extensions),
            "transition log": dask_scheduler.transition_log.maxlen,
            "computations": dask_scheduler.computations.maxlen,
            "system monitor": dask_scheduler.monitor.maxlen,
            "events cleanup": dask.config.get("distributed.scheduler.events-cleanup-delay")}


def test_the_own_cluster_keeps_minutes_of_records_and_no_profile_or_spans() -> None:
    spec = DaskSpec(n_workers=1, dashboard_address=None)
    with dask_cluster(spec) as address, Client(address) as client:
        (worker,) = client.run(worker_records).values()
        scheduler = client.run_on_scheduler(scheduler_records)

    assert "spans" not in worker["extensions"] and worker["profile"] is False
    assert worker["state log"] == worker["stimulus log"] == 50
    assert worker["system monitor"] == 1200  # ten minutes of half-second samples
    assert "spans" not in scheduler["extensions"]
    assert scheduler["transition log"] == 50 and scheduler["computations"] == 10
    assert scheduler["system monitor"] == 1200 and scheduler["events cleanup"] == "60s"
