"""The ``joryu`` command line: parsing, dispatch and exit statuses. Each command lives in its own
module under ``joryu.commands``.

Exit status: 0 success; 2 a user's mistake (config, data, checkpoint, tap path, run folder, a loss
that diverged, a malformed command line, an exception in the user's own code: see
``joryu.errors``), printed as one line ``joryu: error: ...`` (``JORYU_DEBUG=1`` adds the traceback
behind it); 1 a bug in joryu (its traceback is printed); 130 interrupted. ``main(argv)`` returns the status and never
calls ``sys.exit`` itself, so it can be called in-process.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import traceback

from joryu import __version__
from joryu.commands import COMMANDS
from joryu.errors import ConfigError, JoryuError, UsageError, one_line


class Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as one line (a ``UsageError``) instead of exiting."""

    def error(self, message):  # noqa: D401 - argparse API
        if "arguments are required: config" in message:
            message = "a config file is required: joryu run CONFIG.yaml [key=value ...]"
        raise UsageError(f"{message} (see {self.prog} --help)")


def _command(name: str):
    return importlib.import_module(COMMANDS[name])


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (for --help); each command is parsed by ``command_parser``."""
    helps = {name: _command(name).HELP for name in COMMANDS}
    p = Parser(prog="joryu", description="Distill a large teacher into a small, fast student.",
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="commands:\n" + "\n".join(f"  {k:<10} {v}" for k, v in helps.items())
               + "\n\nWith no command (or only flags and key=value overrides) joryu runs `distill`."
               "\nExit status: 0 ok, 2 a mistake in the input (one line on stderr), 1 a bug.")
    p.add_argument("--version", action="version", version=f"joryu {__version__}")
    return p


def command_parser(command: str) -> argparse.ArgumentParser:
    module = _command(command)
    sp = Parser(prog=f"joryu {command}", description=module.__doc__.strip().splitlines()[0])
    module.configure(sp)
    sp.set_defaults(func=module.run)
    return sp


def _set_threads() -> None:
    value = os.environ.get("JORYU_THREADS")
    if not value:
        return
    try:
        n = int(value)
        if n < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(f"JORYU_THREADS={value!r} must be a whole number >= 1 (threads for torch)") from None
    import torch

    torch.set_num_threads(n)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help", "--version"):
        build_parser().parse_args(argv[:1])  # prints and raises SystemExit(0)
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        argv = ["distill", *argv]
    command = argv[0]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown command {command!r}.{hint} Commands: {', '.join(COMMANDS)} "
                         "(joryu --help)")
    module = _command(command)
    if getattr(module, "OWN_ARGUMENTS", False):  # e.g. bench: its own options
        _set_threads()
        return module.run(argv[1:])
    args = command_parser(command).parse_intermixed_args(argv[1:])
    for item in getattr(args, "overrides", None) or []:
        if "=" not in item:
            raise UsageError(f"{item!r} is neither an option of joryu {command} nor a key=value "
                             f"override (see joryu {command} --help)")
    _set_threads()
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (``--help``/``--version`` raise SystemExit(0))."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _dispatch(argv)
    except JoryuError as e:
        if os.environ.get("JORYU_DEBUG"):  # the traceback behind the one line
            traceback.print_exception(e)
        print(f"joryu: error: {_one_line(e)}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print("joryu: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except OSError as e:  # the file system refused (disk full, permissions): not a bug
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"joryu: error: {e.strerror or type(e).__name__}:{where}", file=sys.stderr, flush=True)
        return 2
    except Exception:
        traceback.print_exc()
        print("joryu: internal error (a bug in joryu; the traceback above helps to report it)",
              file=sys.stderr, flush=True)
        return 1


def _one_line(e: BaseException) -> str:
    if "Original Traceback" in str(e):  # re-raised from a DataLoader worker
        return one_line(e)
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
