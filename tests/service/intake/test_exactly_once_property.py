"""Property: whatever the sequence of drops, duplicates, bad entries, runs and crashes,
every dropped file ends in exactly one place and is used by at most one completed run.

Real folders and a real ledger; a "crash" abandons a step half-way (as SIGKILL would)
and a "restart" is a new Ledger on the same database followed by ``reconcile``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from invariants import check_invariant

from service.intake.inbox import (
    Home,
    archive_files,
    claim_file,
    fail_run_files,
    reconcile,
)
from service.intake.ledger import FileState, Ledger

MAX = 1_000_000

step = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 5)),  # content id: equal ids are duplicates
    st.tuples(st.just("bad"), st.sampled_from(["notes.txt", "dir.csv", "link.csv"])),
    st.tuples(st.just("run"), st.sampled_from(["archive", "reject_first", "fail"])),
    st.tuples(st.just("crash"), st.sampled_from(["mid_claim", "mid_run", "mid_archive"])),
    st.tuples(st.just("restart"), st.just(None)),
)


class World:
    def __init__(self, root: Path):
        self.home = Home(root / "home").ensure()
        self.ledger = Ledger(self.home.ledger_path)
        self.dropped = 0
        self.names = 0

    def restart(self) -> None:
        self.ledger.close()
        self.ledger = Ledger(self.home.ledger_path)
        reconcile(self.ledger, self.home, max_attempts=2)
        self.claim_inbox()  # the daemon's first scan

    def drop(self, content: int) -> Path:
        self.names += 1
        path = self.home.inbox / f"file {self.names} é.csv"
        path.write_text(f"a,b\n{content},{content}\n")
        self.dropped += 1
        return path

    def claim_inbox(self) -> None:
        for entry in sorted(self.home.inbox.iterdir()):
            claim_file(self.ledger, self.home, entry, 0.0, MAX)

    def run(self, how: str, crash_before_moves: bool = False) -> None:
        queued = [f.id for f in self.ledger.files(FileState.QUEUED)]
        if not queued:
            return
        run = self.ledger.start_run(queued)
        if how == "fail":
            fail_run_files(self.ledger, self.home, run.id, "boom", max_attempts=2)
            return
        rejected = {queued[0]: {"reason": "bad rows"}} if how == "reject_first" else {}
        accepted = [i for i in queued if i not in rejected]
        if crash_before_moves:  # the ledger committed the outcome, the moves never happened
            self.ledger.complete_run(run.id, decision="deployed", reason="", flow_run_id=None,
                                     model_version=None, metric=None, details={},
                                     archived={i: str(self.home.archive / f"{i}.csv") for i in accepted},
                                     quarantined={i: (str(self.home.quarantine / f"{i}.csv"), e)
                                                  for i, e in rejected.items()})
            return
        archive_files(self.ledger, self.home, run.id, decision="deployed", reason="", flow_run_id=None,
                      model_version=None, metric=None, details={}, accepted=accepted, rejected=rejected)

    def crash(self, where: str) -> None:
        if where == "mid_claim":
            path = self.drop(99)
            record = self.ledger.begin_claim(path.name, str(self.home.processing / "{id}-" f"{path.name}"), 0.0)
            os.rename(path, record.path)  # renamed, never hashed or queued
        elif where == "mid_run":
            queued = [f.id for f in self.ledger.files(FileState.QUEUED)]
            if queued:
                self.ledger.start_run(queued)  # the run never finishes
        else:
            self.run("reject_first", crash_before_moves=True)
        self.restart()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=25))
def test_every_file_ends_in_exactly_one_place(steps) -> None:
    root = Path(tempfile.mkdtemp(prefix="retrain-prop-"))
    world = World(root)
    try:
        for kind, arg in steps:
            if kind == "drop":
                world.drop(arg)
                world.claim_inbox()
            elif kind == "bad":
                world.dropped += 1
                target = world.home.inbox / f"{world.names}-{arg}"
                world.names += 1
                if arg == "dir.csv":
                    target.mkdir()
                elif arg == "link.csv":
                    os.symlink("/etc/hostname", target)
                else:
                    target.write_text("not csv")
                world.claim_inbox()
            elif kind == "run":
                world.run(arg)
            elif kind == "crash":
                world.crash(arg)
            else:
                world.restart()
            check_invariant(world.home)
        world.restart()
        while world.ledger.files(FileState.QUEUED):  # drain: every file reaches a final place
            world.run("archive")
        counts = check_invariant(world.home)
        final = counts["archived"] + counts["quarantined"] + counts["duplicate"]
        assert final == world.dropped, (counts, world.dropped)
        used = [f.run_id for f in world.ledger.files(FileState.ARCHIVED)]
        assert all(run_id is not None for run_id in used)
        runs = {r.id: r for r in world.ledger.runs(limit=10_000)}
        assert all(runs[run_id].state == "completed" for run_id in used)
        # Same content is trained on once: archived files have distinct hashes.
        hashes = [f.sha256 for f in world.ledger.files(FileState.ARCHIVED)]
        assert len(hashes) == len(set(hashes))
    finally:
        world.ledger.close()
        shutil.rmtree(root, ignore_errors=True)
