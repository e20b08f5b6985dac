import json

import pytest
import torch
from torch import nn

import joryu
from joryu.errors import ConfigError
from joryu.models import create
from joryu.reproduce import Claim, Report, Table, mean_std, register_reproduction, run_reproduction


def test_distill_api_trains_a_student(tiny_data):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 3))
    teacher, _ = joryu.distill(None, teacher, tiny_data, method="supervised", epochs=30, lr=0.01, progress=False)
    t_before = [p.clone() for p in teacher.parameters()]
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = tiny_data.tensors["input"], tiny_data.tensors["target"]
    out, metrics = joryu.distill(teacher, student, (x, y), method="kd", temperature=2.0, epochs=30, lr=0.01,
                                 progress=False)
    assert out is student
    assert metrics["distill"]["val"]["val/acc"] > 80
    assert len(metrics["distill"]["history"]) == 30
    assert all(torch.equal(a, b) for a, b in zip(t_before, teacher.parameters()))


def test_distill_api_rejects_bad_input(tiny_data):
    with pytest.raises(ConfigError, match="temprature"):
        joryu.distill(nn.Linear(8, 3), nn.Linear(8, 3), tiny_data, temprature=3, progress=False)
    with pytest.raises(ConfigError, match="samples must be"):  # a list is taken as a map-style dataset
        joryu.distill(nn.Linear(8, 3), nn.Linear(8, 3), [1, 2, 3], progress=False)
    with pytest.raises(ConfigError, match="needs a teacher"):
        joryu.distill(None, nn.Linear(8, 3), tiny_data, method="kd", progress=False)


def test_create_by_import_path():
    m = create("torch.nn:Linear", in_features=4, out_features=2)
    assert isinstance(m, nn.Linear)
    with pytest.raises(ConfigError, match="cannot import"):
        create("no_such_pkg.mod:f")


def test_mean_std():
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and abs(s - 1.0) < 1e-12


def test_reproduction_writer(tmp_path):
    @register_reproduction("_toy", default_seeds=3, quick_seeds=1, doc="toy")
    def toy(seeds, quick, progress):
        t = Table("toy table", ["acc"])
        for s in seeds:
            t.add("baseline", "acc", 50 + s)
            t.add("method", "acc", 60 + s)
        gain = [a - b for a, b in zip(t.values("method"), t.values("baseline"))]
        return Report("Toy", "nobody 2020", "setup text", [t],
                      [Claim("method beats baseline", "gain > 5", mean_std(gain)[0] > 5, f"gain {gain}")])

    md = run_reproduction("_toy", out_dir=tmp_path, progress=False)
    text = md.read_text()
    assert "REPRODUCED" in text and "| method | 61.00 ± 1.00 | 60.00, 61.00, 62.00 |" in text
    data = json.loads(md.with_suffix(".json").read_text())
    assert data["claims"][0]["verdict"] == "reproduced" and data["meta"]["seeds"] == 3
    quick = run_reproduction("_toy", quick=True, out_dir=tmp_path, progress=False)
    assert quick.parent.name == "quick" and md.read_text() == text


def test_kd_reproduction_is_registered():
    from joryu.reproduce import available

    assert "kd" in available()


def test_kd_reproduction_quick(tmp_path):
    """The smoke version of `joryu reproduce kd` runs end to end and states a verdict per claim."""
    md = run_reproduction("kd", quick=True, out_dir=tmp_path, progress=False)
    text = md.read_text()
    assert text.count("- **") == 3 and "QUICK smoke run" in text
    data = json.loads(md.with_suffix(".json").read_text())
    assert data["meta"]["quick"] and len(data["tables"]) == 2
