"""The defaults check: grid parsing and the stated rule for changing a default."""

import json

from joryu.reproduce.defaults import choose, markdown, parse_grid


def test_grid_starts_with_the_current_defaults_and_spans_every_combination():
    g = parse_grid(["temperature=1,4", "alpha=0.5,0.9", "variant=kd"])
    assert g[0] == {}
    assert len(g) == 1 + 4
    assert {"temperature": 4, "alpha": 0.9, "variant": "kd"} in g
    assert parse_grid([]) == [{}]


def _result(gains_by_point):
    pairs = {}
    for name in ("a", "b", "c"):
        rows = {"alone": [80.0, 82.0]}
        for g, gain in gains_by_point:
            rows[json.dumps(g, sort_keys=True)] = [80.0 + gain, 82.0 + gain]
        pairs[name] = {"val_size": 100, "rows": rows}
    return {"method": "m", "fixed": {}, "fields": {}, "grid": [g for g, _ in gains_by_point], "pairs": pairs}


def test_the_current_default_stays_unless_beaten_by_more_than_the_margin():
    pick, gains = choose(_result([({}, 0.5), ({"t": 2}, 0.7)]))
    assert pick == "{}" and abs(gains['{"t": 2}'] - 0.7) < 1e-9
    pick, _ = choose(_result([({}, -1.0), ({"t": 2}, 0.5)]))
    assert pick == '{"t": 2}'
    text = markdown(_result([({}, -1.0), ({"t": 2}, 0.5)]), "cmd")
    assert 'Chosen: {"t": 2}' in text and "+0.50" in text and "-1.00" in text


def test_a_kept_teacher_is_loaded_back_and_gives_the_same_sweep(tmp_path, monkeypatch):
    from joryu.reproduce import defaults

    trained = []
    real_train = defaults.train

    def counting(method, *a, **kw):
        trained.append(method)
        return real_train(method, *a, **kw)

    monkeypatch.setattr(defaults, "train", counting)
    kw = dict(seeds=1, quick=True, pairs=["digits"], progress=False, teacher_cache=tmp_path / "teachers")
    first = defaults.sweep("kd", [{}], **kw)
    assert trained.count("supervised") == 2  # the teacher and the student alone
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 1
    trained.clear()
    second = defaults.sweep("kd", [{}], **kw)
    assert trained.count("supervised") == 1  # the student alone only: the teacher was read back
    assert first["pairs"]["digits"]["teacher_val"] == second["pairs"]["digits"]["teacher_val"]
    assert first["pairs"]["digits"]["rows"] == second["pairs"]["digits"]["rows"]
