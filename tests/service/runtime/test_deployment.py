"""The deployment's parameters: what the UI's Run button and `prefect deployment run` may
pass, checked the same way the API checks them (no Prefect server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import RetrainError
from service.runtime.deployment import deployment_name, run_parameters


def test_parameters_are_completed_with_their_defaults() -> None:
    assert run_parameters({}) == {"reason": "an operator in Prefect", "last_files": None}
    assert run_parameters({"reason": "nightly", "last_files": 3}) == {"reason": "nightly", "last_files": 3}


@pytest.mark.parametrize("parameters, expected", [
    ({"last_files": -1}, "parameter last_files: Input should be greater than or equal to 0"),
    ({"last_files": "many"}, "parameter last_files"),
    ({"window": 3}, "parameter window: Unexpected keyword argument"),
])
def test_parameters_that_do_not_fit_are_one_line(parameters: dict, expected: str) -> None:
    with pytest.raises(RetrainError) as info:
        run_parameters(parameters)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_the_deployment_is_named_after_the_home(tmp_path: Path) -> None:
    assert deployment_name(tmp_path / "var") == "var"
