"""teacher.device / teacher.dtype: the teacher's own device and precision, outputs back in float32."""

import copy

import pytest
import torch
from torch import nn

import joryu
from joryu.config import ExperimentConfig
from joryu.data import TensorLoader
from joryu.errors import ConfigError
from joryu.teachers import FastTeacher, FrozenTeacher, prepare


def mlp(seed, width=32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 3))


def test_a_bfloat16_teacher_gives_float32_outputs_close_to_the_float32_teachers(tiny_data):
    model = mlp(0)
    batch = TensorLoader(tiny_data, 64, shuffle=False).batch(torch.arange(64))
    ref = FrozenTeacher(copy.deepcopy(model))(batch).logits
    t = FrozenTeacher(copy.deepcopy(model), dtype="bfloat16", device="cpu")
    got = t(batch).logits
    assert next(t.model.parameters()).dtype == torch.bfloat16
    assert got.dtype == torch.float32 and got.device == batch["input"].device
    assert not torch.equal(got, ref)  # it really ran in 16 bits
    assert torch.allclose(got, ref, atol=0.05 * float(ref.abs().max()))
    # under the training step's bf16 autocast the float32 teacher is not recast, nor is this one
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert FrozenTeacher(copy.deepcopy(model), dtype="float32")(batch).logits.dtype == torch.float32


def test_a_placed_teacher_is_not_folded_and_keeps_its_device_when_the_engine_moves_it(tiny_data):
    t = prepare(mlp(0), num_samples=None, device="cpu", dtype="bfloat16")
    assert type(t) is FrozenTeacher and t.placed
    t.to("meta")  # the engine's move to the training device: a pinned teacher stays where it is
    assert next(t.model.parameters()).device.type == "cpu"
    assert type(prepare(mlp(0), num_samples=None)) is FastTeacher  # unplaced: folded as before


def test_distill_with_a_bfloat16_teacher_on_the_cpu_trains_and_leaves_the_callers_teacher_alone(tiny_data):
    teacher, _ = joryu.distill(None, mlp(0), tiny_data, method="supervised", epochs=5, lr=1e-2,
                               batch_size=32, progress=False)
    student = mlp(1, width=8)
    _, m = joryu.distill(teacher, student, tiny_data, method="kd", teacher_device="cpu",
                         teacher_dtype="bfloat16", epochs=4, lr=1e-2, batch_size=32, progress=False)
    losses = [h["train/loss"] for h in m["distill"]["history"]]
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in teacher.parameters())


def test_wrong_teacher_device_or_dtype_is_one_config_error(tiny_data):
    with pytest.raises(ConfigError, match="teacher dtype 'int8'"):
        FrozenTeacher(mlp(0), dtype="int8")
    with pytest.raises(ConfigError, match="not visible here"):
        FrozenTeacher(mlp(0), device="cuda:7")
    with pytest.raises(ConfigError, match="not a device"):
        joryu.distill(mlp(0), mlp(1), tiny_data, teacher_device="gpu-please", epochs=1, progress=False)


def test_the_teacher_section_holds_device_and_dtype():
    cfg = ExperimentConfig.model_validate({"student": {"name": "mlp"},
                                           "teacher": {"name": "mlp", "device": "cpu", "dtype": "bfloat16"}})
    assert cfg.teacher.device == "cpu" and cfg.teacher.dtype == "bfloat16"
    assert ExperimentConfig.model_validate({"student": {"name": "mlp"},
                                            "teacher": {"name": "mlp"}}).teacher.dtype == "float32"


def test_a_config_run_with_a_bfloat16_teacher_on_the_cpu(tmp_path, capsys):
    from pathlib import Path

    from joryu.cli import main

    cfg = Path(__file__).resolve().parents[1] / "configs" / "kd_digits.yaml"
    out = tmp_path / "run"
    code = main(["run", str(cfg), "train.epochs=1", "teacher.train.epochs=1", "baseline=false",
                 "teacher.dtype=bfloat16", "teacher.device=cpu", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (out / "report.md").is_file()
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float32 for t in load_file(out / "teacher.safetensors").values()
               if t.is_floating_point())
