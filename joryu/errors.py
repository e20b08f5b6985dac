"""Errors that joryu raises for bad input. Each message names the problem and the fix.

Every ``JoryuError`` is a user's mistake (a config, a data file, a checkpoint, a tap path, a run
folder, a loss that diverged): the command line prints it as one line and exits with status 2.
Any other exception is a bug in joryu: the command line prints its traceback and exits with 1.

Whose code failed (the one rule): an exception that escapes code joryu calls on the user's behalf
(a Dataset's ``__getitem__``/``__len__``/``__iter__``, a data factory, a transform, a collate
function, a model's forward) is the user's when its innermost frame outside the neutral
libraries (python, torch, numpy, accelerate) is not in joryu; ``user_code_error(e, callable, index)``
then gives the ``UserCodeError`` (one line: the callable's qualified name, the sample index, the
original error) and returns None for joryu's own bugs, which keep their traceback (exit 1). What
no boundary caught (a method written by the user, a collate run in a DataLoader worker) goes through
the same function without a callable: it is the user's when that frame is in a file of the user's
(neither joryu nor an installed package).
"""

from __future__ import annotations

import os
import re
import sysconfig


class JoryuError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2."""

    exit_code = 2


class ConfigError(JoryuError):
    """An experiment configuration is malformed or names something unknown."""


class DataError(ConfigError):
    """A dataset file is missing, corrupt or of the wrong shape."""


class TapError(ConfigError):
    """A feature tap names a module path that does not exist."""


class ShapeError(ConfigError, ValueError):
    """Two things the user paired do not fit (feature widths, logits, masks): also a ValueError."""


class UserCodeError(JoryuError):
    """An exception raised in the user's own code (see the module docstring): one line naming
    the callable, the sample index and the original error; the original is its ``__cause__``."""


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


# ----------------------------------------------------------------------------- whose code failed
_HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep  # the joryu package
_STDLIB = tuple({os.path.abspath(p) + os.sep for p in (sysconfig.get_paths()["stdlib"],
                                                       sysconfig.get_paths()["platstdlib"])})
_NEUTRAL = ("torch", "numpy", "accelerate", "safetensors", "_pytest", "pluggy")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def _site(path: str) -> bool:
    return f"{os.sep}site-packages{os.sep}" in path or f"{os.sep}dist-packages{os.sep}" in path


def _neutral(path: str) -> bool:
    if path.startswith("<"):  # frozen importlib, exec'd strings
        return True
    if _site(path):
        rest = path.split("-packages" + os.sep, 1)[1]
        return rest.split(os.sep, 1)[0] in _NEUTRAL
    return path.startswith(_STDLIB)


def _frames(e: BaseException) -> list[tuple[str, int, str]]:
    """(file, line, function) of ``e``'s traceback, outermost first; for an error re-raised from a
    DataLoader worker, the frames of the worker's original traceback."""
    text = str(e)
    if "Original Traceback" in text:
        return [(f, int(n), fn) for f, n, fn in _FRAME.findall(text.split("Original Traceback", 1)[1])]
    out, tb = [], e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        out.append((os.path.abspath(code.co_filename), tb.tb_lineno,
                    getattr(code, "co_qualname", code.co_name)))
        tb = tb.tb_next
    return out


def culprit(e: BaseException) -> tuple[str, int, str] | None:
    """The innermost frame of ``e`` outside python, torch, numpy and accelerate: (file, line,
    function), or None when there is none."""
    for frame in reversed(_frames(e)):
        if not _neutral(os.path.abspath(frame[0]) if not frame[0].startswith("<") else frame[0]):
            return frame
    return None


def in_joryu(frame) -> bool:
    return frame is not None and os.path.abspath(frame[0]).startswith(_HERE)


def qualified_name(obj) -> str:
    """``module.Qualified.name`` of a function, a bound method or a callable object."""
    fn = getattr(obj, "__func__", obj)
    if not hasattr(fn, "__qualname__"):
        fn = type(fn)
        return f"{fn.__module__}.{fn.__qualname__}.__call__"
    return f"{getattr(fn, '__module__', None) or '?'}.{fn.__qualname__}"


def _original(e: BaseException) -> str:
    """``Type: first line`` of the error (of the worker's original error for a re-raised one)."""
    text = str(e)
    if "Original Traceback" in text:
        return [x for x in text.splitlines() if x.strip()][-1].strip()
    return f"{type(e).__name__}: {one_line(e)}"


def user_code_error(e: BaseException, callable_=None, index: int | None = None,
                    where: str = "") -> UserCodeError | None:
    """The ``UserCodeError`` for ``e`` when it is the user's (see the module docstring), else None.

    ``callable_``: what joryu called (a boundary: everything outside joryu is the user's); None
    for what no boundary caught (only the user's own files count: not joryu, not an installed
    package). ``index``: the sample being read; ``where``: a prefix (e.g. the stage)."""
    if isinstance(e, JoryuError) or not isinstance(e, Exception):
        return None
    frame = culprit(e)
    if in_joryu(frame):
        return None
    if callable_ is not None:
        name = callable_ if isinstance(callable_, str) else qualified_name(callable_)
    elif frame is not None and not _site(frame[0]):
        name = f"{frame[2]} ({frame[0]}:{frame[1]})"
    else:
        return None
    return _user_error(where, name, index, _original(e))


def _user_error(where: str, name: str, index, original: str) -> UserCodeError:
    at = f" at sample {index}" if index is not None else ""
    err = UserCodeError(f"{where}{name}{at} raised {original} (an error in your code, not in joryu; "
                        "JORYU_DEBUG=1 shows its traceback)")
    err.parts = (where, name, index, original)
    return err


def at_sample(err: UserCodeError, index: int) -> UserCodeError:
    """``err`` naming sample ``index`` when it names none yet (a transform does not know it)."""
    parts = getattr(err, "parts", None)
    if parts is None or parts[2] is not None:
        return err
    new = _user_error(parts[0], parts[1], index, parts[3])
    new.__cause__ = err.__cause__
    return new


def reraise_as_user(e: BaseException, callable_=None, index: int | None = None, where: str = ""):
    """Raise ``user_code_error(...)`` from ``e`` when it is the user's, else ``e`` unchanged
    (call it in an ``except`` block)."""
    err = user_code_error(e, callable_, index, where)
    if err is None:
        raise e
    raise err from e
