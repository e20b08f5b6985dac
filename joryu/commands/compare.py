"""``joryu compare CONFIG --methods kd,fitnets,...``: several methods on the config's pair, ranked
against the student alone on paired seeds (``joryu.run.compare``)."""

from __future__ import annotations

from joryu.config import load_config
from joryu.errors import UsageError
from joryu.run.compare import console, run_comparison
from joryu.run.process import is_main

HELP = "rank several methods against the student alone on your pair, with paired seeds"


def configure(p) -> None:
    p.add_argument("config")
    p.add_argument("--methods", required=True, help="comma-separated method names, e.g. kd,fitnets,dml")
    p.add_argument("--seeds", type=int, default=None, help="paired seeds (default: the config's seeds; "
                                                         "5 or more for a verdict)")
    p.add_argument("--out", help="run folder (default: runs/NAME-compare)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5")


def run(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.seeds is not None:
        if args.seeds < 1:
            raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
        cfg = cfg.model_copy(update={"seeds": args.seeds})
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = run_comparison(cfg, methods, args.out, progress=not args.quiet, resume=args.resume,
                         overwrite=args.overwrite)
    if is_main():
        print(console(out))
    return 0
