"""The one pass rule of joryu.reproduce.protocol."""

import math

import pytest

from joryu.reproduce.protocol import judge, non_inferiority, paired_effect, run_paired, superiority


def test_paired_effect_is_the_mean_and_standard_error_of_the_differences():
    e = paired_effect([91.0, 92.0, 93.0, 94.0, 95.0], [90.0, 90.5, 91.0, 91.5, 92.0])
    assert e.differences == (1.0, 1.5, 2.0, 2.5, 3.0)
    assert e.mean == pytest.approx(2.0)
    assert e.se == pytest.approx(math.sqrt(0.625) / math.sqrt(5))
    lo, hi = e.interval
    assert lo == pytest.approx(2.0 - 2 * e.se) and hi == pytest.approx(2.0 + 2 * e.se)
    with pytest.raises(ValueError, match="same seeds"):
        paired_effect([1.0], [1.0, 2.0])


def test_superiority_needs_the_papers_sign_by_more_than_two_standard_errors():
    base = [90.0] * 5
    clear = paired_effect([91.0, 91.2, 90.8, 91.1, 90.9], base)  # +1.0, SE 0.07
    assert superiority(clear) and not superiority(clear, sign=-1)
    noisy = paired_effect([92.0, 88.0, 91.5, 89.0, 90.5], base)  # +0.2, SE 0.75
    assert not superiority(noisy)
    edge = paired_effect([90.0 + x for x in (1, 0, 1, 0, 1)], base)  # mean 0.6, SE 0.245: 0.6 - 0.49 > 0
    assert superiority(edge)
    below = paired_effect([90.0 + x for x in (1, 0, 1, 0, 0)], base)  # mean 0.4, SE 0.245: 0.4 - 0.49 < 0
    assert not superiority(below)
    lower_better = paired_effect([0.10, 0.11, 0.09, 0.10, 0.12], [0.20, 0.21, 0.19, 0.22, 0.20])
    assert superiority(lower_better, sign=-1) and not superiority(lower_better)


def test_too_few_seeds_never_reproduce():
    e = paired_effect([95.0, 96.0, 97.0], [90.0, 90.0, 90.0])
    assert not superiority(e)
    assert superiority(e, min_seeds=3)
    c = judge("A beats B", [95.0], [90.0])
    assert not c.reproduced and "fewer than 5" in c.evidence


def test_non_inferiority_uses_the_stated_margin():
    base = [90.0] * 5
    slightly_worse = paired_effect([89.8, 89.7, 89.9, 89.8, 89.8], base)  # -0.2, SE 0.03
    assert non_inferiority(slightly_worse, margin=0.5)
    assert not non_inferiority(slightly_worse, margin=0.1)
    assert not superiority(slightly_worse)
    with pytest.raises(ValueError, match="margin"):
        non_inferiority(slightly_worse, margin=0.0)


def test_judge_prints_effect_interval_and_n():
    c = judge("KD helps", [91.0, 91.2, 90.8, 91.1, 90.9], [90.0] * 5, names=("KD", "CE"))
    assert c.reproduced
    assert "+1.00 points" in c.evidence and "interval" in c.evidence and "n = 5" in c.evidence
    assert "2 standard errors" in c.criterion
    ni = judge("no worse", [89.8] * 5, [90.0] * 5, margin=0.5)
    assert ni.reproduced and "margin 0.5" in ni.criterion


def test_run_paired_gives_every_arm_the_same_seeds():
    seen = {"a": [], "b": []}
    out = run_paired({k: (lambda s, k=k: seen[k].append(s) or s * 1.0) for k in seen}, [3, 1, 2])
    assert seen == {"a": [3, 1, 2], "b": [3, 1, 2]} and out["a"] == [3.0, 1.0, 2.0]


# --- the shared runner ------------------------------------------------------------------------

def _toy_study(effect: float, noise: float = 0.1, **kw):
    from joryu.reproduce.protocol import Arm, Compare, Study

    def base(ctx):
        return 90.0 + ctx.seed * 0.5  # seed-to-seed spread that pairing removes

    def method(ctx):
        jitter = noise if ctx.seed % 2 else -noise
        return {"test acc (%)": base(ctx) + effect + jitter, "extra": 1.0}

    return Study(title="toy", paper="none", data="toy data.", budget="no training.", choices="none.",
                 arms=[Arm("alone", base), Arm("method", method)],
                 claims=[Compare("method beats alone", "method", "alone"),
                         Compare("method no worse", "method", "alone", margin=0.5)],
                 test_size=kw.pop("test_size", 2000), **kw)


def test_run_study_pairs_seeds_times_arms_and_judges_every_claim():
    from joryu.reproduce.protocol import run_study

    r = run_study(_toy_study(1.0), seeds=range(5), quick=False)
    beats, no_worse = r.claims
    assert beats.reproduced and no_worse.reproduced
    assert "n = 5 paired seeds" in beats.evidence and "+0.98 points" in beats.evidence
    table = r.tables[0]
    assert table.values("alone") == [90.0, 90.5, 91.0, 91.5, 92.0]
    assert len(table.values("method", "train + eval time (s)")) == 5
    assert "one sample is 0.050 points" in r.setup

    r = run_study(_toy_study(-1.0, tried="more epochs."), seeds=range(5), quick=False)
    assert not any(c.reproduced for c in r.claims)
    assert any("more epochs" in n for n in r.notes)
    small = run_study(_toy_study(1.0, test_size=500), seeds=range(5), quick=True)
    assert "asks for >= 2000" in small.setup and "QUICK" in small.notes[0]


def test_run_study_rejects_claims_on_unknown_arms_and_quick_runs_never_reproduce():
    from joryu.reproduce.protocol import Compare, run_study

    s = _toy_study(1.0)
    s.claims.append(Compare("x", "method", "nobody"))
    with pytest.raises(ValueError, match="nobody"):
        run_study(s, seeds=range(5), quick=False)
    r = run_study(_toy_study(5.0), seeds=range(2), quick=True)
    assert not any(c.reproduced for c in r.claims)


def test_a_declared_study_is_run_and_written_by_the_registry(tmp_path):
    import json

    from joryu.reproduce import registry

    registry._discover()
    registry.register_reproduction("toy_study", default_seeds=5, quick_seeds=2)(
        lambda seeds, quick, progress: _toy_study(1.0))
    try:
        md = registry.run_reproduction("toy_study", out_dir=tmp_path, progress=False)
    finally:
        registry._REPROS.pop("toy_study")
    data = json.loads(md.with_suffix(".json").read_text())
    assert [c["verdict"] for c in data["claims"]] == ["reproduced", "reproduced"]
    assert "REPRODUCED" in md.read_text()


def test_a_claim_may_state_its_own_unit():
    from joryu.reproduce.protocol import Compare, run_study

    s = _toy_study(1.0)
    s.claims[0] = Compare("method beats alone", "method", "alone", unit="x 1e-3 nats")
    r = run_study(s, seeds=range(5), quick=False)
    assert "x 1e-3 nats" in r.claims[0].evidence and "points" in r.claims[1].evidence
