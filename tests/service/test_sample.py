from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from service.sample import SAMPLE_TARGET, write_samples


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_samples_are_complete_files_with_the_task_target(tmp_path: Path, task: str) -> None:
    paths = write_samples(tmp_path, files=2, rows=30, seed=3, task=task)
    assert [p.name for p in paths] == ["batch-0003-000.csv", "batch-0003-001.csv"]
    assert sorted(tmp_path.iterdir()) == paths  # no temporary file left behind
    frame = pd.read_csv(paths[0])
    assert len(frame) == 30 and SAMPLE_TARGET[task] in frame.columns


def test_unknown_task_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        write_samples(tmp_path, task="ranking")
