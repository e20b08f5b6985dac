"""joryu.stats: the t quantile, the paired rule and its verdicts, seeds needed, the paired bootstrap."""

import math

import numpy as np
import pytest

from joryu import stats
from joryu.stats import (
    HELPED,
    HURT,
    NO_EVIDENCE,
    NO_WORSE,
    compare_paired,
    seeds_needed,
    t_cdf,
    t_ppf,
)

C = 0.0228 / math.sqrt(0.5)  # differences 0.06 + C * (-2, -1, 0, 1, 2) have mean 0.06 and SE 0.0228
EDGE = [0.06 + C * k for k in (-2, -1, 0, 1, 2)]


@pytest.mark.parametrize("p, df, value", [
    (0.975, 4, 2.776445), (0.975, 1, 12.706205), (0.95, 10, 1.812461), (0.995, 30, 2.749996),
    (0.975, 9, 2.262157), (0.025, 4, -2.776445), (0.5, 7, 0.0)])
def test_t_quantile_matches_textbook_values(p, df, value):
    assert t_ppf(p, df) == pytest.approx(value, abs=2e-6)


def test_t_quantile_and_cdf_match_scipy_over_many_points():
    scipy_t = pytest.importorskip("scipy.stats").t
    for df in (1, 1.5, 2, 3, 4, 5, 7, 9, 19, 30, 100, 1000, 1e5):
        for p in (1e-10, 1e-6, 1e-3, 0.01, 0.025, 0.05, 0.2, 0.49, 0.51, 0.8, 0.95, 0.975, 0.99, 0.999, 1 - 1e-6):
            assert t_ppf(p, df) == pytest.approx(scipy_t.ppf(p, df), rel=1e-9), (p, df)
        for t in (-40.0, -2.5, -0.3, 0.0, 0.7, 3.0, 300.0):
            assert t_cdf(t, df) == pytest.approx(scipy_t.cdf(t, df), rel=1e-10, abs=1e-15), (t, df)


def test_t_quantile_inverts_the_cdf_and_rejects_bad_arguments():
    for df in (3, 4.5, 12):
        for p in (0.01, 0.3, 0.9, 0.975):
            assert t_cdf(t_ppf(p, df), df) == pytest.approx(p, rel=1e-12)
    assert stats.t_quantile(5) == pytest.approx(2.776445, abs=1e-6) and stats.t_quantile(1) == math.inf
    for p in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="0 < p < 1"):
            t_ppf(p, 4)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_ppf(0.9, 0)


def test_mean_006_with_se_00228_over_five_seeds_is_not_reproduced_though_two_se_would_pass_it():
    r = compare_paired(EDGE, [0.0] * 5)
    assert r.n == 5 and r.mean == pytest.approx(0.06) and r.se == pytest.approx(0.0228)
    assert r.mean - 2 * r.se > 0  # the old rule, mean - 2 SE > 0, passes it
    assert r.q == pytest.approx(2.776445, abs=1e-6) and r.mean - r.q * r.se < 0
    assert not r.passed and r.verdict == NO_EVIDENCE
    assert r.interval == pytest.approx((0.06 - r.q * 0.0228, 0.06 + r.q * 0.0228))


def test_a_clear_gain_helps_a_clear_loss_hurts_and_the_sign_sets_the_direction():
    base = [90.0, 91.0, 89.5, 90.5, 92.0]  # seed-to-seed spread the pairing removes
    better = [b + d for b, d in zip(base, (1.0, 1.2, 0.8, 1.1, 0.9))]
    up = compare_paired(better, base)
    assert up.passed and up.verdict == HELPED and up.differences == pytest.approx((1.0, 1.2, 0.8, 1.1, 0.9))
    assert up.sd == pytest.approx(np.std(up.differences, ddof=1)) and up.se == pytest.approx(up.sd / math.sqrt(5))
    down = compare_paired(base, better)
    assert not down.passed and down.verdict == HURT
    lower_is_better = compare_paired(base, better, sign=-1)  # e.g. a loss: the method's is lower
    assert lower_is_better.passed and lower_is_better.verdict == HELPED
    noisy = compare_paired([b + d for b, d in zip(base, (2.0, -1.8, 1.5, -1.0, 0.5))], base)
    assert not noisy.passed and noisy.verdict == NO_EVIDENCE and "contains zero" in noisy.reason


def test_identical_arms_are_no_evidence_without_dividing_by_zero():
    r = compare_paired([90.0, 91.0, 92.0, 93.0, 94.0], [90.0, 91.0, 92.0, 93.0, 94.0])
    assert r.mean == 0 and r.sd == 0 and r.se == 0 and r.interval == (0.0, 0.0)
    assert not r.passed and r.verdict == NO_EVIDENCE
    assert "interval +0.00 .. +0.00" in r.describe()


def test_fewer_than_five_seeds_never_pass_and_say_so():
    r = compare_paired([95.0, 96.0, 97.0, 96.0], [90.0] * 4)
    assert r.mean - r.q * r.se > 0  # would clear the margin, but four seeds are too few
    assert not r.passed and r.verdict == NO_EVIDENCE and "fewer than 5 paired seeds" in r.reason
    assert compare_paired([95.0, 96.0, 97.0, 96.0], [90.0] * 4, min_seeds=4).verdict == HELPED
    one = compare_paired([95.0], [90.0])
    assert one.verdict == NO_EVIDENCE and "one seed cannot separate" in one.reason
    assert "no interval from one seed" in one.describe() and one.as_dict()["se"] is None


def test_non_inferiority_uses_the_margin_stated_beforehand():
    base = [90.0] * 5
    slightly_worse = [89.8, 89.7, 89.9, 89.8, 89.8]  # -0.2, SE 0.03
    ok = compare_paired(slightly_worse, base, margin=0.5)
    assert ok.passed and ok.verdict == NO_WORSE
    too_tight = compare_paired(slightly_worse, base, margin=0.1)
    assert not too_tight.passed and too_tight.verdict == HURT  # worse by more than 0.1 throughout
    assert not compare_paired(slightly_worse, base).passed
    with pytest.raises(ValueError, match="margin must be > 0"):
        compare_paired(slightly_worse, base, margin=0.0)


def test_bad_pairs_are_refused():
    with pytest.raises(ValueError, match="same seeds"):
        compare_paired([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="no paired seeds"):
        compare_paired([], [])
    with pytest.raises(ValueError, match="finite"):
        compare_paired([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="sign"):
        compare_paired([1.0], [1.0], sign=2)


def test_seeds_needed_is_the_first_n_that_clears_the_rule():
    n = seeds_needed(1.0, 0.8)
    assert n is not None and n > 5
    clears = [0.8 - stats.t_quantile(k) / math.sqrt(k) > 0 for k in (n - 1, n)]
    assert clears == [False, True]
    # differences with exactly that mean and sd pass at n seeds and not at n - 1
    for k, passes in ((n, True), (n - 1, False)):
        z = np.arange(k) - (k - 1) / 2
        d = 0.8 + z / np.std(z, ddof=1)
        assert compare_paired(list(d), [0.0] * k).passed is passes
    assert seeds_needed(0.0, 0.3) == 5  # no spread: the minimum
    assert seeds_needed(0.2, -3.0) == 5  # the size counts, not its sign
    assert seeds_needed(1.0, 0.0) is None
    assert seeds_needed(1.0, 1e-3, max_seeds=1000) is None
    with pytest.raises(ValueError, match="spread"):
        seeds_needed(float("nan"), 1.0)


def test_paired_bootstrap_measures_test_set_sampling_error():
    rng = np.random.default_rng(0)
    base = (rng.random(4000) < 0.8).astype(float)
    same = stats.paired_bootstrap(base, base, resamples=200)
    assert same.mean == 0 and same.interval == (0.0, 0.0)
    flips = rng.random(4000) < 0.1  # the method fixes 10% of the samples the baseline gets wrong
    method = np.where(flips, 1.0, base)
    b = stats.paired_bootstrap(method, base, resamples=1000)
    d = method - base
    half = 1.96 * 100 * d.std(ddof=1) / math.sqrt(len(d))  # normal approximation of the same interval
    lo, hi = b.interval
    assert b.mean == pytest.approx(100 * d.mean()) and lo < b.mean < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    seeds = stats.paired_bootstrap(np.stack([method, method]), np.stack([base, base]), resamples=300)
    assert seeds.seeds == 2 and seeds.samples == 4000
    with pytest.raises(ValueError, match="same"):
        stats.paired_bootstrap(base, base[:10])


def test_test_sampling_se_recovers_the_spread_of_a_simulated_test_set_and_is_zero_without_one():
    # a known two-way model: per-sample effects b_i (sd 30 points) that every seed shares, plus
    # seed effects; the estimator must recover sd(b) / sqrt(N) and ignore the seed effects
    rng = np.random.default_rng(0)
    n, big_n = 5, 4000
    b = rng.normal(0, 30, big_n)
    d = b[None, :] + rng.normal(0, 5, (n, 1)) + rng.normal(0, 10, (n, big_n))
    se = stats.test_sampling_se(d, np.zeros_like(d))
    assert se == pytest.approx(30 / math.sqrt(big_n), rel=0.1)
    # identical per-sample outcomes: no difference, no sampling error
    same = rng.integers(0, 2, (n, 300)) * 100.0
    assert stats.test_sampling_se(same, same) == 0.0
    # only seed effects, no per-sample structure: the unbiased estimate is near zero
    flat = np.tile(rng.normal(0, 5, (n, 1)), (1, big_n)) + rng.normal(0, 10, (n, big_n))
    assert stats.test_sampling_se(flat, np.zeros_like(flat)) < 0.1 * 10 / math.sqrt(big_n) + 0.05
    with pytest.raises(ValueError, match="same"):
        stats.test_sampling_se(np.zeros((2, 3)), np.zeros((2, 4)))


def test_test_sampling_se_widens_the_interval_and_can_turn_a_verdict():
    d = [0.5, 0.55, 0.45, 0.5, 0.52]  # a tight seed spread: helped on seeds alone
    base = [90.0] * 5
    alone = stats.compare_paired([x + y for x, y in zip(base, d)], base)
    assert alone.verdict == stats.HELPED and alone.test_se is None
    wide = stats.compare_paired([x + y for x, y in zip(base, d)], base, test_se=0.3)
    assert wide.se == pytest.approx(math.sqrt(alone.se ** 2 + 0.09))
    assert wide.verdict == stats.NO_EVIDENCE
    assert "test-set sampling 0.30" in wide.describe()
    assert wide.as_dict()["test_se"] == 0.3
    with pytest.raises(ValueError, match="test_se"):
        stats.compare_paired(base, base, test_se=-1.0)


def test_a_sampled_score_is_its_mean_and_keeps_its_samples():
    s = stats.SampledScore([100.0, 0.0, 100.0, 100.0])
    assert s == 75.0 and isinstance(s, float)
    assert list(s.per_sample) == [100.0, 0.0, 100.0, 100.0]
    import copy
    assert list(copy.deepcopy(s).per_sample) == list(s.per_sample)
    assert not hasattr(s + 1.0, "per_sample")
    with pytest.raises(ValueError, match="at least one"):
        stats.SampledScore([])


def test_mean_score_keeps_samples_only_when_every_score_has_them():
    a, b = stats.SampledScore([100.0, 0.0]), stats.SampledScore([0.0, 0.0])
    m = stats.mean_score([a, b])
    assert m == 25.0 and list(m.per_sample) == [50.0, 0.0]
    plain = stats.mean_score([a, 10.0])
    assert plain == pytest.approx(30.0) and not hasattr(plain, "per_sample")
    with pytest.raises(ValueError, match="no scores"):
        stats.mean_score([])
