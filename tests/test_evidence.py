"""Did it help? Paired seeds on any run (joryu run --seeds, joryu.distill(seeds=)), joryu compare,
and the warnings a run gives about what it cannot show."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import joryu
from joryu.cli import main
from joryu.data import TensorData
from joryu.errors import ConfigError
from joryu.run.evidence import still_rising, warnings_for


def _noisy_task(seed: int = 0, n: int = 240, dim: int = 12, classes: int = 4, flip: float = 0.45):
    """A linear teacher that knows the truth; training labels with ``flip`` of them replaced by
    random classes; a clean validation split. A student trained on the labels alone memorises the
    noise; one distilled from the clean teacher does not."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, dim, generator=g)
    teacher = nn.Linear(dim, classes, bias=False)
    with torch.no_grad():
        teacher.weight.copy_(3 * w)

    def split(m):
        x = torch.randn(m, dim, generator=g)
        return x, (x @ w.T).argmax(1)

    x, y = split(n)
    noisy = y.clone()
    hit = torch.rand(n, generator=g) < flip
    noisy[hit] = torch.randint(0, classes, (int(hit.sum()),), generator=g)
    xv, yv = split(400)
    return teacher, TensorData({"input": x, "target": noisy}, classes, "noisy"), \
        TensorData({"input": xv, "target": yv}, classes, "clean-val")


def _student(dim=12, classes=4):
    return nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, classes))


def test_a_method_that_truly_helps_is_helped():
    teacher, train, val = _noisy_task()
    torch.manual_seed(0)
    _, metrics = joryu.distill(teacher, _student(), train, "kd", val_data=val, seeds=5, epochs=40,
                               batch_size=32, lr=3e-3, alpha=1.0, temperature=2.0, progress=False)
    ev = metrics["evidence"]
    assert ev["val"]["n"] == 5 and len(ev["val"]["method"]) == 5
    assert ev["verdict"] == "helped", ev["val"]
    assert ev["val"]["interval"][0] > 0


def test_identical_arms_are_no_evidence():
    """'supervised' against the student alone: the same objective, init and data order, so every
    paired difference is exactly zero."""
    _, train, val = _noisy_task(1)
    torch.manual_seed(0)
    _, metrics = joryu.distill(None, _student(), train, "supervised", val_data=val, seeds=5, epochs=2,
                               progress=False)
    ev = metrics["evidence"]
    assert ev["val"]["differences"] == [0.0] * 5
    assert ev["verdict"] == "no evidence either way"


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_seeds_must_be_a_whole_number(bad):
    teacher, train, val = _noisy_task(2)
    with pytest.raises(ConfigError, match="seeds must be a whole number >= 1"):
        joryu.distill(teacher, _student(), train, "kd", val_data=val, seeds=bad, epochs=1, progress=False)


def test_still_rising():
    assert still_rising([10, 20, 30])
    assert not still_rising([10, 30, 29])  # the last epoch is not the best
    assert not still_rising([30.0, 30.2, 30.4])  # flat within 0.5 points
    assert not still_rising([10, 20])  # too short to read a curve


def test_warnings_say_what_a_run_cannot_show():
    one = warnings_for(1, None, 90.0, 80.0, [50, 60, 70], "the student alone")
    assert any("One seed cannot separate" in w for w in one)
    assert any("has not converged" in w for w in one)
    assert not any("teacher" in w for w in one)
    worse = warnings_for(5, None, 70.0, 80.0, [80, 80, 80])
    assert worse == ["The teacher (70.00% on validation) is not better than the student alone (80.00%): "
                     "distillation cannot be expected to help here."]
    few = warnings_for(3, {"seeds_needed": 9}, None, None, [])
    assert few and "about 9 paired seeds" in few[0]


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_with_seeds_writes_the_evidence_and_the_untrained_teacher_warning(tmp_path, capsys):
    out = tmp_path / "run"
    code, text, err = _cli(capsys, "run", "configs/kd_digits.yaml", "train.epochs=2", "teacher.train.epochs=0",
                           "--seeds", "2", "--out", str(out), "--quiet")
    assert code == 0, err
    ev = json.loads((out / "results.json").read_text())["evidence"]
    assert ev["seeds"] == [0, 1] and ev["baseline"] == "student alone"
    assert len(ev["val"]["method"]) == 2 and len(ev["test"]["baseline"]) == 2
    assert ev["val"]["verdict"] == "no evidence either way"  # 2 seeds can never pass
    assert any("not better than student alone" in w for w in ev["warnings"])  # a random teacher
    assert (out / "seeds" / "seed-1" / "kd" / "done.json").is_file()
    report = (out / "report.md").read_text()
    assert "## Did it help?" in report and "2 seeds are too few" in report
    assert "did it help?" in text


def test_one_seed_says_it_cannot_tell(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "run", "configs/kd_digits.yaml", "train.epochs=1", "teacher.train.epochs=1",
                        "--out", str(out), "--quiet")
    assert code == 0, err
    ev = json.loads((out / "results.json").read_text())["evidence"]
    assert any("One seed cannot separate" in w for w in ev["warnings"])


def test_seeds_resume_by_seed_and_arm(tmp_path, capsys, monkeypatch):
    """Killed in the second seed, a resumed run keeps the first seed's arms and finishes the rest."""
    import joryu.run.experiment as ex

    out = tmp_path / "run"
    args = ["run", "configs/kd_digits.yaml", "train.epochs=1", "teacher.train.epochs=1", "--seeds", "2",
            "--out", str(out), "--quiet"]
    real = ex.run_stages

    def killed(method, **kw):
        rd = kw.get("run_dir")
        if rd is not None and "seed-1" in str(rd) and not kw.get("dry"):
            raise KeyboardInterrupt
        return real(method, **kw)

    monkeypatch.setattr(ex, "run_stages", killed)
    code, _, _ = _cli(capsys, *args)
    assert code == 130 and not (out / "results.json").exists()
    first = (out / "kd" / "done.json").stat().st_mtime_ns
    monkeypatch.setattr(ex, "run_stages", real)
    code, _, err = _cli(capsys, *args, "--resume")
    assert code == 0, err
    assert (out / "kd" / "done.json").stat().st_mtime_ns == first  # seed 0 was not trained again
    assert json.loads((out / "results.json").read_text())["evidence"]["seeds"] == [0, 1]


def test_compare_ranks_lists_refusals_and_tests_only_the_selected(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, text, err = _cli(capsys, "compare", "configs/kd_digits.yaml", "--methods", "kd,one,dml", "--seeds", "2",
                           "train.epochs=1", "teacher.train.epochs=1", "--out", str(out), "--quiet")
    assert code == 0, err
    c = json.loads((out / "compare.json").read_text())
    assert set(c["val"]) == {"kd", "dml"} and "one" in c["refused"]
    assert "trunk_end" in c["refused"]["one"]  # the one-line reason, not a crash
    assert c["selected"] == c["ranking"][0]
    assert c["test"]["n"] == 2  # the test split is read for the selected method only
    assert c["costs"]["student alone"]["batches"] > 0
    assert (out / "compare.md").is_file()
    assert "not run: one" in text


def test_compare_unknown_method_is_one_line(capsys):
    code, _, err = _cli(capsys, "compare", "configs/kd_digits.yaml", "--methods", "kd,kdd")
    assert code == 2 and "unknown method 'kdd'" in err and len(err.strip().splitlines()) == 1


def test_majority_baseline_reads_the_training_labels():
    from joryu.run.evidence import majority_baseline

    train = TensorData({"input": torch.zeros(6, 2), "target": torch.tensor([1, 1, 1, 0, 2, -100])}, 3, "t")
    test = TensorData({"input": torch.zeros(4, 2), "target": torch.tensor([1, 0, 1, 2])}, 3, "t")
    b = majority_baseline(train, test)
    assert b["class"] == 1 and b["test_acc"] == pytest.approx(50.0)
    tokens = TensorData({"input": torch.zeros(2, 3), "target": torch.tensor([[2, 2, -100], [0, 2, 2]])}, 3, "t")
    assert majority_baseline(tokens, tokens)["test_acc"] == pytest.approx(80.0)  # 4 of the 5 labelled


def test_a_row_below_the_trivial_baseline_is_pointed_out(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "run", "configs/kd_digits.yaml", "train.epochs=0", "teacher.train.epochs=0",
                        "--out", str(out), "--quiet")
    assert code == 0, err
    ev = json.loads((out / "results.json").read_text())["evidence"]
    assert ev["trivial"]["class"] in range(10)
    # untrained networks: at chance, which need not beat the majority class; if one does not, it is said
    rows = json.loads((out / "results.json").read_text())["rows"]
    below = [k for k, r in rows.items() if k != "teacher" and r["test_acc"] <= ev["trivial"]["test_acc"]]
    assert bool(below) == any("trivial baseline" in w for w in ev["warnings"])
