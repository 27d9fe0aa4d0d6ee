"""The project's user-facing errors: bad input (config, data, checkpoint, CLI) that the CLI prints
without a traceback. Each message names the source (file or "command line") and the field or path,
and is raised before any work starts."""

from __future__ import annotations


class OvertrainError(ValueError):
    """Bad user input (config, data, checkpoint, CLI): the CLI prints the message, no traceback."""


class ConfigError(OvertrainError):
    """A bad config: the message names the source and the field (``field``: its dotted key, if known)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class DataError(OvertrainError):
    """A missing, unreadable or mismatched data file: the message names the file."""


class CheckpointError(OvertrainError):
    """A missing, incomplete or incompatible checkpoint: the message names the path."""
