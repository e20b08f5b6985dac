"""The ``joryu`` command line.

Exit status: 0 success; 2 a user's mistake (config, data, checkpoint, tap path, run folder, a loss
that diverged, a malformed command line), printed as one line ``joryu: error: ...``; 1 a bug in
joryu (its traceback is printed); 130 interrupted. ``main(argv)`` returns the status and never
calls ``sys.exit`` itself, so it can be called in-process.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from joryu.errors import ConfigError, JoryuError

COMMANDS = {
    "distill": "the main job: KD on built-in MNIST-1D (the default command)",
    "run": "run an experiment from a YAML config",
    "config": "show a resolved config (config show C.yaml [overrides]) or a method's schema",
    "methods": "list methods (methods NAME: a method's parameters)",
    "models": "list the model zoo (models NAME: a model's options)",
    "datasets": "list datasets",
    "reproduce": "run a paper's small-scale reproduction; writes results/NAME.md",
    "eval": "evaluate a run folder's networks, or a model + weights, on any dataset",
    "export": "export a run's student (or a model + weights) to ONNX, TorchScript or torch.export",
    "report": "print a run folder's results, calibration and deployment tables",
    "bench": "training-throughput benchmark (writes benchmarks/RESULTS.md); bench --help",
}


# More commands from other modules: name -> (module, help); ``module.add_parser(subparsers)`` adds
# the command's parser (with ``set_defaults(func=...)``). Empty here: eval and export are in
# COMMANDS; this is the hook for a command whose module is optional.
PLUGINS: dict[str, tuple[str, str]] = {}


def _plugins() -> dict[str, str]:
    import importlib.util

    found = {}
    for name, (module, help_text) in PLUGINS.items():
        if name in COMMANDS:
            continue
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is not None and "add_parser" in (spec.loader.get_source(module) or ""):
            found[name] = help_text
    return found


class UsageError(ConfigError):
    """A malformed command line."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as one line (a ``UsageError``) instead of exiting."""

    def error(self, message):  # noqa: D401 - argparse API
        if "arguments are required: config" in message:
            message = "a config file is required: joryu run CONFIG.yaml [key=value ...]"
        raise UsageError(f"{message} (see {self.prog} --help)")


def _print_table(rows: dict) -> None:
    from joryu.report.tables import comparison_rows, format_table

    print()
    print(format_table(comparison_rows(rows)))


def _run_experiment(cfg, args) -> int:
    from joryu.experiment import Experiment, is_main

    exp = Experiment(cfg, run_dir=args.out, progress=not args.quiet, resume=args.resume,
                     overwrite=args.overwrite)
    main_process = is_main()
    if exp.finished:
        if main_process:
            print(f"joryu: {exp.run_dir} holds a finished run; nothing to resume (report: "
                  f"{exp.run_dir / 'report.md'}; use --overwrite to train it again)", file=sys.stderr)
        return 0
    if main_process:
        print(f"run folder: {exp.run_dir}", flush=True)
    summary = exp.run()
    if main_process:
        _print_table(summary["rows"])
        print(f"\nreport: {exp.run_dir / 'report.md'}")
    return 0


def _main_job(args):
    import copy

    from joryu.config import apply_overrides, build_config
    from joryu.defaults import MAIN_JOB

    raw = copy.deepcopy(MAIN_JOB)
    if args.method:
        raw["method"] = {"name": args.method, "params": {}}
    return build_config(apply_overrides(raw, args.overrides))


def cmd_distill(args) -> int:
    return _run_experiment(_main_job(args), args)


def cmd_run(args) -> int:
    from joryu.config import load_config

    return _run_experiment(load_config(args.config, args.overrides), args)


def _print_fields(rows) -> None:
    if not rows:
        print("  (no parameters)")
        return
    w = max(len(r[0]) for r in rows)
    t = max(len(r[1]) for r in rows)
    for name, tname, default, desc in rows:
        print(f"  {name.ljust(w)}  {tname.ljust(t)}  default {default}" + (f"  {desc}" if desc else ""))


def _method_schema(name: str) -> int:
    from joryu.config import describe_fields
    from joryu.methods import get_method
    from joryu.methods.base import _METHODS

    method = get_method(name)  # a one-line error (with suggestions) for an unknown name
    info = _METHODS[name]
    print(f"{name}: {info.paper} [{info.status}]")
    print(f"needs a teacher: {'yes' if method.needs_teacher else 'no'} (with default parameters)")
    print("parameters (method.params.NAME):")
    _print_fields(describe_fields(type(method.params)))
    return 0


def cmd_methods(args) -> int:
    if args.name:
        return _method_schema(args.name)
    from joryu.methods import listing

    rows = listing()
    w = max(len(r[0]) for r in rows)
    for name, paper, status in rows:
        print(f"{name.ljust(w)}  {status:<11}  {paper}")
    print("\njoryu methods NAME lists a method's parameters.")
    return 0


def cmd_models(args) -> int:
    from joryu.models import describe

    if args.name:
        from joryu.models.registry import options

        rows = options(args.name)
        print(f"{args.name}: {describe()[args.name]}")
        print("options (student.kwargs / teacher.kwargs; num_classes and input_shape come from the data):")
        w = max((len(r[0]) for r in rows), default=0)
        for opt, ann, default in rows:
            print(f"  {opt.ljust(w)}  {ann or 'any'}  default {default}")
        return 0
    d = describe()
    w = max(len(k) for k in d)
    for k, v in d.items():
        print(f"{k.ljust(w)}  {v}")
    print("\njoryu models NAME lists a model's options. Any other nn.Module: name: "
          "'package.module:factory' in a config (kwargs go to the factory).")
    return 0


def cmd_datasets(args) -> int:
    from joryu.data import describe

    d = describe()
    w = max(len(k) for k in d)
    for k, v in d.items():
        print(f"{k.ljust(w)}  {v}")
    return 0


def cmd_config(args) -> int:
    if args.action == "show":
        if not args.target:
            raise UsageError("config show needs a config file (joryu config show C.yaml [key=value ...])")
        import yaml

        from joryu.config import load_config

        cfg = load_config(args.target, args.overrides)
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    if args.overrides:
        raise UsageError(f"config schema takes one method name, not {args.overrides}")
    if not args.target:
        from joryu.config import ExperimentConfig, TrainConfig, describe_fields

        print("experiment (top-level keys):")
        _print_fields(describe_fields(ExperimentConfig))
        print("train (train.NAME, teacher.train.NAME):")
        _print_fields(describe_fields(TrainConfig))
        print("\njoryu config schema METHOD lists a method's parameters.")
        return 0
    return _method_schema(args.target)


def cmd_reproduce(args) -> int:
    from joryu.reproduce import available, run_reproduction

    if args.name is None or args.name == "list":
        for name, doc in available().items():
            print(f"{name}: {doc}")
        return 0
    path = run_reproduction(args.name, seeds=args.seeds, quick=args.quick, out_dir=args.results,
                            progress=not args.quiet)
    print(f"\nwrote {path} and {path.with_suffix('.json')}")
    return 0


def _version() -> str:
    from joryu import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (for --help); each command is parsed by ``command_parser``."""
    p = Parser(prog="joryu", description="Distill a large teacher into a small, fast student.",
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="commands:\n" + "\n".join(f"  {k:<10} {v}" for k, v in {**COMMANDS, **_plugins()}.items())
               + "\n\nWith no command (or only flags and key=value overrides) joryu runs `distill`."
               "\nExit status: 0 ok, 2 a mistake in the input (one line on stderr), 1 a bug.")
    p.add_argument("--version", action="version", version=f"joryu {_version()}")
    return p


def _plugin_args(command: str, argv: list[str]):
    import importlib

    top = Parser(prog="joryu")
    sub = top.add_subparsers(dest="command", parser_class=Parser)
    importlib.import_module(PLUGINS[command][0]).add_parser(sub)
    return top.parse_args([command, *argv])


def command_parser(command: str) -> argparse.ArgumentParser:
    sp = Parser(prog=f"joryu {command}", description=COMMANDS[command])

    def run_flags():
        sp.add_argument("--out", help="run folder (default: runs/NAME, never overwriting: NAME-2, ...); "
                                      "an existing one needs --resume or --overwrite")
        sp.add_argument("--overwrite", action="store_true",
                        help="replace an existing run folder (only once the new run passed its checks)")
        sp.add_argument("--resume", action="store_true",
                        help="continue a killed run from its last checkpoint (same config)")
        sp.add_argument("--quiet", action="store_true", help="no progress output")
        sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5")

    if command == "distill":
        sp.add_argument("--method", help="method name (default kd)")
        run_flags()
        sp.set_defaults(func=cmd_distill)
    elif command == "run":
        sp.add_argument("config")
        run_flags()
        sp.set_defaults(func=cmd_run)
    elif command == "methods":
        sp.add_argument("name", nargs="?", help="a method: list its parameters")
        sp.set_defaults(func=cmd_methods)
    elif command == "models":
        sp.add_argument("name", nargs="?", help="a zoo model: list its options")
        sp.set_defaults(func=cmd_models)
    elif command == "datasets":
        sp.set_defaults(func=cmd_datasets)
    elif command == "config":
        sp.add_argument("action", choices=["show", "schema"])
        sp.add_argument("target", nargs="?", help="show: a config file; schema: a method name")
        sp.add_argument("overrides", nargs="*", help="show: key=value overrides")
        sp.set_defaults(func=cmd_config)
    elif command in ("eval", "export", "report"):
        from joryu.evaluate import add_parser as add_eval
        from joryu.export import add_parser as add_export
        from joryu.report.tables import add_parser as add_report

        class _One:  # lets the command's own add_parser(sub) fill this parser
            def add_parser(self, name, help=None, description=None, **kw):
                sp.description = description or help
                return sp

        {"eval": add_eval, "export": add_export, "report": add_report}[command](_One())
    elif command == "reproduce":
        sp.add_argument("name", nargs="?", help="reproduction name (omit to list)")
        sp.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the reproduction's)")
        sp.add_argument("--quick", action="store_true", help="a short smoke version (what CI runs)")
        sp.add_argument("--results", default="results", help="folder for NAME.md and NAME.json")
        sp.add_argument("--quiet", action="store_true")
        sp.set_defaults(func=cmd_reproduce)
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
    plugins = _plugins()
    if command in plugins:
        args = _plugin_args(command, argv[1:])
        _set_threads()
        return args.func(args)
    if command not in COMMANDS:
        import difflib

        names = [*COMMANDS, *plugins]
        close = difflib.get_close_matches(command, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown command {command!r}.{hint} Commands: {', '.join(names)} "
                         "(joryu --help)")
    if command == "bench":  # its own options: see joryu/bench.py
        _set_threads()
        from joryu.bench import main as bench_main

        return bench_main(argv[1:])
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
    from joryu.errors import one_line

    if "Original Traceback" in str(e):  # re-raised from a DataLoader worker
        return one_line(e)
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
