"""The ``joryu`` command line."""

from __future__ import annotations

import argparse
import os
import sys

from joryu.errors import JoryuError


def _print_table(rows: dict) -> None:
    from joryu.report.tables import comparison_rows, format_table

    print()
    print(format_table(comparison_rows(rows)))


def _run_experiment(cfg, args) -> int:
    from joryu.experiment import Experiment

    exp = Experiment(cfg, run_dir=args.out, progress=not args.quiet, resume=args.resume,
                     overwrite=args.overwrite)
    from joryu.experiment import is_main

    main_process = is_main()
    if main_process:
        print(f"run folder: {exp.run_dir}", flush=True)
    summary = exp.run()
    if main_process:
        _print_table(summary["rows"])
        print(f"\nreport: {exp.run_dir / 'report.md'}")
    return 0


def cmd_distill(args) -> int:
    import copy

    from joryu.config import apply_overrides, build_config
    from joryu.defaults import MAIN_JOB

    raw = copy.deepcopy(MAIN_JOB)
    if args.method:
        raw["method"] = {"name": args.method, "params": {}}
    cfg = build_config(apply_overrides(raw, args.overrides))
    return _run_experiment(cfg, args)


def cmd_run(args) -> int:
    from joryu.config import load_config

    cfg = load_config(args.config, args.overrides)
    return _run_experiment(cfg, args)


def cmd_methods(args) -> int:
    from joryu.methods import listing

    rows = listing()
    w = max(len(r[0]) for r in rows)
    for name, paper, status in rows:
        print(f"{name.ljust(w)}  {status:<11}  {paper}")
    return 0


def cmd_models(args) -> int:
    from joryu.models import describe

    d = describe()
    w = max(len(k) for k in d)
    for k, v in d.items():
        print(f"{k.ljust(w)}  {v}")
    print("\nAny other nn.Module: name: 'package.module:factory' in a config (kwargs go to the factory).")
    return 0


def cmd_datasets(args) -> int:
    from joryu.data import describe

    d = describe()
    w = max(len(k) for k in d)
    for k, v in d.items():
        print(f"{k.ljust(w)}  {v}")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="joryu", description="Distill a large teacher into a small, fast student.")
    sub = p.add_subparsers(dest="command")

    def run_flags(sp):
        sp.add_argument("--out", help="run folder (default: runs/NAME, never overwriting: NAME-2, ...)")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
        sp.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
        sp.add_argument("--quiet", action="store_true", help="no progress output")
        sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5")

    d = sub.add_parser("distill", help="the main job: KD on built-in MNIST-1D (the default command)")
    d.add_argument("--method", help="method name (default kd)")
    run_flags(d)
    d.set_defaults(func=cmd_distill)

    r = sub.add_parser("run", help="run an experiment from a YAML config")
    r.add_argument("config")
    run_flags(r)
    r.set_defaults(func=cmd_run)

    sub.add_parser("methods", help="list methods, papers and status").set_defaults(func=cmd_methods)
    sub.add_parser("models", help="list the model zoo").set_defaults(func=cmd_models)
    sub.add_parser("datasets", help="list datasets").set_defaults(func=cmd_datasets)

    rp = sub.add_parser("reproduce", help="run a paper's small-scale reproduction; writes results/NAME.md")
    rp.add_argument("name", nargs="?", help="reproduction name (omit to list)")
    rp.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the reproduction's)")
    rp.add_argument("--quick", action="store_true", help="a short smoke version (what CI runs)")
    rp.add_argument("--results", default="results", help="folder for NAME.md and NAME.json")
    rp.add_argument("--quiet", action="store_true")
    rp.set_defaults(func=cmd_reproduce)

    from joryu.evaluate import add_parser as add_eval
    from joryu.export import add_parser as add_export
    from joryu.report.tables import add_parser as add_report

    add_eval(sub)
    add_export(sub)
    add_report(sub)
    sub.add_parser("bench", help="training-throughput benchmark (writes benchmarks/RESULTS.md); bench --help")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    commands = {"distill", "run", "methods", "models", "datasets", "reproduce", "bench", "eval", "export",
                "report"}
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help")):
        argv = ["distill", *argv]
    if argv[0] == "bench":  # its own options: see joryu/bench.py
        from joryu.bench import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["distill"])
    if os.environ.get("JORYU_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["JORYU_THREADS"]))
    try:
        return args.func(args)
    except JoryuError as e:
        print(f"joryu: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("joryu: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
