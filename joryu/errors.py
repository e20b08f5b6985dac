"""Errors that joryu raises for bad input. Each message names the problem and the fix.

Every ``JoryuError`` is a user's mistake (a config, a data file, a checkpoint, a tap path, a run
folder, a loss that diverged): the command line prints it as one line and exits with status 2.
Any other exception is a bug in joryu: the command line prints its traceback and exits with 1.
"""


class JoryuError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2."""

    exit_code = 2


class ConfigError(JoryuError):
    """An experiment configuration is malformed or names something unknown."""


class DataError(ConfigError):
    """A dataset file is missing, corrupt or of the wrong shape."""


class TapError(ConfigError):
    """A feature tap names a module path that does not exist."""


class NonFiniteLossError(JoryuError):
    """Training produced a NaN or infinite loss."""


class CheckpointError(ConfigError):
    """A weights file or a training checkpoint is missing, corrupt, unsafe or does not fit."""


class StorageError(JoryuError, OSError):
    """The file system refused a write (disk full, a file-size limit, a quota): one line naming
    the file; nothing half-written is kept. Also an ``OSError``, as the refusal it reports."""


class UsageError(ConfigError):
    """A malformed command line."""


class RunDirError(ConfigError):
    """A run folder cannot be created, would overwrite a run, or does not match the config."""


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(e).strip()
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the original message
        last = [x for x in text.splitlines() if x.strip()][-1].strip()
        head, sep, rest = last.partition(": ")
        return rest if sep and " " not in head else last
    first = text.splitlines()[0] if text else ""
    return first or type(e).__name__


def warn(message: str) -> None:
    """A one-line warning on stderr (``joryu: warning: ...``) for a setting that has no effect."""
    import sys

    print(f"joryu: warning: {message}", file=sys.stderr, flush=True)
