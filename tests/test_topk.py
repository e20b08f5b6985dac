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


@pytest.mark.parametrize("k", [1, 5, 40])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_bucket_masses_with_a_label_column_match_autograd(k, temperature):
    # the label's log q_y comes from the same pass; its gradient [j = y] - q_j joins the same buffer
    from joryu.losses.topk import _StudentBucket

    z = logits(12, 40, seed=30).requires_grad_()
    idx = logits(12, 40, seed=31).topk(k, -1).indices
    label = torch.randint(0, 40, (12,), generator=torch.Generator().manual_seed(32))
    label[3] = idx[3, 0]  # a label inside S and (likely) others outside it
    with torch.no_grad():  # row 0: a tiny outside mass (the re-summed path)
        z[0] = -100.0
        z[0].scatter_(-1, idx[0], 100.0)
    ours = _StudentBucket.apply(z, idx, temperature, label)
    ref_y = torch.log_softmax(z / temperature, -1).gather(-1, label[:, None])
    ref = torch.cat([_reference_bucket_log_q(z, idx, temperature), ref_y], -1)
    if k == 40:  # nothing outside S: log rho is the constant floor
        ref = torch.cat([ref[:, :k], ours[:, k:k + 1].detach(), ref[:, k + 1:]], -1)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    g = logits(12, k + 2, seed=33)
    (grad,) = torch.autograd.grad(ours, z, g)
    (expect,) = torch.autograd.grad(ref, z, g)
    torch.testing.assert_close(grad, expect, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: _StudentBucket.apply(x, idx, temperature, label), (z,))


@pytest.mark.parametrize("divergence,beta", DIVS)
@pytest.mark.parametrize("tokens", [True, False])
def test_fused_soft_and_hard_terms_equal_the_two_computed_apart(divergence, beta, tokens):
    from joryu.losses.imperfect import masked_cross_entropy
    from joryu.losses.topk import topk_divergence_and_ce

    n, v, k = 36, 50, 6
    z = logits(n, v, seed=40).float()
    idx, lp, rest = topk_from_logits(logits(n, v, seed=41).float(), k)
    target = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(42))
    if tokens:  # [B, L, V] with ignored positions
        z, target = z.view(6, 6, v), target.view(6, 6)
        idx, lp, rest = idx.view(6, 6, k), lp.view(6, 6, k).half(), rest.view(6, 6)
        target[::2, 3:] = -100
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    soft, hard = topk_divergence_and_ce(z1, idx, lp, rest, target, divergence, beta, soft_positions=tokens)
    soft_ref = topk_divergence(z2, idx, lp, rest, divergence, "bucket", 1.0, beta,
                               target=target if tokens else None)
    hard_ref = masked_cross_entropy(z2, target)
    torch.testing.assert_close(soft, soft_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hard, hard_ref, rtol=1e-5, atol=1e-6)
    (g1,) = torch.autograd.grad(0.3 * soft + 0.7 * hard, z1)
    (g2,) = torch.autograd.grad(0.3 * soft_ref + 0.7 * hard_ref, z2)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)


def test_fused_hard_term_is_zero_without_a_labelled_position():
    from joryu.losses.topk import topk_divergence_and_ce

    z = logits(8, 20, seed=43).float().view(2, 4, 20).requires_grad_()
    idx, lp, rest = topk_from_logits(logits(8, 20, seed=44).float(), 3)
    target = torch.full((2, 4), -100)
    soft, hard = topk_divergence_and_ce(z, idx.view(2, 4, 3), lp.view(2, 4, 3), rest.view(2, 4), target)
    assert float(hard.detach()) == 0.0 and float(soft.detach()) == 0.0
    (g,) = torch.autograd.grad(soft + hard, z)
    assert float(g.abs().max()) == 0.0
