"""What ``joryu distill`` and ``joryu run`` share: the run-folder flags and running one experiment."""

from __future__ import annotations

import sys

from joryu.report.tables import comparison_rows, format_table
from joryu.run.experiment import Experiment
from joryu.run.process import is_main


def run_flags(p) -> None:
    p.add_argument("--out", help="run folder (default: runs/NAME, never overwriting: NAME-2, ...); "
                                 "an existing one needs --resume or --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run folder (only once the new run passed its checks)")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run from its last checkpoint (same config)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5")


def run_experiment(cfg, args) -> int:
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
        print()
        print(format_table(comparison_rows(summary["rows"])))
        print(f"\nreport: {exp.run_dir / 'report.md'}")
    return 0
