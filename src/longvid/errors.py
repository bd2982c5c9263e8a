"""Errors that reach users as one clear line (CLI exit code 2, HTTP 4xx), never as a traceback."""

from __future__ import annotations


class LongvidError(Exception):
    """A problem with what the user gave us (a path, a file, a setting), explained in one line."""

    exit_code = 2


class InputError(LongvidError):
    """Bad media input: missing, unreadable, corrupt or unsupported."""


class CheckpointError(LongvidError):
    """A model directory or hub id that cannot be loaded."""


class ConfigError(LongvidError):
    """A config value that is unknown or inconsistent."""


class BudgetError(LongvidError):
    """The request does not fit the model's context; the message says what to change."""
