"""The defaults check's evidence: paired intervals per point, "hurts on average", and the mark
`joryu methods` prints for a method whose best defaults still hurt (no training here)."""

import json
from pathlib import Path

import pytest

from joryu.commands import methods as methods_cmd
from joryu.commands._fields import method_schema
from joryu.methods import DefaultsEvidence, available, method_info
from joryu.reproduce.defaults import evidence, hurts_on_average, markdown

ROOT = Path(__file__).resolve().parents[1]


def _result(gains_by_point, seeds=(80.0, 82.0, 81.0), spread=(0.0, 0.2, -0.2)):
    pairs = {}
    for name in ("a", "b"):
        rows = {"alone": list(seeds)}
        for g, gain in gains_by_point:
            rows[json.dumps(g, sort_keys=True)] = [a + gain + e for a, e in zip(seeds, spread)]
        pairs[name] = {"val_size": 100, "rows": rows}
    return {"method": "m", "fixed": {}, "fields": {}, "grid": [g for g, _ in gains_by_point], "pairs": pairs,
            "seeds": len(seeds)}


def test_each_point_gets_its_paired_mean_gain_and_t_interval_per_pair_and_across_pairs():
    ev = evidence(_result([({}, 1.0)]))["{}"]
    across = ev["across"]
    assert across["n"] == 3 and abs(across["mean"] - 1.0) < 1e-9
    lo, hi = across["interval"]
    assert lo < 1.0 < hi and hi - lo > 0
    assert across["verdict"] == "no evidence either way"  # 3 seeds: never a verdict
    assert set(ev["pairs"]) == {"a", "b"} and abs(ev["pairs"]["a"]["mean"] - 1.0) < 1e-9


def test_five_seeds_give_a_verdict_and_three_say_there_is_none():
    five = _result([({}, -2.0)], seeds=(80, 81, 82, 83, 84), spread=(0.1, -0.1, 0.2, -0.2, 0.0))
    assert evidence(five)["{}"]["across"]["verdict"] == "hurt"
    assert "| hurt |" in markdown(five, "cmd")
    assert "none (n = 3)" in markdown(_result([({}, -2.0)]), "cmd")


def test_hurts_on_average_reads_the_chosen_point():
    assert hurts_on_average(_result([({}, -0.5), ({"t": 2}, -0.1)]))  # best point still below alone
    assert not hurts_on_average(_result([({}, -0.5), ({"t": 2}, 0.4)]))  # the rule picks t=2, +0.4
    assert "still hurt on average" in markdown(_result([({}, -0.5)]), "cmd")


def _marked():
    return [n for n in available() if method_info(n).cls.defaults_evidence is not None]


@pytest.mark.parametrize("name", _marked() or ["(none)"])
def test_a_declared_mark_matches_its_sweep_file(name):
    if name == "(none)":
        pytest.skip("no method declares defaults evidence")
    ev = method_info(name).cls.defaults_evidence
    data = json.loads((ROOT / ev.source).with_suffix(".json").read_text())
    assert data["method"] == name
    assert ev.hurts == data["hurts_on_average"], f"{name}: the mark disagrees with {ev.source}"
    assert ev.ran == (data["chosen"] is not None), f"{name}: 'ran' disagrees with {ev.source}"
    assert ev.regime.strip()


def test_joryu_methods_marks_a_method_whose_defaults_hurt(monkeypatch, capsys):
    cls = method_info("kd").cls
    monkeypatch.setattr(cls, "defaults_evidence", DefaultsEvidence(True, "helps only on X.", "results/x.md"))
    methods_cmd.run(type("A", (), {"name": None})())
    lines = capsys.readouterr().out.splitlines()
    kd = next(line for line in lines if line.startswith("kd "))
    assert "[defaults hurt on average]" in kd
    assert not any("[defaults hurt" in line for line in lines if line.startswith("supervised "))
    method_schema("kd")
    out = capsys.readouterr().out
    assert "defaults check: defaults hurt on average (results/x.md). helps only on X." in out
    monkeypatch.setattr(cls, "defaults_evidence", DefaultsEvidence(False, "r.", "results/x.md"))
    methods_cmd.run(type("A", (), {"name": None})())
    assert "[defaults hurt" not in next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("kd "))
    monkeypatch.setattr(cls, "defaults_evidence", DefaultsEvidence(False, "needs X.", "results/x.md", ran=False))
    methods_cmd.run(type("A", (), {"name": None})())
    kd = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("kd "))
    assert "[defaults not checked: runs on none of the check's pairs]" in kd
    method_schema("kd")
    assert "defaults check: defaults not checked: runs on none of the check's pairs (results/x.md). needs X." \
        in capsys.readouterr().out


def test_a_method_that_ran_on_no_pair_chooses_nothing_and_lists_why():
    res = _result([])
    res["grid"] = [{}]
    res["refused"] = {"a": {"{}": "needs two feature maps"}, "b": {"{}": "no dropout module"}}
    from joryu.reproduce.defaults import choose

    assert choose(res) == (None, {})
    assert not hurts_on_average(res)
    md = markdown(res, "cmd")
    assert "Chosen: nothing" in md
    assert "- Not run on a (current defaults): needs two feature maps" in md


def test_a_method_that_cannot_be_built_from_its_defaults_is_reported_not_raised():
    from joryu.reproduce.defaults import sweep

    res = sweep("progressive_blockwise", [{}], seeds=1, quick=True, progress=False)
    assert "blocks" in res["unbuilt"] and res["pairs"] == {}
    assert "cannot be built from its defaults" in markdown(res, "cmd")


def test_pair_params_reach_the_method_on_their_pair_and_are_written_out(monkeypatch):
    from joryu.reproduce import defaults

    seen = []

    def untrained(method, net, data, cfg, seed, teacher=None, params=None, augment=None):  # no training here
        seen.append((method, params))
        return net

    monkeypatch.setattr(defaults, "train", untrained)
    points = {"student_points": ["features.1", "features.2"], "teacher_points": ["features.1", "features.3"]}
    res = defaults.sweep("svd_kd", [{}, {"k": 2}], seeds=1, quick=True, fixed={"weight": 0.5}, pairs=["digits"],
                         progress=False, pair_params={"digits": points, "mnist1d": {"student_points": ["x"]}})
    assert [p for m, p in seen if m == "svd_kd"] == [{"weight": 0.5, **points}, {"weight": 0.5, **points, "k": 2}]
    assert res["pair_params"]["digits"] == points and "digits" in res["pairs"]
    md = defaults.markdown(res, "cmd")
    assert f"Fixed parameters on digits (--pair-params, merged into every point on that pair): " \
           f"{json.dumps(points, sort_keys=True)}." in md


def test_a_pair_without_the_parameters_it_needs_is_listed_not_run_with_the_reason():
    from joryu.reproduce.defaults import sweep

    res = sweep("progressive_blockwise", [{}], seeds=1, quick=True, pairs=["digits"], progress=False,
                pair_params={"mnist5k_cnn": {"blocks": ["layer1"]}})
    assert "unbuilt" not in res and res["pairs"] == {}
    assert "blocks" in res["refused"]["digits"]["{}"]
    assert "- Not run on digits (current defaults): " in markdown(res, "cmd")


def test_pair_params_naming_an_unknown_pair_or_not_an_object_are_refused():
    from joryu.reproduce.defaults import parse_pair_params

    assert parse_pair_params('{"mnist100": {"blocks": ["layer1"]}}') == {"mnist100": {"blocks": ["layer1"]}}
    with pytest.raises(SystemExit, match="unknown pair 'cifar'"):
        parse_pair_params('{"cifar": {}}')
    with pytest.raises(SystemExit, match="expected"):
        parse_pair_params('{"digits": ["layer1"]}')
