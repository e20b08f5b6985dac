import pytest
import torch
from torch import nn

from joryu.teachers import (
    CachedTeacher,
    FrozenTeacher,
    MCDropoutTeacher,
    RandomChoiceTeacher,
    SpecialistTeacher,
    Transform,
    TransformEnsembleTeacher,
    contiguous_verticals,
    dropout_modules,
    hflip,
    scale,
    shift,
    shift_grid,
    strip_dropout,
    vertical_index,
    weight_scaled,
)


def net(seed=0, out=3, p=0.5, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(8, 32)]
    if bn:
        layers.append(nn.BatchNorm1d(32))
    layers += [nn.ReLU(), nn.Dropout(p), nn.Linear(32, out)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- specialists
def test_verticals_partition_and_errors():
    assert contiguous_verticals(10, 3) == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    torch.testing.assert_close(vertical_index([[2, 0], [1]], 3), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="disjoint"):
        vertical_index([[0, 1], [1, 2]], 3)
    with pytest.raises(ValueError, match="no vertical"):
        vertical_index([[0], [1]], 3)


@pytest.mark.parametrize("width", ["own", "other", "full"])
def test_specialists_map_into_the_full_label_space(width):
    verticals = [[0, 3, 4], [1, 2]]
    sizes = {"own": [3, 2], "other": [4, 3], "full": [5, 5]}[width]
    specs = [net(i, out=n) for i, n in enumerate(sizes)]
    t = SpecialistTeacher(specs, verticals, num_classes=5)
    x = torch.randn(6, 8)
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    out = t({"input": x, "target": y})
    v = out.features["vertical"]
    torch.testing.assert_close(v, torch.tensor([0, 1, 1, 0, 0, 1]))
    for i in range(6):
        k = int(v[i])
        full = specs[k].eval()(x[i:i + 1])[0]
        mine = full[verticals[k]] if width == "full" else full[: len(verticals[k])]
        torch.testing.assert_close(out.logits[i, verticals[k]], mine)
        other = [c for c in range(5) if c not in verticals[k]]
        assert bool((out.logits[i, other] == t.fill).all())
        assert out.features["mask"][i].tolist() == [c in verticals[k] for c in range(5)]
        # a softmax over the full space puts all its mass on the vertical
        assert float(out.logits[i].softmax(-1)[verticals[k]].sum()) == pytest.approx(1.0)
    assert not out.logits.requires_grad


def test_specialists_route_by_vertical_key_and_check_widths():
    t = SpecialistTeacher([net(0, 2), net(1, 2)], [[0, 1], [2, 3]], 4)
    out = t({"input": torch.randn(3, 8), "vertical": torch.tensor([1, 1, 0])})
    assert out.features["mask"].tolist() == [[False, False, True, True]] * 2 + [[True, True, False, False]]
    bad = SpecialistTeacher([net(0, 7), net(1, 2)], [[0, 1], [2, 3]], 4)
    with pytest.raises(ValueError, match="predicts 7 classes"):
        bad({"input": torch.randn(2, 8), "target": torch.tensor([0, 1])})


# ---------------------------------------------------------------- transform ensemble
def test_shift_is_a_zero_filled_translation():
    x = torch.arange(1.0, 6.0).view(1, 1, 5)
    assert shift(2).apply(x).flatten().tolist() == [0, 0, 1, 2, 3]
    assert shift(-1).apply(x).flatten().tolist() == [2, 3, 4, 5, 0]
    img = torch.arange(9.0).view(1, 1, 3, 3)
    assert shift(1, 0).apply(img)[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [3, 4, 5]]
    assert len(shift_grid(2, step=2, ndim=2)) == 9
    assert len(shift_grid(1, ndim=1)) == 3


def test_transform_ensemble_averages_probabilities_of_every_view():
    m = net(3).eval()
    ts = [shift(1), shift(-1), hflip()]
    t = TransformEnsembleTeacher(m, ts)
    x = torch.randn(4, 8)
    want = torch.stack([m(tr.apply(x)).softmax(-1) for tr in ts]).mean(0)
    torch.testing.assert_close(t({"input": x}).logits.softmax(-1), want)


def test_dense_predictions_are_inverse_transformed_before_averaging():
    # a "dense" model that predicts its input (identity heatmap): each view, mapped back, must agree
    # with the original frame wherever the view did not lose pixels at the border
    dense = nn.Identity()
    x = torch.randn(2, 1, 6, 6)
    views = [shift(1, 0, dense=True), shift(0, -1, dense=True), hflip(dense=True), scale(2.0, dense=True)]
    t = TransformEnsembleTeacher(dense, views[:3], mode="logits")
    preds = t.predictions({"input": x})
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    for p in preds:
        torch.testing.assert_close(p[inner], x[inner])
    assert scale(2.0).apply(x).shape == x.shape
    # without the inverse the shifted view would be misaligned
    raw = shift(1, 0).apply(x)
    assert not torch.allclose(raw[inner], x[inner])
    # a user-supplied inverse is applied to the prediction
    calls = []
    custom = Transform("neg", lambda z: -z, lambda y: calls.append(1) or -y)
    torch.testing.assert_close(TransformEnsembleTeacher(dense, [custom], mode="logits")({"input": x}).logits, x)
    assert calls == [1]


# ---------------------------------------------------------------- MC dropout
def test_mc_dropout_samples_masks_with_batchnorm_in_eval():
    m = net(4, p=0.5, bn=True)
    m.train()
    x = torch.randn(16, 8)
    m(x)  # move the BN running stats off their init
    t = MCDropoutTeacher(m, samples=50)
    bn = m[1]
    mean_before = bn.running_mean.clone()
    a, b = t.sample({"input": x}).logits, t.sample({"input": x}).logits
    assert not torch.allclose(a, b)  # fresh masks
    torch.testing.assert_close(bn.running_mean, mean_before)  # BN never in train mode
    assert not m.training and not m[3].training  # state restored after sampling
    # one sample per row: a single-row batch must not depend on the other rows (BN in eval)
    torch.manual_seed(0)
    p = t.mean_probs({"input": x}, samples=400)
    torch.testing.assert_close(p.sum(-1), torch.ones(16))
    # the K-sample mean is the average of one-mask softmaxes: compare with a slow loop
    torch.manual_seed(1)
    slow = torch.stack([t.sample({"input": x}).logits.softmax(-1) for _ in range(400)]).mean(0)
    assert float((p - slow).abs().max()) < 0.08
    torch.testing.assert_close(t({"input": x}).logits.exp().sum(-1), torch.ones(16))


def test_mc_dropout_chunking_gives_the_same_mean_and_p0_is_deterministic():
    m = net(5, p=0.0)
    t = MCDropoutTeacher(m, samples=7)
    x = torch.randn(5, 8)
    torch.testing.assert_close(t.mean_probs({"input": x}), m.eval()(x).softmax(-1))
    with pytest.raises(ValueError, match="no dropout"):
        MCDropoutTeacher(nn.Linear(8, 3))


def test_weight_scaled_copy_is_deterministic_and_equals_eval_mode():
    m = net(6)
    ws = weight_scaled(m)
    assert not dropout_modules(ws) and dropout_modules(m)
    ws.train()
    x = torch.randn(4, 8)
    torch.testing.assert_close(ws(x), m.eval()(x))
    assert strip_dropout(m) is m and not dropout_modules(m)


def test_stochastic_teachers_refuse_the_cache():
    with pytest.raises(ValueError, match="stochastic"):
        CachedTeacher(MCDropoutTeacher(net(7)), 10)
    with pytest.raises(ValueError, match="stochastic"):
        CachedTeacher(RandomChoiceTeacher([net(1), net(2)]), 10)


# ---------------------------------------------------------------- random selection
def test_random_choice_is_uniform_seeded_and_returns_the_chosen_teacher():
    nets = [net(i).eval() for i in range(3)]
    t = RandomChoiceTeacher(nets, seed=5)
    x = torch.randn(2, 8)
    for _ in range(20):
        out = t({"input": x}).logits
        torch.testing.assert_close(out, nets[t.last](x))
    for _ in range(2980):
        t.choose()
    assert sum(t.counts) == 3000
    assert all(abs(c / 3000 - 1 / 3) < 0.03 for c in t.counts)
    a = RandomChoiceTeacher(nets, seed=9)
    b = RandomChoiceTeacher(nets, seed=9)
    torch.manual_seed(0)
    sa = [a.choose() for _ in range(30)]
    torch.manual_seed(1)  # the global generator does not matter
    assert sa == [b.choose() for _ in range(30)]
    assert set(t.stats()) == {"teacher0_share", "teacher1_share", "teacher2_share"}
    assert isinstance(t.teachers[0], FrozenTeacher)
