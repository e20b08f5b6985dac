import pytest
import torch
import torch.nn.functional as F

from joryu.losses import kd_loss, soft_cross_entropy


def test_zero_loss_and_gradient_for_equal_logits():
    z = torch.randn(16, 10, dtype=torch.float64)
    s = z.clone().requires_grad_(True)
    loss = kd_loss(s, z, temperature=4.0)
    loss.backward()
    assert abs(loss.item()) < 1e-12
    assert s.grad.abs().max() < 1e-6


@pytest.mark.parametrize("T", [1.0, 2.5, 8.0])
@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_gradient_matches_paper(T, alpha):
    # dL/dz = alpha * T * (q_s - p_t) / B for the soft part (Hinton et al. 2015, Sec. 2.1)
    B, K = 12, 7
    zs = torch.randn(B, K, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(B, K, dtype=torch.float64)
    (alpha * kd_loss(zs, zt, T)).backward()
    expected = alpha * T * (F.softmax(zs.detach() / T, -1) - F.softmax(zt / T, -1)) / B
    torch.testing.assert_close(zs.grad, expected, rtol=1e-9, atol=1e-12)


def test_invariant_to_constant_shift():
    zs, zt = torch.randn(8, 5), torch.randn(8, 5)
    a = kd_loss(zs, zt, 3.0)
    b = kd_loss(zs + 4.2, zt - 1.3, 3.0)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_batchmean_not_elementwise_mean():
    zs, zt = torch.randn(4, 10), torch.randn(4, 10)
    T = 2.0
    p = F.softmax(zt / T, -1)
    manual = (p * (p.log() - F.log_softmax(zs / T, -1))).sum(-1).mean() * T * T
    torch.testing.assert_close(kd_loss(zs, zt, T), manual, rtol=1e-5, atol=1e-6)


def test_teacher_receives_no_gradient():
    zs = torch.randn(4, 3, requires_grad=True)
    zt = torch.randn(4, 3, requires_grad=True)
    kd_loss(zs, zt, 2.0).backward()
    assert zt.grad is None
    assert zs.grad is not None


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same classes"):
        kd_loss(torch.randn(2, 10), torch.randn(2, 100))


def test_soft_cross_entropy_equals_ce_for_one_hot():
    z = torch.randn(6, 4)
    y = torch.randint(0, 4, (6,))
    torch.testing.assert_close(soft_cross_entropy(z, F.one_hot(y, 4).float()), F.cross_entropy(z, y))
