"""What ``joryu distill`` and ``joryu run`` share: the run-folder flags and running one experiment."""

from __future__ import annotations

import sys

from joryu.errors import UsageError
from joryu.report.tables import comparison_rows, evidence_lines, format_table
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
    p.add_argument("--seeds", type=int, default=None,
                   help="paired seeds for the method and the student alone (same as seeds=N); 5 or more "
                        "for a verdict")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5")


def run_experiment(cfg, args) -> int:
    if args.seeds is not None:
        if args.seeds < 1:
            raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
        cfg = cfg.model_copy(update={"seeds": args.seeds})
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
        lines = evidence_lines(summary.get("evidence") or {})
        if lines:
            print("\ndid it help?")
            print("\n".join(lines))
        print(f"\nreport: {exp.run_dir / 'report.md'}")
    return 0
