import copy

import pytest
import torch
from torch import nn

from joryu.config import TrainConfig
from joryu.data import TensorData
from joryu.errors import ConfigError
from joryu.methods import get_method
from joryu.methods._features import count_macs
from joryu.methods.progressive_blockwise import (
    blockwise_cost,
    blockwise_student,
    replace_module,
    student_block,
)
from joryu.models import create
from joryu.run.stages import run_stages
from joryu.taps import resolve
from joryu.teachers import FrozenTeacher


def block1d(cin, c):
    return nn.Sequential(nn.Conv1d(cin, c, 3, padding=1), nn.BatchNorm1d(c), nn.ReLU(),
                         nn.Conv1d(c, c, 3, padding=1), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(2))


class Net(nn.Module):
    """A plain custom module with three blocks and a head."""

    def __init__(self, widths=(8, 16, 16)):
        super().__init__()
        self.b1, self.b2, self.b3 = block1d(1, widths[0]), block1d(widths[0], widths[1]), block1d(widths[1], widths[2])
        self.head = nn.Linear(widths[2], 3)

    def forward(self, x):
        return self.head(self.b3(self.b2(self.b1(x))).mean(-1))


def _data(n=64, length=16):
    g = torch.Generator().manual_seed(0)
    return TensorData({"input": torch.randn(n, 1, length, generator=g), "target": torch.randint(0, 3, (n,), generator=g)},
                      3, "sig")


@pytest.mark.parametrize("block,x", [
    (block1d(4, 16), torch.randn(2, 4, 12)),
    (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1)),
     torch.randn(2, 3, 8, 8)),
])
def test_student_block_output_shape_equals_the_teacher_block(block, x):
    s = student_block(block)
    assert s(x).shape == block(x).shape
    convs = [m for m in s.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    teacher_convs = [m for m in block.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert [c.out_channels for c in convs[:-1]] == [c.out_channels // 2 for c in teacher_convs]
    assert convs[-1].kernel_size in ((1,), (1, 1)) and convs[-1].out_channels == teacher_convs[-1].out_channels


def test_mac_ratio_matches_the_formula():
    cin, c, length = 4, 16, 12
    t = block1d(cin, c)
    x = torch.randn(1, cin, length)
    teacher_macs = length * (cin * c * 3 + c * c * 3)
    h = c // 2
    student_macs = length * (cin * h * 3 + h * h * 3) + (length // 2) * h * c  # the 1x1 runs after the pooling
    assert count_macs(t, x) == teacher_macs
    assert count_macs(student_block(t), x) == student_macs
    net = Net()
    cost = blockwise_cost(net, blockwise_student(net, ["b1", "b2", "b3"]), torch.randn(1, 1, 16))
    assert cost["mac_ratio"] > 1.5 and cost["param_ratio"] > 1.5


def test_a_hybrid_of_teacher_blocks_equals_the_teacher():
    torch.manual_seed(0)
    teacher = Net().eval()
    hybrid = copy.deepcopy(teacher)
    for path in ("b1", "b2", "b3"):
        replace_module(hybrid, path, copy.deepcopy(getattr(teacher, path)))
    x = torch.randn(5, 1, 16)
    assert torch.equal(hybrid.eval()(x), teacher(x))


def test_unsupported_blocks_are_refused():
    with pytest.raises(ConfigError, match="nn.Sequential"):
        student_block(nn.Conv2d(3, 4, 3))
    with pytest.raises(ConfigError, match="cannot halve"):
        student_block(nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(4)))


@pytest.mark.parametrize("loss", ["output_kd", "local"])
def test_blocks_are_replaced_from_the_input_side_and_later_blocks_stay_the_teachers(loss):
    torch.manual_seed(0)
    teacher = Net()
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    m = get_method("progressive_blockwise", {"blocks": ["b1", "b2", "b3"], "loss": loss, "step_epochs": 1,
                                             "finetune_epochs": 1})
    snaps = {}

    class Spy(type(m)):
        def stages(self):
            st = super().stages()
            for s in st[:3]:
                orig = s.after

                def after(ctx, d, orig=orig, name=s.name):
                    snaps[name] = {k: v.clone() for k, v in d.student.state_dict().items()}
                    orig(ctx, d)
                s.after = after
            return st

    net, res = run_stages(Spy(m.params), student=Net(), teacher=FrozenTeacher(teacher), train=_data(), val=None, train_cfg=TrainConfig(epochs=1, batch_size=16), run_dir=None, seed=0, augment=None, progress=False)
    assert list(res) == ["block1", "block2", "block3", "finetune"]
    # after step i, the blocks after i (and the head) are bit-identical to the teacher's
    for i, name in enumerate(["block1", "block2"]):
        later = [f"b{j}." for j in range(i + 2, 4)] + ["head."]
        for k, v in t_state.items():
            if k.startswith(tuple(later)):
                assert torch.equal(snaps[name][k], v), (name, k)
        # blocks up to i are student blocks (body + 1x1 conv), not the teacher's
        assert f"b{i + 1}.0.0.weight" in snaps[name] and f"b{i + 1}.0.0.weight" not in t_state
        assert f"b{i + 2}.0.0.weight" not in snaps[name]
    # freeze_earlier: S_1 is unchanged by step 2
    s1 = {k: v for k, v in snaps["block1"].items() if k.startswith("b1.")}
    assert all(torch.equal(snaps["block2"][k], v) for k, v in s1.items())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_state.items())
    x = torch.randn(2, 1, 16)
    assert net(x).shape == (2, 3) and count_macs(net, x) < count_macs(teacher, x)
    assert all(p.requires_grad for p in net.parameters())


def test_on_the_zoo_cnn1d_with_its_feature_layers():
    teacher = create("cnn1d", width=8, num_classes=3)
    m = get_method("progressive_blockwise", {"blocks": teacher.feature_layers, "finetune": False, "step_epochs": 1})
    d = _data(length=40)
    net, res = run_stages(m, student=create("cnn1d", width=8, num_classes=3), teacher=FrozenTeacher(teacher), train=d, val=None, train_cfg=TrainConfig(epochs=1, batch_size=32), run_dir=None, seed=0, augment=None, progress=False)
    assert list(res) == ["block1", "block2", "block3"]
    assert net(torch.randn(2, 1, 40)).shape == (2, 3)


def test_a_configured_student_is_honoured_or_refused():
    teacher = create("cnn1d", width=8, num_classes=3)
    d = _data(length=40)
    cfg = TrainConfig(epochs=1, batch_size=32)
    halve = get_method("progressive_blockwise", {"blocks": teacher.feature_layers, "finetune": False,
                                                 "step_epochs": 1})
    with pytest.raises(ConfigError, match="not the teacher's architecture"):
        run_stages(halve, student=create("mlp", input_shape=(1, 40), num_classes=3), teacher=FrozenTeacher(teacher), train=d, val=None, train_cfg=cfg, run_dir=None, seed=0, augment=None, progress=False)
    # student_blocks: student uses the student's own modules at the block paths
    student = create("cnn1d", width=8, num_classes=3)
    torch.manual_seed(5)
    for p in student.parameters():
        p.data.normal_()
    own = {k: v.clone() for k, v in student.state_dict().items() if k.startswith("blocks.0.")}
    m = get_method("progressive_blockwise", {"blocks": ["blocks.0"], "finetune": False, "step_epochs": 1,
                                             "student_blocks": "student"})
    seen = {}

    class Spy(type(m)):
        def stages(self):
            st = super().stages()
            build = st[0].build

            def spy(ctx):
                dist = build(ctx)
                seen["block"] = {k: v.clone() for k, v in resolve(dist.student, "blocks.0").state_dict().items()}
                return dist
            st[0].build = spy
            return st

    run_stages(Spy(m.params), student=student, teacher=FrozenTeacher(teacher), train=d, val=None, train_cfg=cfg, run_dir=None, seed=0, augment=None, progress=False)
    assert all(torch.equal(seen["block"][k[len("blocks.0."):]], v) for k, v in own.items())
    wrong = create("cnn1d", width=4, num_classes=3)  # its blocks give 4 channels, the teacher's 8
    with pytest.raises(ConfigError, match="output shape"):
        run_stages(get_method("progressive_blockwise", {"blocks": ["blocks.0"], "student_blocks": "student"}), student=wrong, teacher=FrozenTeacher(teacher), train=d, val=None, train_cfg=cfg, run_dir=None, seed=0, augment=None, progress=False)


def test_halving_beyond_resnets_lenet5_shrinks_when_its_linear_blocks_are_included():
    t = create("lenet5", num_classes=10, input_shape=(1, 28, 28))
    x = torch.randn(1, 1, 28, 28)
    convs_only = blockwise_cost(t, blockwise_student(t, ["layer1", "layer2"]), x)
    assert convs_only["param_ratio"] < 1.1  # the fully connected layers hold most weights
    every = blockwise_cost(t, blockwise_student(t, ["layer1", "layer2", "fc1", "fc2"]), x)
    assert every["param_ratio"] > 1.4 and every["mac_ratio"] > 1.2
    s = blockwise_student(t, ["layer1", "layer2", "fc1", "fc2"])
    assert s(x).shape == (1, 10)
    # a block whose student would not be smaller is refused
    tiny = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 1)), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ConfigError, match="not be smaller"):
        from joryu.methods.progressive_blockwise import _check_smaller, student_block

        _check_smaller(tiny, ["0"], [student_block(tiny[0])])
