"""Fixtures shared by the tests of the flow's steps."""

from __future__ import annotations

from pathlib import Path

import pytest
from flow_fixtures import (
    CLASSIFY,
    FAST,
    partitions,
)

from flows.data.window import Window
from flows.training.train import train_candidate


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("trained")
    paths = partitions(folder, CLASSIFY, rows=2000)
    result = train_candidate(Window(paths, CLASSIFY), FAST, folder / "model.skops")
    return Path(result.model_path), paths
