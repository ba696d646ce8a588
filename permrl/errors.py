"""The mistakes a user's input can cause, under one base class.

Each module raises its own kind (`ConfigError` for a config key, `SourceError` for a data
source, ...); all are `UserError`s, which the command line prints as one line (exit status 2),
never as a traceback. A library caller catches `permrl.errors.UserError` the same way.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in a user's config, data, files or command: one line that says what to do."""


class RunError(UserError):
    """A user error about a run directory, a resume or the data: one line."""


__all__ = ["RunError", "UserError"]
