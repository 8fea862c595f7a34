"""The daemon, the intake of files and the command line of the retraining service."""

import core  # noqa: F401  (its import makes parsing with ast thread-safe: core.ast_guard)
