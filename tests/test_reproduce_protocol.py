"""The reproductions' protocol: every claim judged by joryu.stats's t rule, the shared runner,
and re-judging stored result files."""

import json
import math

import pytest

from joryu.reproduce.protocol import judge, run_paired

C = 0.0228 / math.sqrt(0.5)  # differences 0.06 + C * (-2, -1, 0, 1, 2): mean 0.06, SE 0.0228


def test_a_mean_of_006_with_se_00228_over_five_seeds_is_not_reproduced():
    base = [90.0, 90.5, 91.0, 91.5, 92.0]
    method = [b + 0.06 + C * k for b, k in zip(base, (-2, -1, 0, 1, 2))]
    c = judge("A beats B", method, base)
    assert c.effect["mean"] == pytest.approx(0.06) and c.effect["se"] == pytest.approx(0.0228)
    assert c.effect["mean"] - 2 * c.effect["se"] > 0  # the old rule would have passed it
    assert not c.reproduced and c.verdict == "not reproduced"
    assert c.effect["t_quantile"] == pytest.approx(2.776445, abs=1e-6)
    assert "95% t interval -0.00 .. +0.12" in c.evidence and "n = 5 paired seeds" in c.evidence


def test_superiority_needs_the_papers_sign_beyond_the_t_quantile_times_the_standard_error():
    base = [90.0] * 5
    assert judge("x", [91.0, 91.2, 90.8, 91.1, 90.9], base).reproduced  # +1.0, SE 0.07
    assert not judge("x", [91.0, 91.2, 90.8, 91.1, 90.9], base, sign=-1).reproduced
    assert not judge("x", [92.0, 88.0, 91.5, 89.0, 90.5], base).reproduced  # +0.2, SE 0.75
    # mean 0.6, SE 0.245: 0.6 - 2 SE > 0 but 0.6 - 2.776 SE < 0
    assert not judge("x", [90.0 + x for x in (1, 0, 1, 0, 1)], base).reproduced
    assert judge("x", [90.0 + x for x in (1, 1, 1, 0, 1)], base).reproduced  # mean 0.8, SE 0.2
    lower_better = judge("x", [0.10, 0.11, 0.09, 0.10, 0.12], [0.20, 0.21, 0.19, 0.22, 0.20], sign=-1)
    assert lower_better.reproduced


def test_too_few_seeds_never_reproduce():
    assert not judge("x", [95.0, 96.0, 97.0], [90.0] * 3).reproduced
    assert judge("x", [95.0, 96.0, 97.0], [90.0] * 3, min_seeds=3).reproduced
    c = judge("A beats B", [95.0], [90.0])
    assert not c.reproduced and "fewer than 5" in c.evidence


def test_identical_arms_are_not_reproduced():
    c = judge("x", [90.0, 91.0, 92.0, 93.0, 94.0], [90.0, 91.0, 92.0, 93.0, 94.0])
    assert not c.reproduced and c.effect["verdict"] == "no evidence either way"


def test_non_inferiority_uses_the_stated_margin():
    base = [90.0] * 5
    slightly_worse = [89.8, 89.7, 89.9, 89.8, 89.8]  # -0.2, SE 0.03
    assert judge("x", slightly_worse, base, margin=0.5).reproduced
    assert not judge("x", slightly_worse, base, margin=0.1).reproduced
    assert not judge("x", slightly_worse, base).reproduced
    with pytest.raises(ValueError, match="margin"):
        judge("x", slightly_worse, base, margin=0.0)


def test_judge_prints_effect_t_interval_and_n():
    c = judge("KD helps", [91.0, 91.2, 90.8, 91.1, 90.9], [90.0] * 5, names=("KD", "CE"))
    assert c.reproduced
    assert "+1.00 points" in c.evidence and "95% t interval +0.80 .. +1.20" in c.evidence
    assert "n = 5" in c.evidence and "2.776 SE" in c.evidence
    assert "97.5% t quantile" in c.criterion
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
        registry.REPRODUCTIONS.unregister("toy_study")
    data = json.loads(md.with_suffix(".json").read_text())
    assert [c["verdict"] for c in data["claims"]] == ["reproduced", "reproduced"]
    assert "REPRODUCED" in md.read_text()


def test_a_claim_may_state_its_own_unit():
    from joryu.reproduce.protocol import Compare, run_study

    s = _toy_study(1.0)
    s.claims[0] = Compare("method beats alone", "method", "alone", unit="x 1e-3 nats")
    r = run_study(s, seeds=range(5), quick=False)
    assert "x 1e-3 nats" in r.claims[0].evidence and "points" in r.claims[1].evidence


# --- re-judging stored result files ---------------------------------------------------------

def _edge_study():
    """A study whose first claim passes mean - 2 SE > 0 but not the t rule; its second passes both."""
    from joryu.reproduce.protocol import Arm, Compare, Study

    def base(ctx):
        return 90.0 + ctx.seed * 0.5

    return Study(title="edge", paper="none", data="toy data.", budget="no training.", choices="none.",
                 arms=[Arm("alone", base), Arm("small", lambda ctx: base(ctx) + 0.06 + C * (ctx.seed - 2)),
                       Arm("large", lambda ctx: base(ctx) + 1.0 + 0.1 * (ctx.seed % 2))],
                 claims=[Compare("small beats alone", "small", "alone"),
                         Compare("large beats alone", "large", "alone")],
                 test_size=2000, tried="nothing else.")


def _legacy_result(tmp_path):
    """A result file as the 2 SE rule wrote it: the first claim 'reproduced', no meta['rule']."""
    from joryu.reproduce import registry
    from joryu.reproduce.protocol import PROTOCOL

    registry._discover()
    registry.register_reproduction("edge_study", default_seeds=5)(lambda seeds, quick, progress: _edge_study())
    md = registry.run_reproduction("edge_study", out_dir=tmp_path, progress=False)
    path = md.with_suffix(".json")
    data = json.loads(path.read_text())
    assert data["meta"].pop("rule") == "t" and data["claims"][0]["verdict"] == "not reproduced"
    data["claims"][0].update(reproduced=True, verdict="reproduced")
    data["setup"] = data["setup"].replace(PROTOCOL, "**Protocol** (docs/reproduction-protocol.md): paired "
                                          "seeds, ... minus 2 standard errors > 0; at least 5 seeds.")
    path.write_text(json.dumps(data))
    return path


def test_rejudge_applies_the_t_rule_to_stored_values_and_says_what_changed(tmp_path):
    from joryu.reproduce import registry
    from joryu.reproduce.rejudge import main, rejudge_file

    try:
        path = _legacy_result(tmp_path)
        rj = rejudge_file(path)
        assert [(c["before"], c["after"]) for c in rj["changes"]] == [("reproduced", "not reproduced")]
        assert rj["changes"][0]["mean"] == pytest.approx(0.06) and rj["changes"][0]["n"] == 5
        data = json.loads(path.read_text())
        assert [c["verdict"] for c in data["claims"]] == ["not reproduced", "reproduced"]
        assert [c["verdict_under_2se"] for c in data["claims"]] == ["reproduced", "reproduced"]
        assert data["meta"]["rule"] == "t"
        text = path.with_suffix(".md").read_text()
        assert "## Verdicts under the t rule: what changed" in text
        assert "**reproduced -> not reproduced**: small beats alone" in text
        assert "minus 2 standard errors" not in text and "97.5% t quantile" in text
        assert "What was tried for the claims that did not reproduce: nothing else." in text
        # again: the same changes (the old verdicts are kept), nothing retrained
        assert main(["--results", str(tmp_path), "edge_study"]) == 0
        again = json.loads(path.read_text())
        assert again["meta"]["rejudged"]["changes"] == data["meta"]["rejudged"]["changes"]
        assert again["claims"] == data["claims"]
    finally:
        registry.REPRODUCTIONS.unregister("edge_study")


def test_rejudge_says_so_when_a_file_lacks_a_claims_per_seed_values(tmp_path):
    from joryu.reproduce import registry
    from joryu.reproduce.rejudge import rejudge_file

    try:
        path = _legacy_result(tmp_path)
        data = json.loads(path.read_text())
        del data["tables"][0]["rows"]["large"]
        path.write_text(json.dumps(data))
        rj = rejudge_file(path)
        assert [c["claim"] for c in rj["not_rejudged"]] == ["large beats alone"]
        assert "no per-seed values" in rj["not_rejudged"][0]["why"]
        assert json.loads(path.read_text())["claims"][1]["verdict"] == "reproduced"  # kept as it was
        assert "not re-judged: large beats alone" in path.with_suffix(".md").read_text()
    finally:
        registry.REPRODUCTIONS.unregister("edge_study")


def test_a_file_judged_by_the_t_rule_is_left_alone(tmp_path):
    from joryu.reproduce import registry
    from joryu.reproduce.rejudge import rejudge_file

    registry._discover()
    registry.register_reproduction("edge_study", default_seeds=5)(lambda seeds, quick, progress: _edge_study())
    try:
        md = registry.run_reproduction("edge_study", out_dir=tmp_path, progress=False)
        before = md.read_text()
        assert rejudge_file(md.with_suffix(".json")) is None and md.read_text() == before
    finally:
        registry.REPRODUCTIONS.unregister("edge_study")


def _sampled_study(test_size: int):
    """Arms scored per test sample: the method is right on 2 more samples in every 100, on every
    seed alike, so the seed-to-seed spread is nearly nil and only the test set's size limits what
    the difference says."""
    import numpy as np

    from joryu.reproduce.protocol import Arm, Compare, Study
    from joryu.stats import SampledScore

    def outcomes(seed: int, extra: int):
        rng = np.random.default_rng(1000 + seed)
        right = (np.arange(test_size) % 100 < 88 + extra).astype(float)
        flip = rng.random(test_size) < 0.05  # a little per-seed noise on both arms alike
        return SampledScore(100.0 * np.where(flip, 1 - right, right))

    return Study(title="sampled", paper="none", data="toy.", budget="none.", choices="none.",
                 arms=[Arm("alone", lambda ctx: outcomes(ctx.seed, 0)),
                       Arm("method", lambda ctx: outcomes(ctx.seed, 2))],
                 claims=[Compare("method beats alone", "method", "alone")], test_size=test_size)


def test_per_sample_scores_add_test_set_sampling_error_to_the_verdict():
    from joryu.reproduce.protocol import run_study

    big = run_study(_sampled_study(4000), seeds=range(5), quick=False).claims[0]
    small = run_study(_sampled_study(100), seeds=range(5), quick=False).claims[0]
    assert big.effect["test_se"] > 0 and small.effect["test_se"] > big.effect["test_se"]
    assert "test-set sampling" in big.evidence
    # the same 2-point gain: 4000 test samples carry it, 100 do not, though the seeds alone would
    from joryu.stats import compare_paired

    assert big.reproduced and not small.reproduced
    assert compare_paired(small.effect["differences"], [0.0] * 5).passed
    plain = run_study(_toy_study(1.0), seeds=range(5), quick=False).claims[0]
    assert plain.effect["test_se"] is None and "not measured" in plain.evidence
