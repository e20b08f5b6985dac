"""``joryu bench``: the training-throughput benchmark (its own options: ``joryu bench --help``)."""

from __future__ import annotations

from joryu.bench import main

HELP = "training-throughput benchmark (writes benchmarks/RESULTS.md); bench --help"
OWN_ARGUMENTS = True  # parses its own command line


def run(argv) -> int:
    return main(argv)
