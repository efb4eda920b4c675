"""`ConfigError`: a problem with a run config, worded for the user."""

from __future__ import annotations

from softprompt.errors import UserError


class ConfigError(UserError):
    """A configuration problem, with a message meant for the user (names key and value)."""
