"""One protocol for judging a reproduction's claims (docs/reproduction-protocol.md).

Every claim compares a method arm with a baseline arm over *paired* seeds: for seed s both arms
share the initialisation and the data order (build each arm's model with
``joryu.reproduce.common.seeded(s, ...)`` and train with seed s), so the per-seed difference
d_s = method_s - baseline_s removes the variation the two share.

The rule lives in ``joryu.stats`` (its one home). With n paired seeds, mean d,
SE = sqrt(sd(d)^2 / n + test_se^2) (``test_se``: the test-set sampling error, measured when both
arms return per-sample scores, ``joryu.stats.SampledScore``, else 0 and the claim says so) and
q = t_{0.975, n-1}, the one-sided 97.5% quantile of Student's t with n - 1 degrees of freedom:

- **superiority** (the paper says the method is better, sign = +1, or lower is better, sign = -1):
  reproduced when n >= ``MIN_SEEDS`` and  sign * mean(d) - q SE > 0;
- **non-inferiority** (the paper says "no worse", with a margin m > 0 stated before the run):
  reproduced when n >= ``MIN_SEEDS`` and  sign * mean(d) + m - q SE > 0.

Every verdict prints the effect, its two-sided 95% t interval mean ± q SE and n. Fewer than
``MIN_SEEDS`` paired seeds (e.g. a ``--quick`` smoke run) never reproduce a claim: the evidence
says so.

**Budgets are measured.** The runner opens a ``joryu.meter`` around every arm and seed and records
the optimizer updates the engine took, the samples teachers were asked about and the wall time
(``BUDGET_UNITS``), in the arms table of the result file. A claim compares arms of equal budget:
for every unit in the study's ``tolerance`` (default: optimizer updates, exactly) the two arms'
budgets may differ by at most that fraction of the larger one. An arm may declare its budget
(``Arm(budget=...)``): declared budgets that differ are refused before anything trains, and a
measured budget that differs from the declared one stops the run. Measured budgets that differ
make the claim *refused* (not judged) in the result file, unless the claim states the extra budget
(``Compare(..., budget="extra: the hint stage")``), which is then printed with its verdict.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from joryu import meter
from joryu.reproduce.claims import Claim, Report, Table, fmt
from joryu.stats import MIN_SEEDS, compare_paired, test_sampling_se

RULE = ("the paired mean effect in the paper's direction minus the one-sided 97.5% t quantile "
        "(n - 1 degrees of freedom) times its standard error > 0, the standard error combining the "
        "seed-to-seed spread with the test-set sampling error where the arms' per-sample test scores "
        "are known")


def judge(claim: str, method: Sequence[float], baseline: Sequence[float], *, sign: int = 1,
          margin: float | None = None, unit: str = "points", min_seeds: int = MIN_SEEDS,
          names: tuple[str, str] = ("method", "baseline"), digits: int = 2,
          test_se: float | None = None) -> Claim:
    """A ``Claim`` judged by ``joryu.stats.compare_paired``: superiority, or non-inferiority when
    ``margin`` is given; ``test_se`` (the test-set sampling error, ``test_sampling_se``) widens
    the standard error."""
    cmp = compare_paired(method, baseline, sign=sign, margin=margin, min_seeds=min_seeds, test_se=test_se)
    side = "higher" if sign == 1 else "lower"
    if margin is None:
        crit = (f"paired over >= {min_seeds} seeds: the mean of {names[0]} - {names[1]} is {side} than zero by "
                "more than the one-sided 97.5% t quantile (n - 1 df) times its standard error")
    else:
        crit = (f"non-inferiority, margin {margin:g} {unit} stated in advance: paired over >= {min_seeds} "
                f"seeds, the mean of {names[0]} - {names[1]} (in the paper's direction) minus the one-sided "
                f"97.5% t quantile (n - 1 df) times its standard error stays above -{margin:g}")
    evidence = cmp.describe(unit, digits)
    if cmp.n < min_seeds:
        evidence += f"; fewer than {min_seeds} paired seeds, so not judged as reproduced"
    return Claim(claim, crit, cmp.passed, evidence, cmp.as_dict())


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
    # what the arm will spend per seed, in BUDGET_UNITS: a mapping, or a function of the seed's
    # context (e.g. of ctx.quick); checked against what the runner measures
    budget: Mapping[str, float] | Callable[[Context], Mapping[str, float]] | None = None


WALL = "train + eval time (s)"
BUDGET_UNITS = (meter.UPDATES, meter.TEACHER, WALL)


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
    budget: str = ""  # the method's extra budget, stated by the claim (then the budgets may differ)


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
    - ``tables(results)``: extra tables from the per-seed results (optional);
    - ``tolerance``: per budget unit, how far (a fraction of the larger) the two arms of a claim
      may differ; units not named are recorded but not checked.
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
    tolerance: Mapping[str, float] = field(default_factory=lambda: {meter.UPDATES: 0.0})


MIN_TEST = 2000
PROTOCOL = ("**Protocol** (docs/reproduction-protocol.md): paired seeds, every claim judged by one rule, "
            f"{RULE} (a stated margin for \"no worse\" claims); at least {MIN_SEEDS} seeds; the interval "
            "shown is the matching two-sided 95% t interval; the test split is read once, at the end.")


def claim_test_se(samples: Mapping[str, Mapping[str, Sequence]], c: Compare, metric: str) -> float | None:
    """The test-set sampling error of claim ``c``'s paired difference, from the per-sample scores
    the two arms returned (``joryu.stats.SampledScore``) on every seed; None when any is missing
    or the arms were scored on different samples."""
    m, b = samples.get(c.method, {}).get(metric), samples.get(c.baseline, {}).get(metric)
    if not m or not b or len(m) != len(b) or any(x is None for x in (*m, *b)):
        return None
    if len({len(x) for x in (*m, *b)}) != 1:
        return None
    return test_sampling_se(np.stack(m), np.stack(b))


def judge_compare(study: Study, c: Compare, results: Mapping[str, Mapping[str, Sequence[float]]],
                  test_se: float | None = None) -> Claim:
    """Judge one declared claim from per-seed ``results[arm][metric]`` (a run's, or a stored file's);
    ``test_se``: the claim's test-set sampling error (``claim_test_se``), None when not measured."""
    metric = c.metric or study.metrics[0]
    m, b = results.get(c.method, {}).get(metric), results.get(c.baseline, {}).get(metric)
    if not m or not b:
        raise ValueError(f"claim {c.claim[:40]!r}: arms {c.method!r} / {c.baseline!r} report no {metric!r}")
    j = judge(c.claim, m, b, sign=c.sign, margin=c.margin, unit=c.unit or study.unit,
              names=(c.method, c.baseline), test_se=test_se)
    j.evidence = f"{c.method} {fmt(m)}, {c.baseline} {fmt(b)} ({metric}); {j.evidence}"
    j.evidence += ("; test-set sampling error not measured for this claim (seed-to-seed spread only)"
                   if test_se is None else "")
    if c.budget:
        j.evidence += f"; budgets differ as the claim states: {c.budget}"
    return j


def differs(a: float, b: float, tol: float) -> bool:
    """True when ``a`` and ``b`` differ by more than ``tol`` times the larger of |a|, |b|."""
    return abs(a - b) > tol * max(abs(a), abs(b)) + 1e-9


def budget_conflicts(study: Study, c: Compare, budgets: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The units (checked by ``study.tolerance``) in which arms ``c.method`` and ``c.baseline``
    differ beyond tolerance, each as 'unit: method a vs baseline b'; none when the claim states
    its extra budget or an arm lacks the unit."""
    if c.budget:
        return []
    out = []
    for unit, tol in study.tolerance.items():
        a, b = budgets.get(c.method, {}).get(unit), budgets.get(c.baseline, {}).get(unit)
        if a is not None and b is not None and differs(a, b, tol):
            out.append(f"{unit}: {c.method} {a:g} vs {c.baseline} {b:g} (tolerance {tol:g})")
    return out


def _declared(study: Study, ctx: Context) -> dict[str, dict[str, float]]:
    """Every arm's declared budget for ``ctx``'s seed; an unknown unit is refused."""
    out = {}
    for arm in study.arms:
        b = arm.budget(ctx) if callable(arm.budget) else arm.budget
        if b is None:
            continue
        bad = [u for u in b if u not in BUDGET_UNITS]
        if bad:
            raise ValueError(f"arm {arm.name!r} declares a budget in {bad}; the runner measures "
                             f"{', '.join(BUDGET_UNITS)}")
        out[arm.name] = {u: float(v) for u, v in b.items()}
    return out


def _check_declared(arm: str, declared: Mapping[str, float], measured: Mapping[str, float],
                    tolerance: Mapping[str, float], seed: int) -> None:
    for unit, want in declared.items():
        tol = tolerance.get(unit, 0.0 if unit != WALL else None)
        if tol is None:
            raise ValueError(f"arm {arm!r} declares a wall time; give the study a tolerance for {WALL!r}")
        if differs(measured[unit], want, tol):
            raise ValueError(f"arm {arm!r}, seed {seed}: declared {want:g} {unit}, measured "
                             f"{measured[unit]:g}; fix the declaration or the arm")


def run_study(study: Study, seeds: Sequence[int], quick: bool, progress: bool = False):
    """Run ``study`` on ``seeds`` and return its ``Report`` (the registry writes it)."""
    if not study.arms:
        raise ValueError(f"study {study.title!r} declares no arms")
    names = [a.name for a in study.arms]
    if len(set(names)) != len(names):
        raise ValueError(f"study {study.title!r}: arm names must be unique, got {names}")
    for c in study.claims:
        for arm in (c.method, c.baseline):
            if arm not in names:
                raise ValueError(f"claim {c.claim[:40]!r} names arm {arm!r}; arms: {', '.join(names)}")
    bad = [u for u in study.tolerance if u not in BUDGET_UNITS]
    if bad:
        raise ValueError(f"study {study.title!r}: tolerance for {bad}; the runner measures {', '.join(BUDGET_UNITS)}")
    shared = dict(study.shared(quick) or {})
    spent: dict[str, dict[str, list[float]]] = {n: {u: [] for u in BUDGET_UNITS} for n in names}
    refused: dict[str, str] = {}
    results: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    samples: dict[str, dict[str, list]] = {n: {} for n in names}  # per-sample test scores, where known
    seconds: dict[str, list[float]] = {n: [] for n in names}
    contexts = []
    for i, seed in enumerate(seeds):
        ctx = Context(shared, seed=seed, quick=quick)
        declared = _declared(study, ctx)
        for c in study.claims:
            conflict = budget_conflicts(study, c, declared)
            if conflict:
                raise ValueError(f"claim {c.claim[:60]!r}: the arms declare different budgets "
                                 f"({'; '.join(conflict)}); equalise them or state the extra budget "
                                 "in the claim, Compare(..., budget='extra: ...')")
        ctx.update(study.per_seed(ctx) or {})
        for arm in study.arms:
            t0 = time.perf_counter()
            with meter.metering() as used:
                out = arm.run(ctx)
            seconds[arm.name].append(time.perf_counter() - t0)
            measured = {**{u: float(used.get(u, 0)) for u in BUDGET_UNITS[:2]}, WALL: seconds[arm.name][-1]}
            for u, v in measured.items():
                spent[arm.name][u].append(v)
            if arm.name in declared:
                _check_declared(arm.name, declared[arm.name], measured, study.tolerance, seed)
            scores = out if isinstance(out, Mapping) else {study.metrics[0]: out}
            for k, v in scores.items():
                results[arm.name].setdefault(k, []).append(float(v))
                samples[arm.name].setdefault(k, []).append(getattr(v, "per_sample", None))
            if progress:
                shown = ", ".join(f"{k} {float(v):.2f}" for k, v in scores.items())
                print(f"[seed {seed} ({i + 1}/{len(seeds)})] {arm.name}: {shown} "
                      f"({seconds[arm.name][-1]:.0f} s)", flush=True)
        for c in study.claims:
            conflict = budget_conflicts(study, c, {n: {u: v[-1] for u, v in spent[n].items()} for n in names})
            if conflict and c.claim not in refused:
                refused[c.claim] = f"seed {seed}: " + "; ".join(conflict)
        contexts.append(ctx)

    table = Table(study.table_title, [*study.metrics, *BUDGET_UNITS])
    for n in names:
        for k in study.metrics:
            for v in results[n].get(k, []):
                table.add(n, k, v)
        for u in BUDGET_UNITS:
            for v in spent[n][u]:
                table.add(n, u, v)
    claims = []
    for c in study.claims:
        j = judge_compare(study, c, results, claim_test_se(samples, c, c.metric or study.metrics[0]))
        if c.claim in refused:
            j.reproduced = False
            j.refused = ("the arms' measured budgets differ (" + refused[c.claim] + "); a claim between "
                         "unequal budgets must state the extra budget (Compare(budget=...))")
            j.evidence = f"REFUSED, not judged: {j.refused}. Measured anyway: {j.evidence}"
        claims.append(j)
    size_note = (f"Test split: {study.test_size} samples, so one sample is {100.0 / study.test_size:.3f} points"
                 + ("" if study.test_size >= MIN_TEST else
                    f" (the protocol asks for >= {MIN_TEST}, i.e. <= 0.05 points; this dataset has no more)"))
    setup = "\n\n".join(p for p in (
        PROTOCOL,
        f"**Data.** {study.data.strip()} {size_note}.",
        f"**Budget.** {study.budget.strip()} Measured per arm and seed (arms table): {', '.join(BUDGET_UNITS)} "
        f"(optimizer updates summed over the networks an arm trains; teacher forward passes counted as the samples "
        f"a teacher was asked about while the arm ran). Checked between the arms of every claim: "
        + (", ".join(f"{u} within {t:g} of the larger" for u, t in study.tolerance.items()) or "nothing") + ".",
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
