"""docs/adding-a-method.md stays runnable: its example file registers a method from a single
file (written to tmp_path and imported), which then trains for one epoch through joryu.distill."""

import importlib.util
import re
import sys
from pathlib import Path

import torch
from torch import nn

import joryu
from joryu.methods import base

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


def test_a_method_from_a_single_file_trains_through_distill(tmp_path, tiny_data):
    code = re.search(r"```python\n(# toy_floor_kd\.py\n.*?)```", GUIDE.read_text(), re.S).group(1)
    path = tmp_path / "toy_floor_kd.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("toy_floor_kd", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["toy_floor_kd"] = mod
    try:
        spec.loader.exec_module(mod)
        assert "toy_floor_kd" in base.available()
        torch.manual_seed(0)
        teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
        student = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        before = [p.clone() for p in student.parameters()]
        out, metrics = joryu.distill(teacher, student, tiny_data, method="toy_floor_kd", epochs=1,
                                     batch_size=32, label_floor=0.3, progress=False)
        assert out is student
        assert not all(torch.equal(a, b) for a, b in zip(before, student.parameters()))
        hist = metrics["distill"]["history"]
        assert len(hist) == 1 and {"train/kd", "train/ce"} <= set(hist[0])
        assert base.get_method("toy_floor_kd").params.label_floor == 0.2  # the Params default
    finally:
        base.METHODS.unregister("toy_floor_kd")
        sys.modules.pop("toy_floor_kd", None)


def test_no_planned_table_remains():
    assert not hasattr(base, "_PLANNED")
    assert all(status != "planned" for _, _, status in base.listing())
