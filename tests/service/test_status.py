from __future__ import annotations

from pathlib import Path

from rich.console import Console

from service.config import Settings
from service.intake.home import Home
from service.intake.ledger import Ledger
from service.status import collect_status, render_status


def test_status_shows_the_last_operator_actions(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    ledger = Ledger(home.ledger_path)
    try:
        ledger.record_event("requeue", {"file_id": 2, "name": "old.csv"})
        for n in range(4):
            ledger.record_event("rollback", {"from": f"v000{n + 2}", "to": f"v000{n + 1}",
                                             "by": "retrain models rollback"})
        ledger.record_event("requeue", {"file_id": 3, "name": "fixed.csv"})
    finally:
        ledger.close()

    status = collect_status(home, Settings(home=home.root))
    actions = status["operator_actions"]
    assert [a["kind"] for a in actions] == ["requeue"] + ["rollback"] * 4  # the newest first
    assert actions[1]["from"] == "v0005" and actions[1]["to"] == "v0004"

    console = Console(record=True, width=160)
    console.print(render_status(status))
    text = console.export_text()
    assert "Last operator actions" in text
    assert "current v0005 -> v0004 (retrain models rollback)" in text
    assert "'fixed.csv' (file 3) back into the inbox" in text
    assert "old.csv" not in text  # older than the last five


def test_status_without_operator_actions_has_no_such_table(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    Ledger(home.ledger_path).close()
    status = collect_status(home, Settings(home=home.root))
    assert status["operator_actions"] == []
    console = Console(record=True, width=160)
    console.print(render_status(status))
    assert "operator actions" not in console.export_text()
