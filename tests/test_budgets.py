"""Budgets the runner checks: the engine and the teachers count what they spend into
joryu.meter, the reproductions' runner records it per arm and seed and refuses a claim between
arms whose budgets differ, unless the claim states the extra budget."""

import json

import pytest
import torch
from torch import nn

from joryu import meter
from joryu.config import TrainConfig
from joryu.methods import get_method
from joryu.reproduce.protocol import BUDGET_UNITS, WALL, Arm, Compare, Study, run_study
from joryu.run.stages import run_stages


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def test_the_engine_counts_optimizer_updates_not_batches(tiny_data):
    from joryu.reproduce.common import train

    # 240 samples, batch 32: 8 batches an epoch; accumulating 3 batches: updates after
    # batches 3, 6 and the epoch's last (8), so 3 updates an epoch
    with meter.metering() as spent:
        train("supervised", _net(), tiny_data, dict(epochs=2, batch_size=32, grad_accum=3), seed=0)
    assert spent[meter.UPDATES] == 6 and spent[meter.TEACHER] == 0

    # the stage results (the engine's FitResult) carry both batches and updates
    _, res = run_stages(get_method("supervised", {}), student=_net(), train=tiny_data, progress=False,
                        train_cfg=TrainConfig(epochs=2, batch_size=32, grad_accum=3))
    stage = next(iter(res.values()))
    assert stage.steps == 16 and stage.updates == 6


def test_a_cohort_counts_one_update_per_network_and_kd_counts_teacher_samples(tiny_data):
    from joryu.reproduce.common import train

    with meter.metering() as dml:
        train("dml", _net(), tiny_data, dict(epochs=1, batch_size=60), seed=0, params={"cohort_size": 2})
    assert dml[meter.UPDATES] == 2 * 4  # two networks, 4 batches

    teacher = _net(1)
    with meter.metering() as outer:
        with meter.metering() as kd:
            train("kd", _net(), tiny_data, dict(epochs=3, batch_size=60), seed=0, teacher=teacher)
        assert kd[meter.UPDATES] == 12 and kd[meter.TEACHER] == 3 * 240
    assert outer == kd  # meters nest: the outer one saw the same counts
    with meter.metering() as none:
        pass
    assert none == {meter.UPDATES: 0, meter.TEACHER: 0}


def test_an_ensemble_teacher_counts_the_samples_it_was_asked_about_once():
    from joryu.teachers import EnsembleTeacher

    t = EnsembleTeacher([_net(1), _net(2), _net(3)])
    with meter.metering() as spent:
        t({"input": torch.randn(5, 8), "index": torch.arange(5)})
        t({"input": torch.randn(7, 8)})
    assert spent[meter.TEACHER] == 12


# --- the runner ---------------------------------------------------------------------------

def _arm(updates, teacher=0, effect=0.0):
    def run(ctx):
        meter.count(meter.UPDATES, updates(ctx) if callable(updates) else updates)
        meter.count(meter.TEACHER, teacher)
        return 90.0 + ctx.seed * 0.5 + effect + (0.1 if ctx.seed % 2 else -0.1) * (effect != 0)
    return run


def _study(method_updates=100, budget="", declared=None, **kw):
    return Study(title="toy", paper="none", data="toy.", budget="toy.", choices="none.", test_size=2000,
                 arms=[Arm("alone", _arm(100), budget=(declared or {}).get("alone")),
                       Arm("method", _arm(method_updates, teacher=640, effect=1.0),
                           budget=(declared or {}).get("method"))],
                 claims=[Compare("method beats alone", "method", "alone", budget=budget)], **kw)


def test_equal_measured_budgets_are_judged_and_recorded_per_arm_and_seed(tmp_path):
    from joryu.reproduce import registry

    r = run_study(_study(), seeds=range(5), quick=False)
    assert r.claims[0].reproduced and r.claims[0].verdict == "reproduced"
    t = r.tables[0]
    assert t.values("method", meter.UPDATES) == [100.0] * 5
    assert t.values("method", meter.TEACHER) == [640.0] * 5 and t.values("alone", meter.TEACHER) == [0.0] * 5
    assert len(t.values("alone", WALL)) == 5
    assert "optimizer updates within 0 of the larger" in r.setup

    registry._discover()
    registry.register_reproduction("budget_toy", default_seeds=5)(lambda seeds, quick, progress: _study())
    try:
        md = registry.run_reproduction("budget_toy", out_dir=tmp_path, progress=False)
    finally:
        registry.REPRODUCTIONS.unregister("budget_toy")
    rows = json.loads(md.with_suffix(".json").read_text())["tables"][0]["rows"]
    assert rows["method"][meter.TEACHER] == [640.0] * 5 and rows["alone"][meter.UPDATES] == [100.0] * 5


def test_unequal_measured_budgets_refuse_the_claim_unless_it_states_the_extra_budget():
    r = run_study(_study(method_updates=150), seeds=range(5), quick=False)
    c = r.claims[0]
    assert not c.reproduced and c.verdict == "refused"
    assert "optimizer updates: method 150 vs alone 100" in c.refused and "REFUSED" in c.evidence

    stated = run_study(_study(method_updates=150, budget="extra: a hint stage of 50 updates"),
                       seeds=range(5), quick=False).claims[0]
    assert stated.reproduced and "extra: a hint stage of 50 updates" in stated.evidence

    # within a declared tolerance (a fraction of the larger): judged
    loose = run_study(_study(method_updates=105, tolerance={meter.UPDATES: 0.1}), seeds=range(5), quick=False)
    assert loose.claims[0].verdict == "reproduced"
    # a unit the study checks: teacher forward passes differ (640 vs 0)
    strict = run_study(_study(tolerance={meter.UPDATES: 0.0, meter.TEACHER: 0.0}), seeds=range(5), quick=False)
    assert strict.claims[0].verdict == "refused" and "teacher forward passes" in strict.claims[0].refused


def test_declared_budgets_that_differ_are_refused_before_anything_trains():
    ran = []
    s = _study(declared={"alone": {meter.UPDATES: 100}, "method": {meter.UPDATES: 150}})
    s.per_seed = lambda ctx: ran.append(ctx.seed)
    with pytest.raises(ValueError, match=r"declare different budgets.*budget='extra"):
        run_study(s, seeds=range(5), quick=False)
    assert ran == []
    # stated in the claim: allowed (and then checked against what is measured)
    ok = _study(method_updates=150, budget="extra: hint stage",
                declared={"alone": {meter.UPDATES: 100}, "method": {meter.UPDATES: 150}})
    assert run_study(ok, seeds=range(5), quick=False).claims[0].reproduced


def test_a_declared_budget_the_arm_does_not_spend_stops_the_run():
    s = _study(declared={"alone": {meter.UPDATES: 100}, "method": {meter.UPDATES: 100}})
    s.arms[1].run = _arm(lambda ctx: 100 if ctx.seed < 2 else 90, effect=1.0)
    with pytest.raises(ValueError, match=r"arm 'method', seed 2: declared 100 optimizer updates, measured 90"):
        run_study(s, seeds=range(5), quick=False)
    # a declaration may depend on the seed's context (e.g. a quick run's shorter budget)
    q = _study(declared={"alone": lambda ctx: {meter.UPDATES: 10 if ctx.quick else 100}})
    with pytest.raises(ValueError, match="declared 10 optimizer updates, measured 100"):
        run_study(q, seeds=range(2), quick=True)


def test_unknown_budget_units_are_refused():
    with pytest.raises(ValueError, match="runner measures"):
        run_study(_study(declared={"alone": {"gpu hours": 1}}), seeds=range(5), quick=False)
    with pytest.raises(ValueError, match="runner measures"):
        run_study(_study(tolerance={"epochs": 0}), seeds=range(5), quick=False)
    with pytest.raises(ValueError, match="tolerance for"):
        run_study(_study(declared={"alone": {WALL: 10}}), seeds=range(5), quick=False)
    assert BUDGET_UNITS == (meter.UPDATES, meter.TEACHER, WALL)


def test_nested_meters_close_in_any_state_and_both_count():
    from joryu import meter

    with meter.metering() as outer:
        with meter.metering() as inner:  # both still {updates: 0, teacher: 0}: equal, not the same
            meter.count(meter.UPDATES, 3)
        meter.count(meter.UPDATES, 2)
    assert inner[meter.UPDATES] == 3 and outer[meter.UPDATES] == 5
    with meter.metering() as a:
        with meter.metering() as b:
            pass
    assert a == b and not meter._open
