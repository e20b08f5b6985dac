import copy

import pytest
import torch
from torch import nn

from joryu.config import TrainConfig
from joryu.data import TensorData, load
from joryu.errors import ConfigError
from joryu.losses import feature_l2_loss
from joryu.methods import get_method
from joryu.methods.cross_modal import SupervisionTransferDistiller, few_labels, make_adapter
from joryu.run.stages import run_stages
from joryu.teachers import FrozenTeacher


class SmallCNN(nn.Module):
    """A plain custom module: conv-conv-pool-conv-pool ("pool5"), then FC."""

    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(2 * width * 4, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.pool1(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        x = self.pool2(torch.relu(self.conv3(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _paired(n=48, same=False):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, 1, 8, 8, generator=g)
    b = a.clone() if same else torch.randn(n, 1, 8, 8, generator=g)
    return TensorData({"input": a, "input_b": b, "target": torch.arange(n) % 4}, 4, "paired")


def test_feature_l2_loss():
    a, b = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2, requires_grad=True)
    assert torch.allclose(feature_l2_loss(a, b), ((a - b) ** 2).sum() / 3)
    t = torch.randn(3, 4, 2, 2, requires_grad=True)
    feature_l2_loss(b, t).backward()
    assert t.grad is None


def test_loss_is_zero_for_the_teacher_itself_on_identical_inputs_and_the_teacher_gets_no_gradient():
    torch.manual_seed(0)
    teacher = SmallCNN(4)
    student = copy.deepcopy(teacher)
    data = _paired(same=True)
    x = data.tensors["input"]
    d = SupervisionTransferDistiller(student, FrozenTeacher(teacher, features={"f": "pool2"}), "pool2", x[:2], x[:2],
                                     "identity")
    loss = d.training_step({"input": x, "input_b": x})["loss"]
    assert float(loss) < 1e-10
    shuffled = d.training_step({"input": x, "input_b": x[torch.randperm(len(x))]})["loss"]
    assert float(shuffled) > 1e-3  # a mis-paired loader shows up in the loss
    shuffled.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in student.fc1.parameters())  # nothing after i* is touched
    assert student.conv1.weight.grad is not None


def test_adapters():
    assert isinstance(make_adapter("identity", (8, 2, 2), (8, 2, 2)), nn.Identity)
    assert make_adapter("1x1", (4, 2, 2), (8, 2, 2))(torch.randn(1, 4, 2, 2)).shape == (1, 8, 2, 2)
    assert make_adapter("linear", (5,), (7,))(torch.randn(1, 5)).shape == (1, 7)
    with pytest.raises(ConfigError, match="differ"):
        make_adapter("identity", (4, 2, 2), (8, 2, 2))


def test_few_labels_picks_per_class_or_the_mask():
    data = _paired(n=40)
    sub = few_labels(data, 3, seed=1)
    assert len(sub) == 12 and all(int((sub.targets == c).sum()) == 3 for c in range(4))
    assert torch.equal(few_labels(data, 3, seed=1).tensors["input"], sub.tensors["input"])
    mask = torch.zeros(40, dtype=torch.long)
    mask[:5] = 1
    assert len(few_labels(data.with_tensors(labeled=mask), 3)) == 5
    assert len(few_labels(data, None)) == 40


def test_cross_modal_end_to_end_with_different_label_spaces():
    data = _paired(n=64)
    torch.manual_seed(0)
    teacher = SmallCNN(num_classes=3)  # a different label space than the student's
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = SmallCNN(num_classes=4, width=4)
    m = get_method("cross_modal", {"teacher_layer": "pool2", "student_layer": "pool2", "adapter": "1x1",
                                   "transfer_epochs": 3, "finetune_labels_per_class": 2, "finetune_epochs": 2})
    net, res = run_stages(m, student=student, teacher=FrozenTeacher(teacher), train=data, val=None, train_cfg=TrainConfig(epochs=1, batch_size=16,
                                                                                     lr=0.01), run_dir=None, seed=0, augment=None, progress=False)
    assert set(res) == {"transfer", "finetune"}
    h = res["transfer"].history
    assert h[-1]["train/transfer"] < h[0]["train/transfer"]
    assert res["transfer"].distiller.adapter is None
    assert set(net.state_dict()) == set(SmallCNN(4, 4).state_dict())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_state.items())


def test_digits_edges_dataset_has_paired_modalities():
    b = load("digits_edges")
    assert set(b.train.tensors) == {"input", "input_b", "target"}
    assert b.train.tensors["input_b"].shape == b.train.tensors["input"].shape
    assert not torch.allclose(b.train.tensors["input_b"], b.train.tensors["input"])


def test_cross_modal_on_zoo_lenets_with_default_layers():
    from joryu.models import create

    data = load("digits_edges").train.subset(range(64))
    teacher = create("lenet5", input_shape=(1, 8, 8), num_classes=10)
    student = create("lenet5", input_shape=(1, 8, 8), num_classes=10)
    m = get_method("cross_modal", {"transfer_epochs": 1, "finetune_labels_per_class": 1, "finetune_epochs": 1})
    net, res = run_stages(m, student=student, teacher=FrozenTeacher(teacher), train=data, val=None, train_cfg=TrainConfig(epochs=1, batch_size=32), run_dir=None, seed=0, augment=None, progress=False)
    assert net is student and len(res["finetune"].history) == 1


def test_student_alone_baseline_trains_and_tests_on_the_students_modality(monkeypatch):
    # with baseline: true the "student alone" trained on `input` and was tested on `input_b`
    import joryu.methods.supervised as sup
    from joryu.config import build_config
    from joryu.run.experiment import Experiment

    read = []
    real_step = sup.SupervisedDistiller.training_step

    def spy(self, batch):
        read.append(self.input_key)
        return real_step(self, batch)

    monkeypatch.setattr(sup.SupervisedDistiller, "training_step", spy)
    cfg = build_config({
        "name": "cm", "data": {"name": "digits_edges", "val_fraction": 0.0},
        "teacher": {"name": "lenet5", "input_key": "input", "train": {"epochs": 1, "batch_size": 256}},
        "student": {"name": "lenet5", "input_key": "input_b"},
        "method": {"name": "cross_modal", "params": {"teacher_layer": "layer2", "student_layer": "layer2",
                                                     "transfer_epochs": 1, "finetune_epochs": 2,
                                                     "finetune_labels_per_class": 3}},
        "train": {"epochs": 1, "batch_size": 256, "device": "cpu"}, "baseline": True})
    exp = Experiment(cfg, write=False, progress=False)
    (base,) = exp.method.baselines()
    assert base.input_key == "input_b"
    summary = exp.run()
    assert "student alone" in summary["rows"]
    # the baseline (30 labelled rows, batch 256: 1 step per epoch, 2 epochs) and the fine-tuning stage
    # (the same) read the student's input_b; only the teacher's training reads input
    # plus the one-batch checks before training (the dry mode of joryu.run.stages) of the baseline and the fine-tuning
    assert read.count("input_b") == 4 + 2
    assert summary["rows"]["student alone"]["params"] == summary["rows"]["student + cross_modal"]["params"]
