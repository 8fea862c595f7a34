"""Fixtures shared by the service's unit tests: a fresh home and its ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.intake.home import Home
from service.intake.ledger import Ledger


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home").ensure()


@pytest.fixture
def ledger(home: Home):
    ledger = Ledger(home.ledger_path)
    yield ledger
    ledger.close()
