"""The base class of errors that mean "the user's input is wrong".

This module imports nothing of the project, so every layer can subclass `UserError`.
The CLI prints a `UserError` (or one of the OS errors below) as one line, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's config, data, model or files; the message says which.

    It is a `ValueError` too, so code that caught `ValueError` before keeps working.
    """


# What the CLI reports as a user's mistake: ours, plus the OS's file errors.
USER_ERRORS: tuple[type[Exception], ...] = (
    UserError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
