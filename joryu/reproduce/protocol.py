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
from dataclasses import dataclass, field

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


# ---------------------------------------------------------------------------------------------
# The shared runner: a reproduction declares a Study (its data, budget, arms and claims); the
# runner trains every arm on every paired seed, times it, tabulates it and judges every claim by
# the one rule above.


@dataclass
class Arm:
    """One arm of a study: ``run(ctx)`` trains and measures it for ``ctx.seed``.

    It returns a score, or a dict of named scores (the study's ``metrics`` are its columns). Arms of
    a seed run in the order declared and share ``ctx``, so an arm may reuse what an earlier arm left
    there (e.g. Born-Again generation 2 learns from generation 1)."""

    name: str
    run: Callable[[Context], float | Mapping[str, float]]


@dataclass
class Compare:
    """A claim of the paper, judged as ``method`` arm against ``baseline`` arm on ``metric``.

    ``sign`` is the paper's direction (+1 higher is better); ``margin`` (> 0, stated before the
    run) turns a "no worse" claim into a non-inferiority test."""

    claim: str
    method: str
    baseline: str
    metric: str | None = None  # default: the study's first metric
    sign: int = 1
    margin: float | None = None
    unit: str | None = None  # default: the study's unit ("points")


class Context(dict):
    """What a seed's arms share: ``seed``, ``quick``, the study's shared objects, and anything an
    arm leaves for a later one. Keys read as attributes (``ctx.teacher``)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value


@dataclass
class Study:
    """A reproduction as a declaration: what it trains on, with what budget, which arms, which claims.

    - ``data``: the splits and their sizes, in words (shown in the result file);
    - ``budget``: the training budget of every arm in the same units (epochs or updates);
    - ``choices``: which settings were chosen on a validation split (never the test split) and why;
    - ``shared(quick)``: built once for all seeds (data splits, a fixed teacher) -> dict;
    - ``per_seed(ctx)``: built per seed before the arms (a seed's own teacher) -> dict or None;
    - ``test_size``: samples in the test split; the protocol asks for >= 2000 (one sample <= 0.05
      points), and the result file says so when it has fewer;
    - ``tried``: for claims that do not reproduce, what was tried (shown next to the verdicts);
    - ``tables(results)``: extra tables from the per-seed results (optional).
    """

    title: str
    paper: str
    data: str
    budget: str
    choices: str
    arms: list[Arm]
    claims: list[Compare]
    test_size: int
    shared: Callable[[bool], Mapping] = lambda quick: {}
    per_seed: Callable[[Context], Mapping | None] = lambda ctx: None
    metrics: list[str] = field(default_factory=lambda: ["test acc (%)"])
    unit: str = "points"
    setup: str = ""
    notes: list[str] = field(default_factory=list)
    tried: str = ""
    tables: Callable[[dict], list] | None = None
    table_title: str = "Arms (paired seeds: every arm of a seed shares its initialisation and data order)"


MIN_TEST = 2000


def run_study(study: Study, seeds: Sequence[int], quick: bool, progress: bool = False):
    """Run ``study`` on ``seeds`` and return its ``Report`` (the registry writes it)."""
    import time

    from joryu.reproduce.registry import Report, Table, fmt

    if not study.arms:
        raise ValueError(f"study {study.title!r} declares no arms")
    names = [a.name for a in study.arms]
    if len(set(names)) != len(names):
        raise ValueError(f"study {study.title!r}: arm names must be unique, got {names}")
    for c in study.claims:
        for arm in (c.method, c.baseline):
            if arm not in names:
                raise ValueError(f"claim {c.claim[:40]!r} names arm {arm!r}; arms: {', '.join(names)}")
    shared = dict(study.shared(quick) or {})
    results: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    seconds: dict[str, list[float]] = {n: [] for n in names}
    contexts = []
    for i, seed in enumerate(seeds):
        ctx = Context(shared, seed=seed, quick=quick)
        ctx.update(study.per_seed(ctx) or {})
        for arm in study.arms:
            t0 = time.perf_counter()
            out = arm.run(ctx)
            seconds[arm.name].append(time.perf_counter() - t0)
            scores = out if isinstance(out, Mapping) else {study.metrics[0]: out}
            for k, v in scores.items():
                results[arm.name].setdefault(k, []).append(float(v))
            if progress:
                shown = ", ".join(f"{k} {float(v):.2f}" for k, v in scores.items())
                print(f"[seed {seed} ({i + 1}/{len(seeds)})] {arm.name}: {shown} "
                      f"({seconds[arm.name][-1]:.0f} s)", flush=True)
        contexts.append(ctx)

    table = Table(study.table_title, [*study.metrics, "train + eval time (s)"])
    for n in names:
        for k in study.metrics:
            for v in results[n].get(k, []):
                table.add(n, k, v)
        for s in seconds[n]:
            table.add(n, "train + eval time (s)", s)
    claims = []
    for c in study.claims:
        metric = c.metric or study.metrics[0]
        m, b = results[c.method].get(metric), results[c.baseline].get(metric)
        if not m or not b:
            raise ValueError(f"claim {c.claim[:40]!r}: arms {c.method!r} / {c.baseline!r} report no {metric!r}")
        j = judge(c.claim, m, b, sign=c.sign, margin=c.margin, unit=c.unit or study.unit,
                  names=(c.method, c.baseline))
        j.evidence = f"{c.method} {fmt(m)}, {c.baseline} {fmt(b)} ({metric}); {j.evidence}"
        claims.append(j)
    size_note = (f"Test split: {study.test_size} samples, so one sample is {100.0 / study.test_size:.3f} points"
                 + ("" if study.test_size >= MIN_TEST else
                    f" (the protocol asks for >= {MIN_TEST}, i.e. <= 0.05 points; this dataset has no more)"))
    setup = "\n\n".join(p for p in (
        "**Protocol** (docs/reproduction-protocol.md): paired seeds, every claim judged by one rule, the paired "
        "mean effect in the paper's direction minus 2 standard errors > 0 (a stated margin for \"no worse\" "
        f"claims); at least {MIN_SEEDS} seeds; the test split is read once, at the end.",
        f"**Data.** {study.data.strip()} {size_note}.",
        f"**Budget.** {study.budget.strip()} The time column of the arms table is each arm's measured wall time.",
        f"**Settings chosen on validation.** {study.choices.strip()}",
        study.setup.strip()) if p)
    notes = list(study.notes)
    if study.tried and not all(c.reproduced for c in claims):
        notes.insert(0, f"What was tried for the claims that did not reproduce: {study.tried.strip()}")
    if quick:
        notes.insert(0, "QUICK smoke run: reduced budget and seeds; the numbers are not a reproduction.")
    extra = list(study.tables({"results": results, "seconds": seconds, "contexts": contexts})) if study.tables else []
    return Report(title=study.title, paper=study.paper, setup=setup, tables=[table, *extra], claims=claims,
                  notes=notes)
