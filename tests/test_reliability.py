"""Run folders, resume checks, the dry run, safe checkpoints, the command line and the API contract."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from joryu.cli import command_parser, main
from joryu.config import build_config
from joryu.errors import ConfigError, RunDirError

TINY = {
    "name": "t",
    "data": {"name": "mnist1d", "kwargs": {"num_samples": 300}},
    "teacher": {"name": "cnn1d", "kwargs": {"width": 4}, "train": {"epochs": 1}},
    "student": {"name": "mlp", "kwargs": {"hidden": [8]}},
    "train": {"epochs": 1, "batch_size": 64},
    "baseline": False,
}


def cfg_file(tmp_path, **changes):
    raw = {**TINY, "output_dir": str(tmp_path / "runs"), **changes}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def cli(capsys, *argv):
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_with_out_replaces_the_run_only_after_its_checks(tmp_path, capsys):
    cfg, run = cfg_file(tmp_path), tmp_path / "run"
    code, _, err = cli(capsys, "run", cfg, "--out", str(run), "--quiet")
    assert code == 0, err
    first = snapshot(run)
    code, _, err = cli(capsys, "run", cfg, "--out", str(run), "--quiet")  # refused: it holds a run
    assert code == 2 and "--overwrite" in err and snapshot(run) == first
    code, _, err = cli(capsys, "run", cfg, "--out", str(run), "--overwrite", "--quiet",
                       "student.kwargs.hiden=[4]")  # fails its checks: the old run stays
    assert code == 2 and snapshot(run) == first
    code, _, err = cli(capsys, "run", cfg, "--out", str(run), "--overwrite", "--quiet", "seed=3")
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 3
    assert (run / "student.safetensors").read_bytes() != first["student.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "run"]  # nothing left aside


def test_a_run_that_fails_its_checks_leaves_no_folder(tmp_path, capsys):
    code, _, _ = cli(capsys, "run", cfg_file(tmp_path), "--quiet", "method.name=svd_kd")
    assert code == 2
    assert not (tmp_path / "runs").exists()
    code, _, err = cli(capsys, "run", cfg_file(tmp_path), "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["t"]


def test_resume_of_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    cfg, run = cfg_file(tmp_path), tmp_path / "run"
    assert cli(capsys, "run", cfg, "--out", str(run), "--quiet")[0] == 0
    before = snapshot(run)
    code, out, err = cli(capsys, "run", cfg, "--out", str(run), "--resume", "--quiet")
    assert code == 0
    assert "finished run; nothing to resume" in err and len(err.strip().splitlines()) == 1
    assert snapshot(run) == before


def test_resume_accepts_result_neutral_and_default_valued_differences(tmp_path):
    from joryu.run.rundir import plan_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**TINY, "output_dir": "elsewhere"}))
    same = build_config({**TINY, "train": {**TINY["train"], "log_every": 7, "checkpoint_every": 3},
                         "method": {"name": "kd", "params": {"temperature": 4.0}}})
    plan = plan_run_dir(same, run, resume=True)
    assert plan.mode == "resume" and not plan.finished
    with pytest.raises(RunDirError, match=r"train\.lr"):
        plan_run_dir(build_config({**TINY, "train": {**TINY["train"], "lr": 0.5}}), run, resume=True)


def test_overrides_are_accepted_after_flags():
    args = command_parser("run").parse_intermixed_args(
        ["c.yaml", "--quiet", "train.epochs=1", "--out", "x", "seed=2"])
    assert args.config == "c.yaml" and args.quiet and args.out == "x"
    assert args.overrides == ["train.epochs=1", "seed=2"]


def test_version_help_and_bench_program_name(capsys):
    from joryu import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"joryu {__version__}"
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert capsys.readouterr().out.startswith("usage: joryu bench")


def test_config_show_prints_the_resolved_config(tmp_path, capsys):
    code, out, _ = cli(capsys, "config", "show", cfg_file(tmp_path), "train.epochs=3")
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["train"]["epochs"] == 3 and shown["train"]["optimizer"] == "adam"  # a default filled in
    assert build_config(shown) == build_config({**TINY, "output_dir": str(tmp_path / "runs"),
                                                "train": {**TINY["train"], "epochs": 3}})


def test_methods_and_models_list_their_options(capsys):
    code, out, _ = cli(capsys, "methods", "kd")
    assert code == 0 and "temperature" in out and "float" in out and "4.0" in out and "softmax temperature" in out
    code, out2, _ = cli(capsys, "config", "schema", "kd")
    assert code == 0 and out2 == out
    code, out, _ = cli(capsys, "models", "mlp")
    assert code == 0 and "hidden" in out and "(256, 256)" in out and "activation" in out


def test_every_zoo_model_rejects_an_unknown_option():
    from joryu.models import available, create

    for name in available():
        with pytest.raises(ConfigError, match="widht"):
            create(name, widht=3)


def test_a_bug_exits_1_with_its_traceback(capsys, monkeypatch):
    import joryu.commands.datasets

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(joryu.commands.datasets, "run", broken)
    code, _, err = cli(capsys, "datasets")
    assert code == 1 and "Traceback" in err and "ZeroDivisionError" in err and "internal error" in err


def test_teacher_is_optional_and_an_ignored_section_warns(capsys):
    from joryu.run.experiment import Experiment

    no_teacher = {k: v for k, v in TINY.items() if k != "teacher"}
    Experiment(build_config({**no_teacher, "method": {"name": "dml"}}), write=False)
    assert capsys.readouterr().err == ""
    Experiment(build_config({**TINY, "method": {"name": "dml"}}), write=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["joryu: warning: the teacher section is ignored: method 'dml' trains without a teacher"]
    Experiment(build_config({**no_teacher, "method": {"name": "supervised"}, "baseline": True}), write=False)
    assert "baseline is ignored" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="add a teacher section"):
        Experiment(build_config({**no_teacher, "method": {"name": "kd"}}), write=False)


def test_supervised_run_without_a_teacher(tmp_path, capsys):
    no_teacher = {k: v for k, v in TINY.items() if k != "teacher"}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**no_teacher, "method": {"name": "supervised"}}))
    code, out, err = cli(capsys, "run", str(p), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    assert "student + supervised" in out and "teacher" not in json.loads(
        (tmp_path / "run" / "results.json").read_text())["rows"]


def test_distill_leaves_the_callers_teacher_as_it_was(tiny_data):
    import joryu

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 3))
    teacher.train()
    teacher[3].weight.requires_grad_(False)  # a caller's own choice, kept as it was
    weights = [p.detach().clone() for p in teacher.parameters()]
    flags = [p.requires_grad for p in teacher.parameters()]
    joryu.distill(teacher, nn.Linear(8, 3), tiny_data, epochs=1, progress=False)
    assert all(m.training for m in teacher.modules())
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert all(torch.equal(a, b) for a, b in zip(weights, teacher.parameters()))
    with pytest.raises(ConfigError):
        joryu.distill(teacher, nn.Linear(7, 3), tiny_data, epochs=1, progress=False)
    assert all(m.training for m in teacher.modules()) and [p.requires_grad for p in teacher.parameters()] == flags


@pytest.mark.parametrize("method", ["kd", "fitnets", "dml", "born_again", "data_distillation", "one",
                                    "knowledge_concentration"])
def test_the_dry_run_changes_nothing(method):
    from joryu.config import TrainConfig
    from joryu.data import load, split_validation
    from joryu.methods import get_method
    from joryu.models import create
    from joryu.run.stages import run_stages
    from joryu.teachers import FrozenTeacher

    bundle = load("mnist1d", num_samples=300)
    train, _ = split_validation(bundle.train, 0.1, 0)
    torch.manual_seed(0)
    student = create("cnn1d", width=4, num_classes=10, input_shape=(1, 40))
    teacher_net = create("cnn1d", width=4, num_classes=10, input_shape=(1, 40))
    m = get_method(method)
    teacher = FrozenTeacher(teacher_net) if m.needs_teacher or method == "knowledge_concentration" else None
    state = {k: v.clone() for k, v in {**student.state_dict(), **{f"t.{k}": v for k, v in
                                                                   teacher_net.state_dict().items()}}.items()}
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    _, checked = run_stages(m, student=student, teacher=teacher, train=train,
                            train_cfg=TrainConfig(epochs=1, batch_size=32), augment=bundle.augment,
                            num_classes=10, dry=True)
    assert checked
    now = {**student.state_dict(), **{f"t.{k}": v for k, v in teacher_net.state_dict().items()}}
    assert all(torch.equal(state[k], now[k]) for k in state)
    assert all(p.grad is None for p in student.parameters())
    assert torch.equal(rng[0], torch.get_rng_state())
    assert np.array_equal(rng[1], np.random.get_state()[1]) and rng[2] == random.getstate()


def test_checkpoint_files_load_with_weights_only_and_restore_every_rng(tiny_data, tmp_path):
    from joryu.config import TrainConfig
    from joryu.engine import Engine, latest_checkpoint
    from joryu.engine.checkpoint import rng_state, set_rng_state
    from joryu.methods.supervised import SupervisedDistiller

    Engine(TrainConfig(epochs=1, batch_size=64), tmp_path, progress=False).fit(
        SupervisedDistiller(nn.Linear(8, 3)), tiny_data)
    last = latest_checkpoint(tmp_path / "checkpoints")
    opt = torch.load(last / "optim.pt", weights_only=True)
    assert opt["optimizers"] and opt["schedulers"]
    saved = torch.load(last / "rng-0.pt", weights_only=True)
    set_rng_state(saved)
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(saved)
    assert torch.equal(a[0], torch.rand(3)) and np.array_equal(a[1], np.random.rand(3)) and a[2] == random.random()
    np.random.randn()  # a cached gaussian is part of numpy's state
    s = rng_state()
    x = np.random.randn(2)
    set_rng_state(s)
    assert np.array_equal(x, np.random.randn(2))


def test_an_atomic_write_that_fails_keeps_the_old_file(tmp_path, monkeypatch):
    import joryu.atomic as rundir

    p = tmp_path / "report.md"
    rundir.atomic_write_text(p, "old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir, "replace", fail)
    with pytest.raises(OSError):
        rundir.atomic_write_text(p, "new")
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["report.md"]


class _BadImages(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        from joryu.errors import DataError

        raise DataError("Image /data/bee/9.png is 9x7 but /data/ant/0.png is 5x4: mixed sizes")


def test_a_data_error_raised_in_a_loader_worker_stays_one_line():
    from joryu.cli import _one_line
    from joryu.errors import DataError

    with pytest.raises(DataError) as e:
        next(iter(torch.utils.data.DataLoader(_BadImages(), num_workers=1)))
    assert "Original Traceback" in str(e.value)  # what the DataLoader makes of it
    assert _one_line(e.value) == "Image /data/bee/9.png is 9x7 but /data/ant/0.png is 5x4: mixed sizes"


def test_a_command_from_another_module_plugs_in(capsys, monkeypatch):
    import joryu.commands

    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    monkeypatch.setitem(joryu.commands.COMMANDS, "hello", "_malformed_models")
    code, out, _ = cli(capsys, "hello", "--times", "2")
    assert code == 0 and out.strip() == "hello hello"
    code, _, err = cli(capsys, "hello", "--times", "x")
    assert code == 2 and err.strip().splitlines() == [
        "joryu: error: argument --times: invalid int value: 'x' (see joryu hello --help)"]
