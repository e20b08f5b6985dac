import pytest
import torch
from torch import nn

from joryu.config import TrainConfig
from joryu.data import TensorData
from joryu.errors import ConfigError
from joryu.losses import hint_loss
from joryu.methods import StageContext, get_method
from joryu.methods.fitnets import FitNetsKDDistiller, HintDistiller, HintRegressor
from joryu.models import create
from joryu.run.stages import run_stages
from joryu.teachers import FrozenTeacher


def test_hint_loss_is_half_sum_of_squares_batch_mean():
    a = torch.randn(4, 3, 5, 5)
    b = torch.randn(4, 3, 5, 5, requires_grad=True)
    assert torch.allclose(hint_loss(a, a), torch.zeros(()))
    assert torch.allclose(hint_loss(a, b), 0.5 * ((a - b) ** 2).sum() / 4)
    r = torch.randn(4, 3, 5, 5, requires_grad=True)
    hint_loss(r, b).backward()
    assert b.grad is None and r.grad is not None  # the hint is a constant
    with pytest.raises(ValueError):
        hint_loss(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("guided,hint,kind", [
    ((8, 12, 12), (16, 7, 7), "paper"),  # kernel 6x6
    ((8, 7, 7), (16, 7, 7), "1x1"),
    ((8, 20), (4, 11), "paper"),  # 1-d maps
    ((24,), (40,), "paper"),  # MLP features: linear
    ((8, 4, 4), (40,), "paper"),  # different ranks: flatten + linear
])
def test_regressor_output_shape_equals_hint_shape(guided, hint, kind):
    r = HintRegressor(guided, hint, kind, "relu")
    out = r(torch.randn(3, *guided))
    assert out.shape == (3, *hint)
    assert (out >= 0).all()  # the hint layer's non-linearity
    if kind == "paper" and len(guided) == 3 and len(hint) == 3:
        assert r.map.kernel_size == (12 - 7 + 1, 12 - 7 + 1)


def test_paper_regressor_rejects_a_smaller_guided_map():
    with pytest.raises(ConfigError, match="at least as large"):
        HintRegressor((8, 4, 4), (8, 7, 7), "paper")
    with pytest.raises(ConfigError, match="equal spatial"):
        HintRegressor((8, 5, 5), (8, 7, 7), "1x1")


def test_lambda_is_annealed_linearly_and_monotone_from_4_to_1():
    lams = [FitNetsKDDistiller.schedule(e, 10, 4.0, 1.0) for e in range(10)]
    assert lams[0] == 4.0 and lams[-1] == 1.0
    assert all(a > b for a, b in zip(lams, lams[1:]))
    assert max(abs((a - b) - (4.0 - 1.0) / 9) for a, b in zip(lams, lams[1:])) < 1e-12


def test_default_lambda_schedule_is_the_authors_configuration():
    # cifar10_fitnet19_all.yaml: lambda_teach 4, TeacherDecayOverEpoch(start=5, saturate=400, final=1),
    # 288 epochs: held at 4 for the first epochs, ends near 1.85
    teacher, student = _custom_pair()
    p = get_method("fitnets").params
    d = FitNetsKDDistiller(student, FrozenTeacher(teacher), p.temperature, p.lambda_start, p.lambda_end,
                           p.tau_squared, lambda_schedule=p.lambda_schedule, lambda_hold=p.lambda_hold,
                           lambda_saturate=p.lambda_saturate)
    lams = []
    for e in range(288):
        d.on_epoch_start(e, 288)
        lams.append(d.lam)
    assert lams[:4] == [4.0] * 4
    assert lams[4] < 4.0
    assert lams[-1] == pytest.approx(4 - 3 / 396 * 284) and abs(lams[-1] - 1.85) < 0.01
    assert all(a >= b for a, b in zip(lams, lams[1:]))


def test_regressor_matches_negative_pre_activation_hints(tiny_data):
    # The zoo MLP's default hint layers are Linear outputs (pre-activation, signed): no final ReLU.
    teacher = create("mlp", in_features=8, num_classes=3, hidden=(16, 16, 16))
    student = create("mlp", in_features=8, num_classes=3, hidden=(8, 8, 8))
    m = get_method("fitnets", {"hint_epochs": 1})
    ctx = StageContext(student=student, teacher=FrozenTeacher(teacher), train_data=tiny_data, num_classes=3,
                       train_cfg=TrainConfig(epochs=1))
    d = m.stages()[0].build(ctx)
    assert d.activation == "none" and isinstance(d.regressor.act, nn.Identity)
    x = tiny_data.tensors["input"][:64]
    u = d.teacher({"input": x}).features["hint"]
    assert float(u.min()) < 0
    # a post-activation hint (a ReLU module) keeps the ReLU
    ctx2 = StageContext(student=student, teacher=FrozenTeacher(teacher), train_data=tiny_data, num_classes=3,
                        train_cfg=TrainConfig(epochs=1))
    d2 = get_method("fitnets", {"hint_layer": "features.2", "guided_layer": "features.2"}).stages()[0].build(ctx2)
    assert d2.activation == "relu"


def _custom_pair():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    student = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 12),
                            nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 3))
    return teacher, student


def test_stage1_trains_only_up_to_the_guided_layer(tiny_data):
    teacher, student = _custom_pair()
    ft = FrozenTeacher(teacher, features={"hint": "1"})
    x = tiny_data.tensors["input"][:16]
    d = HintDistiller(student, ft, "3", x, "paper", "auto")
    trainable = {id(p) for p in d.trainable_parameters()}
    before_ids = {id(p) for p in student[0].parameters()} | {id(p) for p in student[2].parameters()}
    after_ids = {id(p) for m in (student[4], student[5], student[7]) for p in m.parameters()}
    assert before_ids <= trainable and not (after_ids & trainable)
    assert {id(p) for p in d.regressor.parameters()} <= trainable
    losses = d.training_step({"input": x, "target": tiny_data.targets[:16]})
    losses["loss"].backward()
    assert all(p.grad is None for m in (student[4], student[5], student[7]) for p in m.parameters())
    assert all(p.grad is not None for p in student[0].parameters())


def test_fitnets_two_stages_end_to_end_on_a_custom_module(tiny_data):
    teacher, student = _custom_pair()
    ft = FrozenTeacher(teacher)
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_keys = set(student.state_dict())
    after = {k: v.clone() for k, v in student.state_dict().items() if k.split(".")[0] in ("4", "5", "7")}
    m = get_method("fitnets", {"hint_layer": "1", "guided_layer": "3", "hint_epochs": 2})
    captured = {}

    class Spy(type(m)):
        def stages(self):
            st = super().stages()
            orig = st[0].after

            def after_hint(ctx, distiller):
                captured["after"] = {k: v.clone() for k, v in ctx.student.state_dict().items()
                                     if k.split(".")[0] in ("4", "5", "7")}
                captured["first"] = student[0].weight.clone()
                orig(ctx, distiller)
                captured["regressor"] = distiller.regressor
            st[0].after = after_hint
            return st

    spy = Spy(m.params)
    net, results = run_stages(spy, student=student, teacher=ft, train=tiny_data, val=None, train_cfg=TrainConfig(epochs=2, lr=0.01), run_dir=None, seed=0, augment=None, progress=False)
    # layers after the guided one are bit-identical after stage 1 (weights and BN statistics)
    assert all(torch.equal(after[k], captured["after"][k]) for k in after)
    assert captured["regressor"] is None  # dropped after stage 1
    assert set(net.state_dict()) == s_keys  # the deployed student has no regressor
    assert results["hint"].history[-1]["train/hint"] < results["hint"].history[0]["train/hint"]
    assert "train/kd" in results["kd"].history[0]
    lams = [r["lambda"] for r in results["kd"].history]
    want = [FitNetsKDDistiller.official_schedule(e, 2, 4.0, 1.0) for e in range(2)]
    assert lams == pytest.approx(want) and lams[0] > lams[1]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_state.items())  # teacher untouched
    assert not any(p.requires_grad for p in teacher.parameters())


def test_fitnets_on_zoo_resnets_with_default_layers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 16, 16, generator=g)
    y = torch.randint(0, 4, (32,), generator=g)
    data = TensorData({"input": x, "target": y}, 4, "img")
    teacher = create("resnet14", num_classes=4)
    student = create("resnet8", num_classes=4)
    m = get_method("fitnets", {"regressor": "1x1", "hint_epochs": 1})
    net, res = run_stages(m, student=student, teacher=FrozenTeacher(teacher), train=data, val=None, train_cfg=TrainConfig(epochs=1, batch_size=16), run_dir=None, seed=0, augment=None, progress=False)
    assert net is student and set(res) == {"hint", "kd"}


def test_fitnets_bad_layer_path_lists_valid_ones(tiny_data):
    teacher, student = _custom_pair()
    m = get_method("fitnets", {"hint_layer": "1", "guided_layer": "layer9"})
    with pytest.raises(Exception, match="Valid paths"):
        run_stages(m, student=student, teacher=FrozenTeacher(teacher), train=tiny_data, val=None, train_cfg=TrainConfig(epochs=1), run_dir=None, seed=0, augment=None, progress=False)
