"""Errors a user can fix. The CLI prints them as one line and exits non-zero; anything else
is a bug and keeps its traceback."""


class UserError(ValueError):
    """Bad input: the message names the value and the fix."""


class ConfigError(UserError):
    """A config key or value is wrong."""
