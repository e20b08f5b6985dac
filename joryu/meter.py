"""Budget meters: what a piece of code spent, counted where it is spent.

The engine counts optimizer updates, a teacher counts the samples it is asked about, and whoever
wants the totals opens a meter around the code:

    with metering() as spent:
        train(...)
    spent["optimizer updates"], spent["teacher forward passes"]

Meters nest (an inner meter's counts are also added to the outer ones) and cost nothing when
none is open. The reproductions' runner (``joryu.reproduce.protocol``) opens one per arm and seed,
records what it measured in the result file and refuses a claim between arms whose budgets
differ. On the lowest floor: it imports nothing of joryu.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

UPDATES = "optimizer updates"  # optimizer steps taken, summed over the optimizers (one per network updated)
TEACHER = "teacher forward passes"  # samples a teacher was asked about (outermost teacher call, per sample)

_open: list[dict[str, float]] = []


def count(unit: str, n: float = 1) -> None:
    """Add ``n`` of ``unit`` to every open meter."""
    for m in _open:
        m[unit] = m.get(unit, 0) + n


@contextlib.contextmanager
def metering() -> Iterator[dict[str, float]]:
    """A meter open for the block: a dict of unit -> amount counted inside it (UPDATES and TEACHER
    start at 0, so code that spent none reads 0, not a missing key)."""
    m: dict[str, float] = {UPDATES: 0, TEACHER: 0}
    _open.append(m)
    try:
        yield m
    finally:  # by identity: two open meters may hold equal counts, and == would take the wrong one
        del _open[next(i for i, x in enumerate(_open) if x is m)]


_depth = [0]


class teacher_call:  # noqa: N801 - used as a function: ``with teacher_call(n):``
    """Count one teacher call on ``batch_size`` samples, unless it runs inside another teacher's
    call (an ensemble's members, a cache's inner teacher): the outermost call is what was asked.
    A plain class, not a generator context manager: it wraps every teacher call of every batch."""

    __slots__ = ("batch_size",)

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def __enter__(self) -> None:
        if _depth[0] == 0:
            count(TEACHER, self.batch_size)
        _depth[0] += 1

    def __exit__(self, *exc) -> bool:
        _depth[0] -= 1
        return False
