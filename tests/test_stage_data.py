"""Stage.data: a stage may train on its own data (e.g. the labelled subset), chosen from the context."""

from joryu.config import TrainConfig
from joryu.experiment import run_stages
from joryu.methods import Method, Stage
from joryu.methods.supervised import SupervisedDistiller


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
    _, res = run_stages(TwoStage(None), student, None, tiny_data, None, TrainConfig(epochs=1, batch_size=5),
                        None, 0, None, progress=False)
    assert res["all"]["history"][-1]["step"] == len(tiny_data) // 5
    assert res["subset"]["history"][-1]["step"] == 2  # 10 samples / batch 5
