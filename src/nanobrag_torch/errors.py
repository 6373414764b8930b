"""Errors raised for bad input.

`ConfigError` is the single error type the command line catches and prints
as one line (naming the flag or file); the library raises it too, so API
users see the same message.
"""


class ConfigError(ValueError):
    """Bad flag, value, file or geometry; the message names the culprit."""


class UsageError(ConfigError):
    """Missing crystal or structure factors: the C prints its usage and exits 9."""
