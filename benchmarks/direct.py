"""The flow called directly in a benchmark's process, as a flow run of its own outside any
deployment (no daemon, no ledger): what the benchmarks of one step measure."""

from __future__ import annotations


def call_flow(request, scheduler_address: str, name: str = "benchmark"):
    from service.runner.flowruns import execute
    from service.runner.records import RunStart

    return execute(RunStart(None, name), request, scheduler_address)
