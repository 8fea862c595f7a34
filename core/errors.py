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
