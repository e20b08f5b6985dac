"""Errors that joryu raises for bad input. Each message names the problem and the fix."""


class JoryuError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""

    exit_code = 1


class ConfigError(JoryuError):
    """An experiment configuration is malformed or names something unknown."""

    exit_code = 2


class DataError(JoryuError):
    """A dataset file is missing, corrupt or of the wrong shape."""


class TapError(JoryuError):
    """A feature tap names a module path that does not exist."""


class NonFiniteLossError(JoryuError):
    """Training produced a NaN or infinite loss."""
