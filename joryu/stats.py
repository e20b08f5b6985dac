"""Paired-seed evidence: the one home of joryu's pass rule ("did it help?").

Everything that judges a method against a baseline uses this module: the reproductions'
runner (``joryu.reproduce.protocol``), and the per-run and per-comparison evidence built on it.
It needs only ``math`` and ``numpy`` (no scipy), so it sits on the bottom floor of the package.

**The rule.** A method arm and a baseline arm are run on the same n seeds (paired: for seed s both
share the initialisation and the data order). The evidence is the per-seed difference
d_s = method_s - baseline_s, with

    mean d,   sd = sqrt(sum (d_s - mean)^2 / (n - 1)),   SE = sd / sqrt(n),
    q = t_{0.975, n-1}  (the one-sided 97.5% quantile of Student's t with n - 1 degrees of freedom).

With ``sign`` the claim's direction (+1: higher is better, -1: lower is better):

- **superiority** passes when  sign * mean - q * SE > 0;
- **non-inferiority** with a margin m > 0 stated before the run passes when
  sign * mean + m - q * SE > 0.

The interval printed is the matching two-sided 95% t interval, mean ± q * SE, so a superiority
claim passes exactly when that interval lies wholly on the claim's side of zero. Fewer than
``MIN_SEEDS`` paired seeds never pass (nor fail as "hurt"): the result says so. The verdict for
users is "helped" (passes), "hurt" (the interval lies wholly on the wrong side: of zero, or of
-m for non-inferiority) or "no evidence either way"; a passed non-inferiority test reads
"no worse".

The seed-to-seed spread covers training noise (initialisation, data order, augmentation). The
sampling error of a fixed test split is a separate source: :func:`test_sampling_se` estimates it
from the two arms' per-sample scores (a :class:`SampledScore` keeps them) and ``compare_paired``
adds it to the SE; :func:`paired_bootstrap` checks it by resampling (docs/reproduction-protocol.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_SEEDS = 5  # paired seeds below which no comparison passes (or is called "hurt")
LEVEL = 0.95  # two-sided level of the printed interval; the rule's quantile is (1 + LEVEL) / 2

HELPED = "helped"
NO_WORSE = "no worse"
HURT = "hurt"
NO_EVIDENCE = "no evidence either way"


# --- Student's t distribution ----------------------------------------------------------------

def _betainc_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz):

        I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) * 1 / (1 + d_1 / (1 + d_2 / (1 + ...))),
        d_{2k+1} = -(a + k)(a + b + k) x / ((a + 2k)(a + 2k + 1)),
        d_{2k}   = k (b - k) x / ((a + 2k - 1)(a + 2k)),

    returned without the prefactor. It converges fast for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-16
    f = c = tiny  # b_0 = 0
    d = 0.0
    for j in range(1, 100_000):
        if j == 1:
            num = 1.0
        else:
            k, odd = divmod(j - 1, 2)  # d_{j-1}: j - 1 = 2k + odd
            if odd:
                num = -(a + k) * (a + b + k) * x / ((a + 2 * k) * (a + 2 * k + 1))
            else:
                num = k * (b - k) * x / ((a + 2 * k - 1) * (a + 2 * k))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < eps:
            return f
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float, x1: float | None = None) -> float:
    """Regularized incomplete beta I_x(a, b) = B(x; a, b) / B(a, b), for a, b > 0 and 0 <= x <= 1.

    ``x1`` = 1 - x when the caller knows it more precisely than ``1 - x`` (small tails).
    Uses I_x(a, b) = 1 - I_{1-x}(b, a) where the continued fraction converges slowly."""
    x1 = 1.0 - x if x1 is None else x1
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x == 0.0 or x1 == 0.0:
        return 0.0 if x == 0.0 else 1.0
    log_front = a * math.log(x) + b * math.log(x1) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betainc_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betainc_cf(b, a, x1) / b


def t_sf(t: float, df: float) -> float:
    """Upper tail P(T > t) of Student's t with ``df`` > 0 degrees of freedom:

        P(T > t) = I_{df / (df + t^2)}(df / 2, 1 / 2) / 2   for t >= 0,  1 - P(T > -t) below 0."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    t2 = t * t
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))
    return tail if t >= 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) of Student's t with ``df`` degrees of freedom."""
    return t_sf(-t, df)


def t_ppf(p: float, df: float) -> float:
    """Quantile (inverse CDF) of Student's t: the t with P(T <= t) = p, for 0 < p < 1 and df > 0.

    Closed forms for df = 1 (Cauchy: tan(pi (p - 1/2))) and df = 2 ((2p - 1) / sqrt(2 p (1 - p)));
    otherwise the upper tail ``t_sf`` is bracketed by doubling and bisected to full precision
    (by symmetry, t_p = -t_{1-p}, so only the upper half is solved)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if df == 1:  # tan(pi (p - 1/2)) = -1 / tan(pi p), precise in both tails
        return -1.0 / math.tan(math.pi * p) if p < 0.5 else 1.0 / math.tan(math.pi * (1.0 - p))
    if df == 2:
        return (2.0 * p - 1.0) / math.sqrt(2.0 * p * (1.0 - p))
    tail = min(p, 1.0 - p)  # solve P(T > t) = tail for t > 0 (p itself, not 1 - (1 - p), below 1/2)
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > tail:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 4e-16 * hi:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if t_sf(mid, df) > tail:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    return t if p > 0.5 else -t


def t_quantile(n: int, level: float = LEVEL) -> float:
    """The rule's quantile for n paired seeds: t_{(1 + level) / 2, n - 1} (inf below 2 seeds)."""
    return t_ppf(0.5 + level / 2.0, n - 1) if n >= 2 else math.inf


# --- the paired comparison -------------------------------------------------------------------

@dataclass(frozen=True)
class PairedComparison:
    """A method arm against a baseline arm over paired seeds, judged by the one rule.

    ``differences`` are method - baseline per seed; ``interval`` is the two-sided t interval
    mean ± q * SE in that raw direction; ``sign`` is the claim's direction; ``margin`` is the
    non-inferiority margin (None: superiority)."""

    differences: tuple[float, ...]
    mean: float
    sd: float  # nan with one seed
    se: float  # inf with one seed
    q: float  # t_{0.975, n-1}; inf with one seed
    interval: tuple[float, float]
    sign: int
    margin: float | None
    min_seeds: int
    passed: bool
    verdict: str  # "helped" / "no worse" / "hurt" / "no evidence either way"
    reason: str  # one sentence: why that verdict
    test_se: float | None = None  # test-set sampling error folded into ``se`` (None: not measured)

    @property
    def n(self) -> int:
        return len(self.differences)

    def describe(self, unit: str = "points", digits: int = 2) -> str:
        """The effect, its interval and n in one line, e.g.
        ``paired effect +1.00 points (95% t interval +0.80 .. +1.20: mean ± 2.776 SE, SE 0.07), n = 5
        paired seeds``."""
        f = f"+.{digits}f"
        head = f"paired effect {self.mean:{f}} {unit}"
        if self.n < 2:
            return f"{head} (no interval from one seed), n = 1 paired seed"
        lo, hi = self.interval
        parts = (f" = seeds and test-set sampling {self.test_se:.{digits}f} combined" if self.test_se is not None else "")
        return (f"{head} ({LEVEL:.0%} t interval {lo:{f}} .. {hi:{f}}: mean ± {self.q:.3f} SE, "
                f"t quantile with {self.n - 1} df, SE {self.se:.{digits}f}{parts}), n = {self.n} paired seeds")

    def as_dict(self) -> dict:
        """The numbers, for a results.json (no inf or nan: JSON has none)."""
        def num(x):
            return x if math.isfinite(x) else None

        return {"n": self.n, "differences": list(self.differences), "mean": self.mean, "sd": num(self.sd),
                "se": num(self.se), "t_quantile": num(self.q), "interval": [num(x) for x in self.interval],
                "sign": self.sign, "margin": self.margin, "passed": self.passed, "verdict": self.verdict,
                "test_se": self.test_se}


def compare_paired(method: Sequence[float], baseline: Sequence[float], *, sign: int = 1,
                   margin: float | None = None, min_seeds: int = MIN_SEEDS,
                   test_se: float | None = None) -> PairedComparison:
    """Judge ``method`` against ``baseline`` (per-seed values, paired by position) by the rule:

        superiority:      sign * mean(d) - q SE > 0
        non-inferiority:  sign * mean(d) + margin - q SE > 0      (margin > 0, stated beforehand)

    with d = method - baseline, SE = sqrt(sd(d)^2 / n + test_se^2), q = t_{0.975, n-1}; never
    passes below ``min_seeds``. ``test_se`` is the test-set sampling error of the mean difference
    (``test_sampling_se``; None when the per-sample outcomes are not known). "hurt" when the interval
    lies wholly on the wrong side (of zero, or of -margin)."""
    if sign not in (1, -1):
        raise ValueError("sign must be +1 (higher is better) or -1 (lower is better)")
    if margin is not None and not margin > 0:
        raise ValueError("a non-inferiority margin must be > 0 and stated before the run")
    if len(method) != len(baseline):
        raise ValueError(f"paired arms need the same seeds: {len(method)} method values, "
                         f"{len(baseline)} baseline")
    if len(method) == 0:
        raise ValueError("no paired seeds")
    d = tuple(float(a) - float(b) for a, b in zip(method, baseline))
    if not all(math.isfinite(x) for x in d):
        raise ValueError(f"paired values must be finite numbers, got differences {d}")
    n = len(d)
    mean = math.fsum(d) / n
    if test_se is not None and not (math.isfinite(test_se) and test_se >= 0):
        raise ValueError(f"test_se must be a finite number >= 0, got {test_se}")
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else math.nan
    se = math.sqrt(sd ** 2 / n + (test_se or 0.0) ** 2) if n > 1 else math.inf
    q = t_quantile(n)
    half = q * se if n > 1 else math.inf
    interval = (mean - half, mean + half)
    # in the claim's direction: the interval is [lower, upper]
    lower, upper = sign * mean - half, sign * mean + half
    floor = -margin if margin is not None else 0.0
    enough = n >= min_seeds
    passed = enough and lower > floor
    if not enough:
        verdict = NO_EVIDENCE
        reason = (f"fewer than {min_seeds} paired seeds ({n}): not enough to judge; "
                  + ("one seed cannot separate the difference from seed noise" if n == 1 else
                     "the rule needs at least that many"))
    elif passed:
        verdict = NO_WORSE if margin is not None else HELPED
        reason = ("the whole interval lies above -margin in the claim's direction" if margin is not None
                  else "the whole interval lies on the claim's side of zero")
    elif upper < floor:
        verdict = HURT
        reason = ("the whole interval lies below -margin in the claim's direction: worse by more than "
                  "the margin" if margin is not None else "the whole interval lies on the wrong side of zero")
    else:
        verdict = NO_EVIDENCE
        reason = "the interval contains " + ("-margin" if margin is not None else "zero")
    return PairedComparison(d, mean, sd, se, q, interval, sign, margin, min_seeds, passed, verdict, reason,
                            None if test_se is None else float(test_se))


def seeds_needed(sd_of_differences: float, effect: float, *, min_seeds: int = MIN_SEEDS,
                 max_seeds: int = 100_000) -> int | None:
    """The fewest paired seeds n (>= ``min_seeds``) with |effect| - t_{0.975, n-1} sd / sqrt(n) > 0.

    That is how many seeds would let a true effect of this size clear the rule *if* the mean
    difference came out exactly at ``effect`` with spread ``sd_of_differences`` (about even odds:
    a planning number, not a guarantee). None when no n up to ``max_seeds`` does (e.g. effect 0)."""
    if not (math.isfinite(sd_of_differences) and sd_of_differences >= 0):
        raise ValueError(f"the spread of the differences must be a finite sd >= 0, got {sd_of_differences}")
    effect = abs(float(effect))
    if effect == 0.0:
        return None

    def clears(n: int) -> bool:
        return effect - t_quantile(n) * sd_of_differences / math.sqrt(n) > 0

    lo = max(2, min_seeds)
    if clears(lo):
        return lo
    hi = lo
    while not clears(hi):  # the margin grows with n: bracket, then bisect
        if hi >= max_seeds:
            return None
        lo, hi = hi, min(2 * hi, max_seeds)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if clears(mid) else (mid, hi)
    return hi


# --- test-set sampling error ---------------------------------------------------------------

class SampledScore(float):
    """A test score (a float, e.g. accuracy in points) that keeps the per-sample values it is the
    mean of, so a paired comparison can add the test-set sampling error (``test_sampling_se``).
    Arithmetic on it gives a plain float: a derived score carries no per-sample values."""

    per_sample: np.ndarray

    def __new__(cls, per_sample):
        values = np.asarray(per_sample, dtype=np.float64).reshape(-1)
        if values.size == 0:
            raise ValueError("a sampled score needs at least one sample")
        out = super().__new__(cls, float(values.mean()))
        out.per_sample = values
        return out

    def __reduce__(self):  # pickles (and deep-copies) with its samples
        return (SampledScore, (self.per_sample,))


def mean_score(scores: Sequence[float]) -> float:
    """The mean of several scores of one arm on the same test samples (two networks, several
    draws); a ``SampledScore`` of the per-sample means when every score keeps its samples, so the
    average still carries its test-set sampling error; else a plain float."""
    scores = list(scores)
    if not scores:
        raise ValueError("no scores to average")
    kept = [getattr(s, "per_sample", None) for s in scores]
    if all(k is not None for k in kept) and len({k.shape for k in kept}) == 1:
        return SampledScore(np.mean(np.stack(kept), axis=0))
    return math.fsum(float(s) for s in scores) / len(scores)


def test_sampling_se(method_samples, baseline_samples) -> float:
    """The test-set sampling error of the mean paired difference, from per-sample outcomes.

    ``method_samples`` and ``baseline_samples`` have shape (seeds, samples): each arm's per-sample
    score on the *same* fixed test samples (e.g. 100 * correct, so the row means are the arms'
    accuracies in points). With d[s, i] = method - baseline and the two-way random-effects model
    d[s, i] = mu + a_s + b_i + e_si (seed effect a, test-sample effect b, residual e), the estimate
    D = mean(d) has Var(D) = var(a) / n + var(b) / N + var(e) / (n N). The spread of the per-seed
    means, sd(d)^2 / n, already carries var(a) / n + var(e) / (n N) (what ``compare_paired`` uses).
    This returns the part a fixed test split hides, sqrt(var(b) / N), with var(b) estimated without
    bias as var_i(mean_s d[s, i]) - var(e) / n (floored at 0) and var(e) the two-way residual
    variance. With one seed, var(e) is not separable from var(b) and the whole per-sample variance
    counts (conservative). Returns 0.0 for a single test sample."""
    a = np.asarray(method_samples, dtype=np.float64)
    b = np.asarray(baseline_samples, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[None, :], b.reshape(1, -1) if b.ndim == 1 else b
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"the arms need the same (seeds, samples) shape, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("per-sample scores must be finite")
    d = a - b
    n, big_n = d.shape
    if big_n < 2:
        return 0.0
    per_sample = d.mean(axis=0)  # mean over seeds, per test sample
    var_b = per_sample.var(ddof=1)
    if n > 1:
        resid = d - d.mean(axis=1, keepdims=True) - per_sample[None, :] + d.mean()
        var_e = float((resid ** 2).sum() / ((n - 1) * (big_n - 1)))
        var_b = max(0.0, var_b - var_e / n)
    return math.sqrt(var_b / big_n)


@dataclass(frozen=True)
class BootstrapInterval:
    """Percentile interval of the mean difference in accuracy (points) over resampled test sets."""

    mean: float  # observed difference, method - baseline, in points
    interval: tuple[float, float]
    level: float
    resamples: int
    samples: int
    seeds: int


def paired_bootstrap(method_correct, baseline_correct, *, resamples: int = 2000, level: float = LEVEL,
                     seed: int = 0) -> BootstrapInterval:
    """Paired bootstrap of the accuracy difference over test samples (and seeds, if given).

    ``method_correct`` and ``baseline_correct`` are 0/1 (or per-sample scores) of the two arms on
    the *same* test samples: shape (samples,) for one seed, or (seeds, samples) for several. Each
    resample draws test-sample indices with replacement, the same indices for both arms and every
    seed (so the pairing is kept), and, with several seeds, draws seeds with replacement too. The
    statistic is 100 * (mean of method - mean of baseline); the interval is its (1 - level) / 2 and
    (1 + level) / 2 percentiles. With one seed it is the test-set sampling error alone; with
    several it adds it to the seed-to-seed spread."""
    a = np.asarray(method_correct, dtype=np.float64)
    b = np.asarray(baseline_correct, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (1, 2) or a.shape[-1] == 0:
        raise ValueError(f"the arms need the same (samples,) or (seeds, samples) shape, got {a.shape} and {b.shape}")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError("need 0 < level < 1 and resamples >= 1")
    d = (a - b).reshape(-1, a.shape[-1])  # (seeds, samples)
    n_seeds, n_samples = d.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for r in range(resamples):
        rows = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, dtype=np.int64)
        cols = rng.integers(0, n_samples, n_samples)
        stats[r] = d[np.ix_(rows, cols)].mean()
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return BootstrapInterval(100.0 * float(d.mean()), (100.0 * float(lo), 100.0 * float(hi)), level,
                             resamples, n_samples, n_seeds)
