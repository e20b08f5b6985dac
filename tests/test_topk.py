"""Soft losses against a truncated (top-k) teacher: exact at k = V, bounded below it."""

import math

import pytest
import torch

from joryu.losses import kd_loss
from joryu.losses.lm import token_divergence
from joryu.losses.topk import (
    binary_kl,
    forward_kl_bucket_bound,
    jsd_bucket_bound,
    retemper,
    topk_divergence,
    topk_divergence_rows,
    topk_from_logits,
)

DIVS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)]


def logits(n=64, v=40, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g, dtype=torch.float64) * scale


@pytest.mark.parametrize("truncation", ["renormalize", "bucket"])
@pytest.mark.parametrize("divergence,beta", DIVS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_k_equal_to_the_vocabulary_gives_the_dense_loss(truncation, divergence, beta, temperature):
    z, v = logits(seed=1), logits(seed=2)
    idx, lp, rest = topk_from_logits(v.double(), v.shape[1], temperature)
    assert float(rest.abs().max()) == 0.0
    dense = token_divergence(z, v, divergence, temperature, beta)
    ours = topk_divergence(z, idx, lp.double(), rest, divergence, truncation, temperature, beta)
    torch.testing.assert_close(ours, dense.to(ours.dtype), rtol=1e-6, atol=1e-6)


def test_k_equal_to_the_vocabulary_matches_kd_loss_on_tokens_with_a_target_mask():
    z, v = logits(24 * 5, 30, seed=3).float().view(24, 5, 30), logits(24 * 5, 30, seed=4).float().view(24, 5, 30)
    target = torch.randint(0, 30, (24, 5))
    target[::3, 2:] = -100
    idx, lp, rest = topk_from_logits(v, 30, 4.0)
    dense = kd_loss(z, v, 4.0, target=target)
    ours = topk_divergence(z, idx, lp, rest, "forward_kl", "bucket", 4.0, target=target)
    torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-6)


def _masses(z, idx, t):
    q = torch.softmax(z / t, -1)
    return q, 1 - q.gather(-1, idx).sum(-1)


@pytest.mark.parametrize("k", [1, 4, 16])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_bucket_forward_kl_is_below_dense_by_at_most_the_stated_bound(k, temperature):
    z, v = logits(seed=5), logits(seed=6)
    idx, lp, rest = topk_from_logits(v, k, temperature)
    dense = token_divergence(z, v, "forward_kl", temperature) / temperature**2  # per-row mean, no T^2
    dense_rows = torch.stack([token_divergence(z[i:i + 1], v[i:i + 1], "forward_kl", temperature)
                              for i in range(len(z))]) / temperature**2
    bucket = topk_divergence_rows(z, idx, lp, rest, "forward_kl", "bucket", temperature)
    gap = dense_rows - bucket
    assert float(gap.min()) >= -1e-9  # bucket never exceeds dense
    bound = forward_kl_bucket_bound(z, rest, temperature)
    assert bool((gap <= bound + 1e-9).all())
    # the tighter middle form r (log rho - min_R log q) holds too
    q, rho = _masses(z, idx, temperature)
    min_log_q_out = torch.log(q).scatter(-1, idx, float("inf")).amin(-1)
    assert bool((gap <= rest * (torch.log(rho) - min_log_q_out) + 1e-9).all())
    assert float(dense) > 0 and float(gap.max()) > 0  # the truncation does lose something here


@pytest.mark.parametrize("k", [2, 8])
def test_reverse_kl_bucket_bound_uses_the_students_outside_mass_and_the_teachers_logit_range(k):
    z, v = logits(seed=7), logits(seed=8)
    idx, lp, rest = topk_from_logits(v, k)
    dense = torch.stack([token_divergence(z[i:i + 1], v[i:i + 1], "reverse_kl") for i in range(len(z))])
    bucket = topk_divergence_rows(z, idx, lp, rest, "reverse_kl", "bucket")
    _, rho = _masses(z, idx, 1.0)
    gap = dense - bucket
    assert float(gap.min()) >= -1e-9
    assert bool((gap <= rho * (math.log(v.shape[1]) + v.amax(-1) - v.amin(-1)) + 1e-9).all())


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_jsd_bucket_gap_is_within_s_h_of_beta_r_over_s(beta, k):
    z, v = logits(seed=9), logits(seed=10)
    idx, lp, rest = topk_from_logits(v, k)
    dense = torch.stack([token_divergence(z[i:i + 1], v[i:i + 1], "jsd", beta=beta) for i in range(len(z))])
    bucket = topk_divergence_rows(z, idx, lp, rest, "jsd", "bucket", beta=beta)
    _, rho = _masses(z, idx, 1.0)
    gap = dense - bucket
    bound = jsd_bucket_bound(rest, rho, beta)
    assert float(gap.min()) >= -1e-9
    assert bool((gap <= bound + 1e-9).all())
    assert bool((bound <= (beta * rest + (1 - beta) * rho) * math.log(2) + 1e-12).all())


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_chain_rule_links_the_two_truncations_exactly(divergence):
    z, v = logits(seed=11), logits(seed=12)
    idx, lp, rest = topk_from_logits(v, 6)
    _, rho = _masses(z, idx, 1.0)
    bucket = topk_divergence_rows(z, idx, lp, rest, divergence, "bucket")
    renorm = topk_divergence_rows(z, idx, lp, rest, divergence, "renormalize")
    if divergence == "forward_kl":
        expect = (1 - rest) * renorm + binary_kl(rest, rho)
    else:
        expect = (1 - rho) * renorm + binary_kl(rho, rest)
    torch.testing.assert_close(bucket, expect, rtol=1e-9, atol=1e-9)


def test_renormalize_is_blind_to_the_students_mass_outside_the_top_k_and_bucket_is_not():
    v = logits(8, 20, seed=13)
    idx, lp, rest = topk_from_logits(v, 4)
    z = torch.zeros_like(v)
    z.scatter_(-1, idx, v.gather(-1, idx))  # same shape inside S as the teacher
    far = z.clone()
    outside = torch.ones_like(v, dtype=torch.bool).scatter(-1, idx, False)
    far[outside] = 50.0  # nearly all student mass outside S
    for trunc, same in (("renormalize", True), ("bucket", False)):
        a = topk_divergence(z, idx, lp, rest, truncation=trunc)
        b = topk_divergence(far, idx, lp, rest, truncation=trunc)
        assert torch.isclose(a, b, atol=1e-9) == same, trunc


def test_retemper_renormalises_at_another_temperature():
    v = logits(16, 30, seed=14)
    z = logits(16, 30, seed=15)
    idx, lp1, _ = topk_from_logits(v, 7, 1.0)
    _, lp3, _ = topk_from_logits(v, 7, 3.0)
    a = topk_divergence(z, idx, retemper(lp1, 1.0, 3.0).double(), None, truncation="renormalize", temperature=3.0)
    b = topk_divergence(z, idx, lp3, None, truncation="renormalize", temperature=3.0)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("truncation", ["renormalize", "bucket"])
@pytest.mark.parametrize("divergence,beta", DIVS)
@pytest.mark.parametrize("k", [3, 40])
def test_gradients_reach_the_student_only_and_are_finite(truncation, divergence, beta, k):
    z = logits(seed=16).float().requires_grad_()
    v = logits(seed=17).float()
    idx, lp, rest = topk_from_logits(v, k)
    lp, rest = lp.half().requires_grad_(), rest.requires_grad_()
    loss = topk_divergence(z, idx.int(), lp, rest, divergence, truncation, 2.0, beta)
    loss.backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all()) and float(z.grad.abs().sum()) > 0
    assert lp.grad is None and rest.grad is None


def test_16_bit_values_stay_close_to_the_exact_loss():
    z, v = logits(seed=18).float(), logits(seed=19).float()
    idx, lp, rest = topk_from_logits(v, 8)
    exact = topk_divergence(z, idx, lp, rest)
    half = topk_divergence(z, idx.int(), lp.half(), rest)
    assert abs(float(half - exact)) < 1e-2 * float(exact)


def test_mismatched_shapes_and_unknown_names_are_refused():
    z, v = logits(4, 10).float(), logits(4, 10, seed=1).float()
    idx, lp, rest = topk_from_logits(v, 3)
    with pytest.raises(ValueError, match="do not fit"):
        topk_divergence_rows(z[:2], idx, lp, rest)
    with pytest.raises(ValueError, match="unknown truncation 'clip'"):
        topk_divergence_rows(z, idx, lp, rest, truncation="clip")
    with pytest.raises(ValueError, match="needs the teacher's remaining mass"):
        topk_divergence_rows(z, idx, lp, None, truncation="bucket")


def _reference_bucket_log_q(z, idx, t):
    """The student's bucket masses by plain autograd (log-sum-exps over the vocabulary and its outside)."""
    s = z / t
    lse = s.logsumexp(-1, keepdim=True)
    outside = s.scatter(-1, idx, float("-inf"))
    return torch.cat([s.gather(-1, idx) - lse, outside.logsumexp(-1, keepdim=True) - lse], -1)


@pytest.mark.parametrize("k", [1, 5, 39])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_bucket_student_masses_and_their_closed_form_gradient_match_autograd(k, temperature):
    from joryu.losses.topk import _StudentBucket

    z = logits(12, 40, seed=20).requires_grad_()
    idx = logits(12, 40, seed=21).topk(k, -1).indices
    with torch.no_grad():  # row 0: the student's mass outside S is ~e^(-200/T) (summed afresh)
        z[0] = -100.0
        z[0].scatter_(-1, idx[0], 100.0)
    ours = _StudentBucket.apply(z, idx, temperature)
    torch.testing.assert_close(ours, _reference_bucket_log_q(z, idx, temperature), rtol=1e-12, atol=1e-12)
    assert float(ours[0, -1].detach()) < -70
    g = logits(12, k + 1, seed=22)
    (grad,) = torch.autograd.grad(ours, z, g)
    (expect,) = torch.autograd.grad(_reference_bucket_log_q(z, idx, temperature), z, g)
    torch.testing.assert_close(grad, expect, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: _StudentBucket.apply(x, idx, temperature), (z,))


def test_bucket_loss_in_float32_keeps_a_tiny_outside_mass_finite():
    # in float32 exp(-100) underflows against the row's maximum: that row is re-summed from the
    # outside's own maximum, so the loss and its gradient stay those of the exact formula
    z = logits(4, 30, seed=23).float()
    v = logits(4, 30, seed=24).float()
    idx, lp, rest = topk_from_logits(v, 5)
    z[1] = -50.0
    z[1].scatter_(-1, idx[1], 50.0)
    z.requires_grad_()
    loss = topk_divergence(z, idx, lp, rest)
    (grad,) = torch.autograd.grad(loss, z)
    z64 = z.detach().double().requires_grad_()
    log_q = _reference_bucket_log_q(z64, idx, 1.0)
    log_p = torch.cat([lp.double(), rest.double().log().unsqueeze(-1)], -1)
    log_p = log_p - log_p.logsumexp(-1, keepdim=True)
    ref = torch.nn.functional.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1).mean()
    (ref_grad,) = torch.autograd.grad(ref, z64)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)
