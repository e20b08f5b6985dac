"""Whose error is it (joryu.errors, the one rule): an exception in the user's own code (a Dataset's
``__getitem__``, also inside DataLoader workers, a data factory, a transform, a model's forward)
is one line, exit 2, naming the callable, the sample and the original error; an exception inside
joryu keeps its traceback and exits 1, also during the check before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import joryu.methods.kd
from joryu.cli import main

TESTS = Path(__file__).resolve().parent

CFG = {
    "name": "uc",
    "data": {"name": "_user_code:shelves", "val_fraction": 0.0},
    "teacher": {"name": "mlp", "kwargs": {"hidden": [8]}, "train": {"epochs": 1, "batch_size": 64}},
    "student": {"name": "mlp", "kwargs": {"hidden": [4]}},
    "train": {"epochs": 1, "batch_size": 64},
    "baseline": False,
}


def _run(tmp_path, capsys, monkeypatch, **changes) -> tuple[int, str]:
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.delenv("JORYU_DEBUG", raising=False)
    cfg = {**CFG, **{k: v for k, v in changes.items() if k != "data"}}
    cfg["data"] = {**CFG["data"], **changes.get("data", {})}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    code = main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    return code, capsys.readouterr().err


def _one_line(code, err, *needles):
    lines = err.strip().splitlines()
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataset_that_raises_at_sample_7_is_the_users_error(workers, tmp_path, capsys, monkeypatch):
    code, err = _run(tmp_path, capsys, monkeypatch, data={"loader": {"num_workers": workers}})
    _one_line(code, err, "_user_code.Shelf.__getitem__ at sample 7 raised ValueError: the shelf has no book 7")
    assert "check before training" in err  # found before anything trained


def test_a_data_factory_that_raises_is_the_users_error(tmp_path, capsys, monkeypatch):
    code, err = _run(tmp_path, capsys, monkeypatch, data={"name": "_user_code:flooded"})
    _one_line(code, err, "_user_code.flooded raised RuntimeError: bucket 'b' is flooded")


def test_a_transform_that_raises_names_itself_and_the_sample(tmp_path, capsys, monkeypatch):
    code, err = _run(tmp_path, capsys, monkeypatch,
                     data={"name": "_user_code:shelves", "kwargs": {"bad": -1},
                           "transform": ["_user_code:picky"]})
    _one_line(code, err, "_user_code.picky at sample 7 raised KeyError: seven")


def test_a_model_forward_that_raises_is_the_users_error(tmp_path, capsys, monkeypatch):
    code, err = _run(tmp_path, capsys, monkeypatch, data={"kwargs": {"bad": -1}},
                     student={"name": "_user_code:Stubborn"})
    _one_line(code, err, "_user_code.Stubborn.forward raised ArithmeticError: no training today",
              "check before training")


def test_a_bug_in_a_joryu_loss_during_the_check_exits_1_with_its_traceback(tmp_path, capsys, monkeypatch):
    # a bug written into joryu's own loss file: the replacement's code lives in joryu/losses/kd.py
    ns = {}
    exec(compile("def kd_loss(*args, **kwargs):\n    return {}['no such key']\n",
                 str(Path(joryu.losses.kd.__file__)), "exec"), ns)
    monkeypatch.setattr(joryu.methods.kd, "kd_loss", ns["kd_loss"])
    code, err = _run(tmp_path, capsys, monkeypatch, data={"kwargs": {"bad": -1}})
    assert code == 1, err[-3000:]
    assert "Traceback" in err and "KeyError" in err and "internal error" in err
    assert "check before training" not in err  # the bug itself, not a one-line "check failed"
    assert not (tmp_path / "run").exists()  # the check failed before the run folder was made
