"""The README walk-through's gate, through the real flow: a batch with no signal is not
deployed and `retrain status` says why in words; a new concept the window lets the model
learn is deployed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from flow_fixtures import call_flow, request_for
from harness import cli, daemon_env, status_json
from invariants import check_invariant

from flows.models.registry import ModelRegistry
from service.sample import write_samples

pytestmark = pytest.mark.integration


def test_the_walkthroughs_noise_batch_is_not_deployed_and_status_says_why(
        tmp_path: Path, prefect_api_url: str, dask_address: str) -> None:
    home = tmp_path / "home"
    env = daemon_env(home, prefect_api_url)
    data = tmp_path / "data"
    first = cli("sample", "--out", str(data), "--files", "2", "--rows", "5000", env=env, cwd=tmp_path).stdout.split()
    result = cli("run", *first, "--dask-address", dask_address, env=env, cwd=tmp_path)
    assert result.returncode == 0 and "deployed v0001" in result.stdout, result.stderr

    noise = cli("sample", "--out", str(data), "--seed", "7", "--label-noise", "0.5", env=env,
                cwd=tmp_path).stdout.split()
    result = cli("run", *noise, "--dask-address", dask_address, env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr  # completed, its file set aside
    assert "no_signal v0002" in result.stdout and "carry nothing to learn" in result.stdout

    status = status_json(home, env)
    last = status["runs"][0]
    assert last["decision"] == "no_signal" and status["current_model"]["version"] == "v0001"
    assert last["reason"].startswith("not deployed, no signal: the new rows carry nothing to learn: on the new "
                                     "files' ")
    assert re.search(r"champion v0001 scores roc_auc 0\.[45]\d{3} and the candidate 0\.[45]\d{3}, chance 0\.5000",
                     last["reason"]), last["reason"]
    assert last["reason"].endswith("v0001 stays deployed")
    text = cli("status", env=env, cwd=tmp_path).stdout
    assert "no_signal" in text and "carry nothing to learn" in text
    # The file is set aside with the numbers, for an operator to decide; out of later windows.
    error = json.loads((home / "quarantine" / f"{Path(noise[0]).name}.error.json").read_text())
    assert error["reason"].startswith("no signal: ") and "retrain requeue" in error["hint"]
    assert error["details"]["signal"]["verdict"] == "no_signal"
    assert ModelRegistry(home / "registry").get("v0002").decision == "no_signal"
    check_invariant(home)


def test_a_new_concept_in_a_window_of_the_newest_file_is_deployed(tmp_path: Path, dask_address: str) -> None:
    """The champion is far worse than chance on a reversed concept: the rows carry a relation
    that changed, not noise; the candidate, trained on the new file alone, learned it and is
    deployed. Slices by region are recorded."""
    old = write_samples(tmp_path / "data", files=1, rows=4000, seed=31)
    assert call_flow(request_for(tmp_path, old), dask_address).outcome.decision == "deployed"
    new = write_samples(tmp_path / "data", files=1, rows=4000, seed=32, concept_shift=1.0)
    result = call_flow(request_for(tmp_path, new, evaluation={"slices": ["region"]}), dask_address)
    outcome = result.outcome
    assert outcome.decision == "deployed", outcome.reason
    evaluation = ModelRegistry(tmp_path / "registry").get("v0002").lineage["evaluation"]
    assert evaluation["signal"] is None and not evaluation["no_signal"]
    assert evaluation["comparison"]["low"] > 0.5  # the candidate far better than the champion
    names = [part["name"] for part in evaluation["slices"]]
    assert names[0] == "new rows" and "earlier rows" not in names  # the window is the new file
    assert {"region=east", "region=north", "region=south", "region=west"} <= set(names)
