import pytest
import torch
from torch import nn

from joryu.config import TrainConfig
from joryu.data import TensorData
from joryu.errors import ConfigError
from joryu.losses import fsp_loss, fsp_matrix
from joryu.methods import get_method
from joryu.models import create
from joryu.run.stages import run_stages
from joryu.teachers import FrozenTeacher


def test_fsp_matrix_shape_and_einsum():
    a, b = torch.randn(3, 4, 5, 6), torch.randn(3, 7, 5, 6)
    g = fsp_matrix(a, b)
    assert g.shape == (3, 4, 7)
    assert torch.allclose(g, torch.einsum("bihw,bjhw->bij", a, b) / (5 * 6), atol=1e-6)


def test_fsp_matrix_transpose_symmetry_and_channel_permutation():
    a, b = torch.randn(2, 4, 5, 5), torch.randn(2, 6, 5, 5)
    assert torch.allclose(fsp_matrix(a, b), fsp_matrix(b, a).transpose(1, 2), atol=1e-6)
    pa, pb = torch.randperm(4), torch.randperm(6)
    g = fsp_matrix(a, b)
    assert torch.allclose(fsp_matrix(a[:, pa], b[:, pb]), g[:, pa][:, :, pb], atol=1e-6)


def test_fsp_matrix_pools_when_sizes_differ():
    a, b = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    g = fsp_matrix(a, b)
    expect = torch.einsum("bihw,bjhw->bij", nn.functional.max_pool2d(a, 2), b) / 16
    assert torch.allclose(g, expect, atol=1e-6)
    one_d = fsp_matrix(torch.randn(2, 3, 10), torch.randn(2, 5, 5))
    assert one_d.shape == (2, 3, 5)


def test_fsp_loss_zero_for_identical_maps_and_batch_mean_of_squared_frobenius():
    a, b = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    g = fsp_matrix(a, b)
    assert float(fsp_loss([g], [g.clone()])) == 0.0
    h = torch.randn_like(g, requires_grad=True)
    loss = fsp_loss([g, g], [h, h], weights=[1.0, 0.5])
    assert torch.allclose(loss, 1.5 * ((h - g) ** 2).sum() / 4)
    t = g.clone().requires_grad_(True)
    fsp_loss([t], [h]).backward()
    assert t.grad is None  # the teacher's matrices are constants
    with pytest.raises(ValueError, match="channel"):
        fsp_loss([g], [torch.randn(4, 3, 4)])


def _images(n=32, c=1, size=12, k=4):
    g = torch.Generator().manual_seed(0)
    return TensorData({"input": torch.randn(n, c, size, size, generator=g),
                       "target": torch.randint(0, k, (n,), generator=g)}, k, "img")


def test_fsp_two_stages_on_zoo_resnets():
    data = _images()
    teacher = create("resnet14", num_classes=4, input_shape=(1, 12, 12))
    student = create("resnet8", num_classes=4, input_shape=(1, 12, 12))
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    pairs = [["relu", "layer1"], ["layer1", "layer2"], ["layer2", "layer3"]]
    m = get_method("fsp", {"teacher_pairs": pairs, "student_pairs": pairs, "fsp_epochs": 3, "fsp_lr": 0.01})
    fc = student.fc.weight.clone()
    net, res = run_stages(m, student=student, teacher=FrozenTeacher(teacher), train=data, val=None, train_cfg=TrainConfig(epochs=1, batch_size=16), run_dir=None, seed=0, augment=None, progress=False)
    hist = res["fsp"].history
    assert hist[-1]["train/fsp"] < hist[0]["train/fsp"]
    assert "train/loss" in res["train"].history[0]
    assert not torch.equal(fc, student.fc.weight)  # stage 2 trains the whole student
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_state.items())
    assert not teacher._forward_hooks and not teacher.layer1._forward_hooks  # taps removed


def test_fsp_stage1_leaves_the_head_alone_on_a_custom_module():
    data = _images(size=8)

    def net(width):
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, width, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(width, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(6, 4))

    torch.manual_seed(0)
    teacher, student = net(16), net(5)
    pairs = [["1", "5"]]
    m = get_method("fsp", {"teacher_pairs": pairs, "student_pairs": pairs, "fsp_epochs": 2})
    head = student[8].weight.clone()
    seen = {}

    class Spy(type(m)):
        def stages(self):
            st = super().stages()
            orig = st[0].after

            def after(ctx, d):
                seen["head"] = student[8].weight.clone()
                orig(ctx, d)
            st[0].after = after
            return st

    run_stages(Spy(m.params), student=student, teacher=FrozenTeacher(teacher), train=data, val=None, train_cfg=TrainConfig(epochs=1), run_dir=None, seed=0, augment=None, progress=False)
    assert torch.equal(seen["head"], head)  # no FSP gradient reaches the classifier
    bad = get_method("fsp", {"teacher_pairs": [["1", "5"]], "student_pairs": [["1", "3"]]})
    with pytest.raises(ValueError, match="channel"):
        run_stages(bad, student=net(5), teacher=FrozenTeacher(net(16)), train=data, val=None, train_cfg=TrainConfig(epochs=1), run_dir=None, seed=0, augment=None, progress=False)
    with pytest.raises(ConfigError, match="feature_layers"):
        run_stages(get_method("fsp"), student=net(5), teacher=FrozenTeacher(net(16)), train=data, val=None, train_cfg=TrainConfig(epochs=1), run_dir=None, seed=0, augment=None, progress=False)
