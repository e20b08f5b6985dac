"""run_stages: a Stage may train on its own data; the context carries the run's seed and augmentation."""

import torch
from torch import nn

from joryu.config import TrainConfig
from joryu.data import Augment
from joryu.methods import Method, Stage
from joryu.methods.supervised import SupervisedDistiller
from joryu.run.stages import run_stages


class TwoStages(Method):
    name = "two"
    needs_teacher = False

    def stages(self):
        seen = {}

        def first(ctx):
            seen["seed"], seen["augment"] = ctx.seed, ctx.augment
            return SupervisedDistiller(ctx.student)

        def count(ctx, distiller):
            seen[len(seen)] = ctx.results

        return [Stage("small", first, data=lambda ctx: ctx.train_data.subset(torch.arange(40))),
                Stage("all", lambda ctx: SupervisedDistiller(ctx.student))], seen


def test_stage_data_overrides_the_training_data(tiny_data):
    m = TwoStages(None)
    stages, seen = m.stages()
    m.stages = lambda: stages
    aug = Augment(noise=0.1)
    _, res = run_stages(m, student=nn.Linear(8, 3), teacher=None, train=tiny_data, val=None, train_cfg=TrainConfig(epochs=1, batch_size=10), run_dir=None, seed=7, augment=aug, progress=False)
    assert res["small"].history[0]["step"] == 4  # 40 samples / batch 10
    assert res["all"].history[0]["step"] == 24  # the run's 240 samples
    assert seen["seed"] == 7 and seen["augment"] is aug


def test_stage_train_overrides_may_depend_on_the_context(tiny_data):
    class M(Method):
        name = "m"

        def stages(self):
            return [Stage("s", lambda ctx: SupervisedDistiller(ctx.student),
                          train=lambda ctx: {"batch_size": ctx.train_cfg.batch_size * 2})]

    _, res = run_stages(M(None), student=nn.Linear(8, 3), teacher=None, train=tiny_data, val=None, train_cfg=TrainConfig(epochs=1, batch_size=60), run_dir=None, seed=0, augment=None, progress=False)
    assert res["s"].history[0]["step"] == 2  # 240 samples / batch 120


class TwoStage(Method):
    name = "two_stage_test"
    needs_teacher = False

    def stages(self):
        def small(ctx):
            return ctx.train_data.subset(range(10), "first-10")

        return [Stage("all", lambda ctx: SupervisedDistiller(ctx.student)),
                Stage("subset", lambda ctx: SupervisedDistiller(ctx.student), data=small)]


def test_a_stage_can_train_on_its_own_data(tiny_data):
    import torch

    student = torch.nn.Linear(8, 3)
    _, res = run_stages(TwoStage(None), student=student, teacher=None, train=tiny_data, val=None, train_cfg=TrainConfig(epochs=1, batch_size=5), run_dir=None, seed=0, augment=None, progress=False)
    assert res["all"].history[-1]["step"] == len(tiny_data) // 5
    assert res["subset"].history[-1]["step"] == 2  # 10 samples / batch 5
