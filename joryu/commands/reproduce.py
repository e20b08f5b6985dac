"""``joryu reproduce NAME``: a paper's small-scale reproduction."""

from __future__ import annotations

from joryu.reproduce import available, run_reproduction

HELP = "run a paper's small-scale reproduction; writes results/NAME.md"


def configure(p) -> None:
    p.add_argument("name", nargs="?", help="reproduction name (omit to list)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the reproduction's)")
    p.add_argument("--quick", action="store_true", help="a short smoke version (what CI runs)")
    p.add_argument("--results", default="results", help="folder for NAME.md and NAME.json")
    p.add_argument("--quiet", action="store_true")


def run(args) -> int:
    if args.name is None or args.name == "list":
        for name, doc in available().items():
            print(f"{name}: {doc}")
        return 0
    path = run_reproduction(args.name, seeds=args.seeds, quick=args.quick, out_dir=args.results,
                            progress=not args.quiet)
    print(f"\nwrote {path} and {path.with_suffix('.json')}")
    return 0
