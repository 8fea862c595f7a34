"""Intake: every file from the moment it lands in the inbox until a run takes it. The
home's folders (``home``), the watcher, the claims and every move of a file (``inbox``), the
ledger that records them, the batcher, the home's lock and operators' run requests."""
