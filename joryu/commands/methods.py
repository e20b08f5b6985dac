"""``joryu methods [NAME]``: the methods, or one method's parameters."""

from __future__ import annotations

from joryu.commands._fields import method_schema
from joryu.methods import listing, method_info

HELP = "list methods (methods NAME: a method's parameters)"


def configure(p) -> None:
    p.add_argument("name", nargs="?", help="a method: list its parameters")


def run(args) -> int:
    if args.name:
        return method_schema(args.name)
    rows = listing()
    w = max(len(r[0]) for r in rows)
    for name, paper, status in rows:
        ev = method_info(name).cls.defaults_evidence
        note = f"  [{ev.mark}]" if ev is not None and ev.mark else ""
        print(f"{name.ljust(w)}  {status:<11}  {paper}{note}")
    print("\njoryu methods NAME lists a method's parameters.")
    return 0
