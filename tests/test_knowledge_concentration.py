import pytest
import torch
from torch import nn

from joryu.config import TrainConfig
from joryu.losses import self_paced_weights, vertical_kd_loss
from joryu.methods import StageContext, get_method
from joryu.models.grouped import GroupedLinear, VerticalHead, attach_vertical_head
from joryu.reproduce import run_reproduction
from joryu.run.stages import run_stages
from joryu.teachers import FrozenTeacher, SpecialistTeacher

VERTICALS = [[0, 3], [1, 2, 4]]


def mask_for(y):
    owner = torch.tensor([0, 1, 1, 0, 1])
    return owner[None, :] == owner[y][:, None]


def test_vertical_kd_has_zero_gradient_outside_the_vertical_and_is_the_restricted_kl():
    y = torch.tensor([0, 1, 2, 3, 4, 2])
    mask = mask_for(y)
    s = torch.randn(6, 5, requires_grad=True)
    t = torch.randn(6, 5)
    loss = vertical_kd_loss(s, t, mask, temperature=2.0)
    (g,) = torch.autograd.grad(loss, s)
    loss, s = loss.detach(), s.detach()
    assert bool((g[~mask] == 0).all()) and bool((g[mask] != 0).any())
    want = 0.0
    for i in range(6):
        cols = mask[i]
        p = (t[i, cols] / 2).softmax(-1)
        q = (s.detach()[i, cols] / 2).log_softmax(-1)
        want += float((p * (p.log() - q)).sum()) * 4
    assert loss.item() == pytest.approx(want / 6, rel=1e-5)
    # the teacher's values outside the vertical do not matter
    t2 = t.masked_fill(~mask, 123.0)
    assert float(vertical_kd_loss(s, t2, mask, 2.0)) == pytest.approx(float(loss), rel=1e-6)
    w = torch.tensor([1.0, 0, 0, 0, 0, 0])
    assert float(vertical_kd_loss(s, t, mask, 2.0, w)) < float(loss)


def test_grouped_layer_is_block_diagonal_with_the_right_parameter_count():
    g = GroupedLinear([4, 3, 2], [5, 1, 2])
    m = g.mask()
    assert m.shape == (8, 9)
    want = torch.block_diag(torch.ones(5, 4), torch.ones(1, 3), torch.ones(2, 2)).bool()
    assert torch.equal(m, want)
    assert sum(p.numel() for p in g.parameters()) == 4 * 5 + 3 * 1 + 2 * 2 + 8 == int(m.sum()) + 8
    w = g.weight()
    assert bool((w[~m] == 0).all())
    x = torch.randn(7, 9)
    torch.testing.assert_close(g(x), x @ w.t() + g.bias)


def test_vertical_head_connects_each_group_to_its_vertical_only():
    torch.manual_seed(0)
    head = VerticalHead(nn.Linear(6, 5), VERTICALS, width=4)
    h = torch.randn(3, 6)
    out = head(h)
    (g,) = torch.autograd.grad(out[:, [1, 2, 4]].sum(), head.grouped.blocks[0], retain_graph=True)
    assert float(g.abs().sum()) == 0  # group 0 feeds vertical 0 = classes 0 and 3 only
    (g,) = torch.autograd.grad(out[:, [0, 3]].sum(), head.grouped.blocks[0])
    assert float(g.abs().sum()) > 0
    model = nn.Sequential()
    model.add_module("body", nn.Linear(8, 6))
    model.add_module("fc", nn.Linear(6, 5))
    attach_vertical_head(model, VERTICALS, 4)
    assert isinstance(model.fc, VerticalHead) and model(torch.randn(2, 8)).shape == (2, 5)
    with pytest.raises(ValueError, match="no nn.Linear"):
        attach_vertical_head(model, VERTICALS, 4, path="body.x")


def test_self_paced_weights():
    gaps = torch.tensor([0.1, 0.2, 0.4, 0.8])
    assert torch.equal(self_paced_weights(gaps, "none", 2.0), torch.full((4,), 2.0))
    w = self_paced_weights(gaps, "gap", 2.0)
    assert float(w.mean()) == pytest.approx(2.0) and bool((w.diff() > 0).all())
    early = self_paced_weights(gaps, "easy_first", 1.0, progress=0.0, start=0.5)
    assert float(early[0]) == 1.0 and bool((early.diff() <= 0).all()) and float(early[-1]) < 0.5
    late = self_paced_weights(gaps, "easy_first", 1.0, progress=1.0, start=0.5)
    torch.testing.assert_close(late, torch.ones(4))
    with pytest.raises(ValueError):
        self_paced_weights(gaps, "fast")


def five_class_data():
    from joryu.data import TensorData

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g)
    y = (x @ torch.randn(8, 5, generator=g)).argmax(1)
    return TensorData({"input": x, "target": y}, 5, "five")


def test_method_trains_specialists_then_concentrates(tiny_data):
    data = five_class_data()
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5))
    student = nn.Sequential()
    student.add_module("body", nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
    student.add_module("fc", nn.Linear(8, 5))
    m = get_method("knowledge_concentration", {"verticals": VERTICALS, "specialist_init": "scratch", "weight": 1.0,
                                               "group_width": 4, "pace": "gap", "grouped_head": True})
    before = [p.clone() for p in teacher.parameters()]
    net, res = run_stages(m, student=student, teacher=FrozenTeacher(teacher), train=data, val=None, train_cfg=TrainConfig(epochs=3, batch_size=50), run_dir=None, seed=0, augment=None, progress=False, num_classes=5)
    assert list(res) == ["specialist1", "specialist2", "distill"]
    assert res["specialist1"].history[0]["step"] == -(-int(torch.isin(data.targets, torch.tensor([0, 3])).sum()) // 50)
    assert isinstance(net.fc, VerticalHead)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    d = res["distill"].distiller
    assert isinstance(d.teacher, SpecialistTeacher) and len(d.teacher.specialists) == 2
    assert float(d.lam.mean()) == pytest.approx(1.0) and not torch.equal(d.lam, torch.ones(2))
    hist = res["distill"].history[-1]
    assert {"train/kd", "train/ce", "lambda_min", "lambda_max"} <= set(hist)


def test_given_specialists_must_be_a_specialist_teacher(tiny_data):
    from joryu.errors import ConfigError

    m = get_method("knowledge_concentration", {"specialists": "given", "num_verticals": 3, "grouped_head": False})
    with pytest.raises(ConfigError, match="SpecialistTeacher"):
        run_stages(m, student=nn.Linear(8, 3), teacher=FrozenTeacher(nn.Linear(8, 3)), train=tiny_data, val=None, train_cfg=TrainConfig(epochs=1), run_dir=None, seed=0, augment=None, progress=False)
    specs = SpecialistTeacher([nn.Linear(8, 1), nn.Linear(8, 1), nn.Linear(8, 1)], [[0], [1], [2]], 3)
    net, res = run_stages(m, student=nn.Linear(8, 3), teacher=specs, train=tiny_data, val=None, train_cfg=TrainConfig(epochs=1), run_dir=None, seed=0, augment=None, progress=False)
    assert list(res) == ["distill"]


def test_quick_reproduction_reports_its_claims(tmp_path):
    md = run_reproduction("knowledge_concentration", quick=True, out_dir=tmp_path, progress=False)
    assert md.read_text().count("- **") >= 2


def test_grouped_mixture_dataset():
    from joryu.data import load

    d = load("grouped_mixture", num_classes=12, num_groups=3, train_per_class=10, test_per_class=4, dim=6)
    assert d.num_classes == 12 and d.input_shape == (6,)
    assert len(d.train) == 120 and len(d.test) == 48
    assert torch.equal(torch.bincount(d.train.targets), torch.full((12,), 10))
    again = load("grouped_mixture", num_classes=12, num_groups=3, train_per_class=10, test_per_class=4, dim=6)
    assert torch.equal(d.train.tensors["input"], again.train.tensors["input"])
    # classes of one group sit closer together than classes of different groups
    x, y = d.train.tensors["input"], d.train.targets
    means = torch.stack([x[y == c].mean(0) for c in range(12)])
    dist = torch.cdist(means, means)
    same = (torch.arange(12)[:, None] // 4) == (torch.arange(12)[None, :] // 4)
    off = ~torch.eye(12, dtype=torch.bool)
    assert float(dist[same & off].mean()) < float(dist[~same].mean())


def test_default_student_is_not_larger_than_the_student_alone(tiny_data):
    # equal-size comparison by default: the grouped head (extra parameters) is opt-in
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    alone = sum(p.numel() for p in student.parameters())
    m = get_method("knowledge_concentration", {"specialists": "given", "num_verticals": 3, "head_path": "2"})
    assert m.params.grouped_head is False
    spec = SpecialistTeacher([nn.Linear(8, 1), nn.Linear(8, 1), nn.Linear(8, 1)], [[0], [1], [2]], 3)
    ctx = StageContext(student=student, teacher=spec, train_data=tiny_data, num_classes=3, train_cfg=None)
    d = m.stages()[-1].build(ctx)
    assert sum(p.numel() for p in d.student.parameters()) == alone
    assert d.temperature == m.params.temperature == 2.0


def test_mnist100_reproduction_concentrates_tens_digit_specialists():
    from joryu.reproduce.knowledge_concentration import build_study
    from joryu.reproduce.protocol import run_study

    study = build_study(bench="mnist100")
    shared = study.shared(True)  # quick: a tenth of the training numbers, one epoch
    specialists = shared["specialists"]
    assert specialists.verticals == [list(range(10 * k, 10 * k + 10)) for k in range(10)]
    assert len(specialists.specialists) == 10
    study.shared = lambda quick: shared
    rep = run_study(study, [0], quick=True)
    assert [c.verdict for c in rep.claims] == ["not reproduced"] * 3  # one seed never reproduces
    rows = rep.tables[0].rows
    ce, uniform, sp = (rows[a.name] for a in study.arms)
    assert ce["optimizer updates"] == uniform["optimizer updates"] == sp["optimizer updates"] == [12.0]  # 1500
    # numbers, 1 epoch, batch 128; each distilled student asks one specialist about every number it sees
    assert ce["teacher forward passes"] == [0.0]
    assert uniform["teacher forward passes"] == sp["teacher forward passes"] == [1500.0]
