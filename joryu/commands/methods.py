"""``joryu methods [NAME]``: the methods, or one method's parameters."""

from __future__ import annotations

from joryu.commands._fields import method_schema
from joryu.methods import listing

HELP = "list methods (methods NAME: a method's parameters)"


def configure(p) -> None:
    p.add_argument("name", nargs="?", help="a method: list its parameters")


def run(args) -> int:
    if args.name:
        return method_schema(args.name)
    rows = listing()
    w = max(len(r[0]) for r in rows)
    for name, paper, status in rows:
        print(f"{name.ljust(w)}  {status:<11}  {paper}")
    print("\njoryu methods NAME lists a method's parameters.")
    return 0
