"""Selection among several teachers: one teacher per step, chosen uniformly at random (seeded).

MEAL (Shen et al. 2019) picks one of its k teachers at each iteration. ``choose()`` draws the
index for the current step from the teacher's own generator (so the choice sequence depends
only on ``seed``, not on whatever else uses torch's global generator); ``__call__`` draws and
runs the chosen teacher. ``last`` is the last choice and ``counts`` how often each was chosen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from joryu.teachers.base import FrozenTeacher, Teacher


class RandomChoiceTeacher(Teacher):
    stochastic = True

    def __init__(self, teachers: Sequence[Teacher | nn.Module], seed: int = 0, input_key: str = "input"):
        if not teachers:
            raise ValueError("need at least one teacher to choose from")
        self.teachers = [t if isinstance(t, Teacher) else FrozenTeacher(t, input_key) for t in teachers]
        self.input_key = input_key
        self.generator = torch.Generator().manual_seed(int(seed))
        self.counts = [0] * len(self.teachers)
        self.last: int | None = None

    def models(self):
        return [m for t in self.teachers for m in t.models()]

    def choose(self) -> int:
        """Draw the index of this step's teacher (uniform over the k teachers)."""
        k = int(torch.randint(len(self.teachers), (1,), generator=self.generator))
        self.counts[k] += 1
        self.last = k
        return k

    def _forward(self, batch):
        return self.teachers[self.choose()](batch)

    def stats(self) -> dict:
        total = max(1, sum(self.counts))
        return {f"teacher{i}_share": c / total for i, c in enumerate(self.counts)}
