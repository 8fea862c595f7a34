"""The daemon, the intake of files and the command line of the retraining service."""

import core  # noqa: F401,E402  (first: its import makes parsing with ast thread-safe, see core.ast_guard)
