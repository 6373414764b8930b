"""Errors raised for bad input.

`ConfigError` is the single error type the command line catches and prints
as one line (naming the flag or file); the library raises it too, so API
users see the same message. Errors about one config field carry its name
(`field`, e.g. "beam.wavelength_A") and the reason apart, so the command line
can say the same thing with the flag's name instead of the field's.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """Bad flag, value, file or geometry; the message names the culprit."""


class UsageError(ConfigError):
    """Missing crystal or structure factors: the C prints its usage and exits 9."""


class FieldError(ConfigError):
    """A config field with a bad value: message "field: reason"."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ConfigValueError(FieldError):
    """A field's value is out of range or meaningless (ValueError)."""


class ConfigTypeError(FieldError, TypeError):
    """A field holds the wrong kind of value (TypeError)."""


class ConfigConflictError(FieldError, RuntimeError):
    """Fields that are valid alone disagree with each other (RuntimeError); `field` is the
    one named first."""


class FlagError(ConfigError):
    """A bad flag, value or flag combination (the CLI exits with status 2)."""


class FileError(ConfigError):
    """An unreadable or malformed input file (the CLI exits with status 1)."""
