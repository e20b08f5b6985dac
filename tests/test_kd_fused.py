"""KD's classification objective as one autograd node equals the terms computed apart."""

import pytest
import torch
import torch.nn.functional as F

from joryu.errors import ShapeError
from joryu.losses.kd import _KDWithLabels, kd_loss, kd_with_labels
from joryu.methods.kd import kd_objective


def _data(seed=0, n=32, c=7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, c, generator=g, dtype=dtype) * 3).requires_grad_()
    v = torch.randn(n, c, generator=g, dtype=dtype) * 3
    y = torch.randint(0, c, (n,), generator=g)
    return z, v, y


def _apart(z, v, y, t, alpha):
    kd = kd_loss(z, v, t)
    if alpha >= 1:
        return {"kd": kd, "loss": alpha * kd}
    ce = F.cross_entropy(z, y)
    return {"kd": kd, "ce": ce, "loss": alpha * kd + (1 - alpha) * ce}


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("alpha", [0.9, 0.3, 1.0])
@pytest.mark.parametrize("ignored", [False, True])
def test_values_and_gradients_equal_kd_loss_plus_cross_entropy(temperature, alpha, ignored):
    z, v, y = _data(1)
    if ignored:
        y[::3] = -100  # rows without a label: out of the CE's mean, still distilled
    ours = kd_with_labels(z, v, y, temperature, alpha)
    ref = _apart(z, v, y, temperature, alpha)
    assert set(ours) == set(ref)
    for k in ref:
        torch.testing.assert_close(ours[k].detach(), ref[k].detach(), rtol=1e-12, atol=1e-12)
    (g1,) = torch.autograd.grad(ours["loss"], z)
    (g2,) = torch.autograd.grad(ref["loss"], z)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: _KDWithLabels.apply(x, v, y, temperature, alpha)[0], (z,))


def test_the_logged_terms_carry_no_gradient_and_the_teacher_gets_none():
    z, v, y = _data(2)
    v.requires_grad_()
    out = kd_with_labels(z, v, y, 4.0, 0.9)
    assert out["loss"].requires_grad and not out["kd"].requires_grad and not out["ce"].requires_grad
    out["loss"].backward()
    assert v.grad is None and z.grad is not None


def test_half_precision_logits_are_computed_in_float32():
    z, v, y = _data(3, dtype=torch.float32)
    ours = kd_with_labels(z.detach().bfloat16().requires_grad_(), v.bfloat16(), y, 2.0, 0.5)
    ref = _apart(z.detach().bfloat16().float(), v.bfloat16().float(), y, 2.0, 0.5)
    assert ours["loss"].dtype == torch.float32
    torch.testing.assert_close(ours["loss"], ref["loss"], rtol=1e-5, atol=1e-6)


def test_kd_objective_takes_the_one_node_path_for_classifiers_only():
    z, v, y = _data(4)
    out = kd_objective(z, v, y, 4.0, 0.9)
    assert out["loss"].grad_fn.name().startswith("_KDWithLabels")
    tokens = kd_objective(z.view(4, 8, 7), v.view(4, 8, 7), y.view(4, 8), 4.0, 0.9)
    assert not tokens["loss"].grad_fn.name().startswith("_KDWithLabels")
    soft_target = kd_objective(z, v, torch.softmax(v, -1), 4.0, 0.9)  # probability targets: the general path
    assert not soft_target["loss"].grad_fn.name().startswith("_KDWithLabels")


def test_a_teacher_with_other_classes_is_refused_with_the_shapes():
    z, _, y = _data(5)
    with pytest.raises(ShapeError, match="classes"):
        kd_with_labels(z, torch.randn(32, 9), y, 4.0, 0.9)
