"""Errors a user can cause. Each carries a one-line message that says what to do."""

from __future__ import annotations

from typing import Any


class RetrainError(Exception):
    """Base class: the message is shown to the operator as one line, without a traceback."""


class ConfigError(RetrainError):
    """The configuration is invalid (key, value and what was expected are in the message)."""


class InvalidDataError(RetrainError):
    """A data file cannot be used. ``details`` is a JSON-serialisable explanation
    (columns, example rows, counts) written next to the quarantined file."""

    def __init__(self, message: str, details: dict[str, Any] | None = None, hint: str = ""):
        super().__init__(message)
        self.details = details or {}
        self.hint = hint


class TrainingError(RetrainError):
    """The window cannot be trained on (too few rows, a single class, ...)."""


class ModelNotFoundError(RetrainError):
    """An unknown model version was named, or no model is deployed yet."""


class RegistryIntegrityError(RetrainError):
    """A registry file does not match its recorded sha256 or contains untrusted types."""


class DeployError(RetrainError):
    """Deployment failed (after its retries) and was rolled back."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none: how
    an error from a library is quoted inside one of our one-line messages."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line of at most ``limit`` characters: its type, then the first
    line of its message (a traceback is never an operator's line)."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
