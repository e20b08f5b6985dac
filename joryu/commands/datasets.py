"""``joryu datasets``: the datasets joryu loads by name."""

from __future__ import annotations

from joryu.data import describe

HELP = "list datasets"


def configure(p) -> None:
    pass


def run(args) -> int:
    d = describe()
    w = max(len(k) for k in d)
    for k, v in d.items():
        print(f"{k.ljust(w)}  {v}")
    return 0
