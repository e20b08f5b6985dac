"""The one stage loop: the check before training is the dry mode of the loop that trains.

Every registered method runs its example config's check before training (``Experiment.check``:
data, networks, and every stage of teacher, student alone and method through
``run_stages(..., dry=True)``) and then one short real run of its stages through the same
``run_stages`` on a slice of the same data. A method whose stages read something the dry mode does
not provide (svd_kd read ``ctx.engine.cfg`` from a stand-in context that had no engine) fails
here, in the default suite.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _examples import EXAMPLE  # noqa: E402  (a sibling test module)
from torch import nn

from joryu.config import TrainConfig, load_config
from joryu.errors import ConfigError
from joryu.methods import Method, Stage, StageResult, available, get_method
from joryu.methods.supervised import SupervisedDistiller
from joryu.models.build import build_model
from joryu.run.experiment import Experiment
from joryu.run.stages import run_stages, stage_config
from joryu.teachers import FrozenTeacher

SHORT = {  # a budget short enough that a stage's hand-over still has something to hand over
    "posterior_distillation": ["method.params.burn_in=2", "method.params.thin=1",
                               "method.params.sample_epochs=3", "method.params.gan_epochs=1"],
    "gkd": ["data.kwargs.num_samples=200", "data.kwargs.test_samples=32", "method.params.max_new_tokens=8"],
}


def test_every_registered_method_has_an_example_here():
    assert sorted(EXAMPLE) == available()


@pytest.mark.parametrize("method", sorted(EXAMPLE))
def test_check_before_training_then_one_real_run_through_the_same_loop(method, tmp_path):
    overrides = ["train.epochs=1", "train.batch_size=32"]
    if method == "supervised":
        overrides += ["method.name=supervised", "method.params={}"]
    overrides += SHORT.get(method, [])
    cfg = load_config(f"configs/{EXAMPLE[method]}", overrides)
    exp = Experiment(cfg, progress=False, write=False)
    prepared = exp.check()  # the check before training: raises on any stage that cannot run
    train = prepared.train
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:600]
    small = train.subset(pick, train.name) if hasattr(train, "subset") else train
    torch.manual_seed(0)
    student = build_model(cfg.student, prepared.bundle.num_classes, prepared.bundle.input_shape)
    teacher = (FrozenTeacher(prepared.teacher_model, cfg.teacher.input_key)
               if prepared.teacher_model is not None else None)
    fast = prepared.train_cfg.model_copy(update={"epochs": 1, "batch_size": 32})
    net, results = run_stages(exp.method, student=student, teacher=teacher, train=small, train_cfg=fast,
                              seed=0, augment=prepared.augment, progress=False,
                              num_classes=prepared.bundle.num_classes)
    assert isinstance(net, nn.Module) and results
    assert all(isinstance(r, StageResult) for r in results.values())
    assert all(r.skipped or r.distiller is not None for r in results.values())


def test_the_check_copies_no_network():
    """The dry mode restores what it touched instead of deep-copying: a teacher that cannot be
    copied still gets checked, and the student's weights and buffers come back exactly."""

    class NoCopy(nn.Sequential):
        def __deepcopy__(self, memo):
            raise AssertionError("the check before training deep-copied a network")

    data = {"input": torch.randn(64, 8), "target": torch.randint(0, 3, (64,))}
    from joryu.data import TensorData

    data = TensorData(data, 3, "toy")
    teacher = NoCopy(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))
    student = NoCopy(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    kd = get_method("kd", {"fast_teacher": False, "teacher_cache": False})  # no copy of the method's own
    _, checked = run_stages(kd, student=student, teacher=FrozenTeacher(teacher), train=data,
                            train_cfg=TrainConfig(epochs=1, batch_size=16), dry=True)
    assert checked == ["kd"]
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in student.parameters())
    assert student.training


class _Overriding(Method):
    needs_teacher = False

    def __init__(self, train):
        self.params, self._train = None, train

    def stages(self):
        return [Stage("warmup", lambda ctx: SupervisedDistiller(ctx.student), train=self._train)]


@pytest.mark.parametrize("override, words", [({"epoch": 3}, "stage toy train.epoch: unknown key"),
                                             ({"lr": "abc"}, "stage toy train.lr"),
                                             ({"lr": -1.0}, "stage toy train.lr")])
def test_a_stage_override_is_validated_and_names_the_stage(override, words):
    from joryu.data import TensorData

    data = TensorData({"input": torch.randn(32, 4), "target": torch.randint(0, 2, (32,))}, 2, "toy")
    with pytest.raises(ConfigError) as e:
        run_stages(_Overriding(override), student=nn.Linear(4, 2), train=data, train_cfg=TrainConfig(),
                   label="toy", dry=True)
    assert words in str(e.value)


def test_a_valid_stage_override_is_merged():
    cfg = stage_config(TrainConfig(epochs=5, lr=0.1), {"epochs": 2}, "stage s train")
    assert (cfg.epochs, cfg.lr) == (2, 0.1)
    assert stage_config(TrainConfig(), {}, "x") == TrainConfig()
    assert copy.deepcopy(cfg) == cfg
