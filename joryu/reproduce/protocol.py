"""One protocol for judging a reproduction's claims (docs/reproduction-protocol.md).

Every claim compares a method arm with a baseline arm over *paired* seeds: for seed s both arms
share the initialisation and the data order (build each arm's model with
``joryu.reproduce.common.seeded(s, ...)`` and train with seed s), so the per-seed difference
d_s = method_s - baseline_s removes the variation the two share.

With n paired seeds, mean d and standard error SE = sd(d) / sqrt(n) (sd with n - 1):

- **superiority** (the paper says the method is better, sign = +1, or lower is better, sign = -1):
  reproduced when n >= ``MIN_SEEDS`` and  sign * mean(d) - 2 SE > 0,
  i.e. the paired mean effect has the paper's sign and exceeds zero by more than two standard
  errors;
- **non-inferiority** (the paper says "no worse", with a margin m > 0 stated before the run):
  reproduced when n >= ``MIN_SEEDS`` and  sign * mean(d) - 2 SE > -m.

Every verdict prints the effect, its interval mean ± 2 SE and n. Fewer than ``MIN_SEEDS`` paired
seeds (e.g. a ``--quick`` smoke run) never reproduce a claim: the evidence says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from joryu.reproduce.registry import Claim

MIN_SEEDS = 5
Z = 2.0  # standard errors the effect must clear


@dataclass(frozen=True)
class Effect:
    """The paired effect of a method over a baseline: per-seed differences and their summary."""

    differences: tuple[float, ...]
    mean: float
    se: float

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def interval(self) -> tuple[float, float]:
        return self.mean - Z * self.se, self.mean + Z * self.se

    def describe(self, unit: str = "points") -> str:
        lo, hi = self.interval
        return (f"paired effect {self.mean:+.2f} {unit} (interval {lo:+.2f} .. {hi:+.2f}, mean ± {Z:g} SE, "
                f"SE {self.se:.2f}), n = {self.n} paired seeds")


def paired_effect(method: Sequence[float], baseline: Sequence[float]) -> Effect:
    """d_s = method_s - baseline_s over paired seeds (same order, same length)."""
    if len(method) != len(baseline):
        raise ValueError(f"paired arms need the same seeds: {len(method)} method values, {len(baseline)} baseline")
    if not method:
        raise ValueError("no paired seeds")
    d = tuple(float(a) - float(b) for a, b in zip(method, baseline))
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else float("inf")
    return Effect(d, mean, sd / math.sqrt(n))


def superiority(effect: Effect, sign: int = 1, min_seeds: int = MIN_SEEDS) -> bool:
    """The paired mean has the paper's ``sign`` and clears zero by more than 2 SE (n >= min_seeds)."""
    if sign not in (1, -1):
        raise ValueError("sign must be +1 (higher is better) or -1 (lower is better)")
    return effect.n >= min_seeds and sign * effect.mean - Z * effect.se > 0


def non_inferiority(effect: Effect, margin: float, sign: int = 1, min_seeds: int = MIN_SEEDS) -> bool:
    """The method is no worse than the baseline by more than ``margin`` (stated in advance)."""
    if margin <= 0:
        raise ValueError("a non-inferiority margin must be > 0 and stated before the run")
    if sign not in (1, -1):
        raise ValueError("sign must be +1 (higher is better) or -1 (lower is better)")
    return effect.n >= min_seeds and sign * effect.mean - Z * effect.se > -margin


def judge(claim: str, method: Sequence[float], baseline: Sequence[float], *, sign: int = 1,
          margin: float | None = None, unit: str = "points", min_seeds: int = MIN_SEEDS,
          names: tuple[str, str] = ("method", "baseline")) -> Claim:
    """A ``Claim`` judged by the protocol: superiority, or non-inferiority when ``margin`` is given."""
    eff = paired_effect(method, baseline)
    side = "higher" if sign == 1 else "lower"
    if margin is None:
        ok = superiority(eff, sign, min_seeds)
        crit = (f"paired over >= {min_seeds} seeds: the mean of {names[0]} - {names[1]} is {side} than zero by "
                f"more than {Z:g} standard errors")
    else:
        ok = non_inferiority(eff, margin, sign, min_seeds)
        crit = (f"non-inferiority, margin {margin:g} {unit} stated in advance: paired over >= {min_seeds} seeds, "
                f"the mean of {names[0]} - {names[1]} minus {Z:g} standard errors (in the paper's direction) "
                f"stays above -{margin:g}")
    evidence = eff.describe(unit)
    if eff.n < min_seeds:
        evidence += f"; fewer than {min_seeds} paired seeds, so not judged as reproduced"
    return Claim(claim, crit, ok, evidence)


def run_paired(arms: Mapping[str, Callable[[int], float]], seeds: Iterable[int]) -> dict[str, list[float]]:
    """Run every arm on every seed (arm(seed) -> score), seeds in the same order for all arms."""
    seeds = list(seeds)
    return {name: [float(fn(s)) for s in seeds] for name, fn in arms.items()}
