"""A short soak: the benchmark's own loop (benchmarks/soak.py) on a few files, through a
real daemon with its embedded Prefect API and local cluster. Checks that every file is
used exactly once and that the benchmark sees each role of the process tree; memory and
time limits belong to the benchmark, not here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from invariants import check_invariant

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import soak  # noqa: E402

# A daemon's start and a handful of runs: on a busy machine this outlasts the default.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_short_soak_is_exactly_once_and_sampled_per_role(tmp_path: Path) -> None:
    # Two measured files after one warm-up: the fewest that give a slope per role (the
    # 500-file run is `make soak`).
    result = soak.soak(tmp_path, files=2, warmup=1, settings={"dask__dashboard_address": "null"})
    records = result["records"]

    assert [r["state"] for r in records] == ["archived"] * 3
    assert check_invariant(Path(result["home"]))["archived"] == 3
    for record in records:
        rss = record["rss"]
        for role in ("daemon", "workers", "prefect api"):
            assert rss[role] > 0, (role, record)
        assert rss["tree"] >= rss["daemon"] + rss["workers"] + rss["prefect api"]
        assert record["cpu"]["daemon"] > 0 and record["cpu"]["tree"] >= record["cpu"]["daemon"]
        assert set(record["disk"]) == set(soak.FOLDERS)
    assert records[-1]["disk"]["registry"] > 0

    summary = soak.summarize(result)
    assert summary["files"] == 2 and summary["warmup"] == 1
    assert set(summary["slope_mib"]) == set(soak.ROLES)
    # CPU per run over the two measured files: every run costs the daemon some.
    assert summary["cpu_last"]["daemon"] > 0 and summary["cpu_last"]["tree"] >= summary["cpu_last"]["daemon"]
