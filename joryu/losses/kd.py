"""Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", arXiv:1503.02531."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from joryu.losses.lm import check_same_classes, token_divergence


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0,
            mask: Tensor | None = None, target: Tensor | None = None) -> Tensor:
    r"""Soft-target loss of Hinton et al. (2015), Sec. 2.

    With :math:`p^T = \mathrm{softmax}(v/T)` (teacher) and :math:`q^T = \mathrm{softmax}(z/T)`
    (student), this returns

    .. math::  L_{soft} = T^2 \cdot \frac{1}{B} \sum_b \mathrm{KL}(p^T_b \,\|\, q^T_b)

    i.e. the cross-entropy :math:`H(p^T, q^T)` minus the teacher's entropy (a constant for the
    student), averaged over the batch (``batchmean``, not the per-element mean), multiplied by
    :math:`T^2` so that its gradient keeps the scale of the hard-label term as T changes:
    :math:`\partial L_{soft}/\partial z = T (q^T - p^T) / B`.

    Per-position logits (``[B, L, C]`` tokens, ``[B, C, H, W]`` pixels; see
    ``joryu.losses.positions``) are distilled at every position that counts: where ``target`` is
    not -100 and ``mask`` (per sample or per position) is true. The mean then runs over those
    positions, :math:`T^2 \frac{1}{|V|} \sum_{i \in V} \mathrm{KL}(p^T_i \| q^T_i)`; with
    ``[B, C]`` logits and no mask this is exactly the batch mean above.

    The teacher logits are treated as constants (detached).
    """
    if student_logits.dim() > 2 or mask is not None or target is not None:
        return token_divergence(student_logits, teacher_logits, "forward_kl", temperature, mask=mask,
                                target=target)
    if student_logits.shape != teacher_logits.shape:
        check_same_classes(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    log_q = F.log_softmax(_at_least_fp32(student_logits) / t, dim=-1)
    log_p = F.log_softmax(_at_least_fp32(teacher_logits.detach()) / t, dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)


class _KDWithLabels(torch.autograd.Function):
    r"""KD's whole classification objective as one autograd node: ``(loss, kd, ce)`` with
    :math:`\mathrm{loss} = \alpha\,\mathrm{kd} + (1 - \alpha)\,\mathrm{ce}`,
    :math:`\mathrm{kd} = T^2 \frac{1}{B} \sum_b \mathrm{KL}(p^T_b \| q^T_b)` (``kd_loss``) and
    :math:`\mathrm{ce}` the mean of :math:`-\log q_{b, y_b}` over rows whose label is not -100
    (``F.cross_entropy``'s mean). The gradient is written out,
    :math:`\partial\mathrm{loss}/\partial z_b = \alpha T (q^T_b - p^T_b) / B + (1 - \alpha)
    [y_b \ne -100] (q_b - e_{y_b}) / |V|`, instead of recorded through some twenty small
    operations: for a small classifier (ten classes, a batch of 128) those cost more than the
    student's own forward. ``kd`` and ``ce`` are returned for logging only (no gradient)."""

    @staticmethod
    def forward(ctx, z: Tensor, v: Tensor, y: Tensor, temperature: float, alpha: float):
        t = float(temperature)
        log_q = F.log_softmax(z / t, dim=-1)
        log_p = F.log_softmax(v / t, dim=-1)
        p = log_p.exp()
        n = z.shape[0]
        kd = (p * (log_p - log_q)).sum() * (t * t / n)
        ctx.temperature, ctx.alpha, ctx.n = t, float(alpha), n
        if alpha >= 1:
            ce = kd.new_zeros(())
            ctx.mark_non_differentiable(kd, ce)
            ctx.save_for_backward(log_q, p)
            return kd.clone(), kd, ce
        log_q1 = log_q if t == 1 else F.log_softmax(z, dim=-1)
        valid = y != -100
        w = valid.to(z.dtype) / valid.sum()  # 0/0 with no labelled row: nan, as F.cross_entropy gives
        safe = torch.where(valid, y, torch.zeros_like(y)).long().unsqueeze(-1)
        ce = -(log_q1.gather(-1, safe).squeeze(-1) * w).sum()
        ctx.mark_non_differentiable(kd, ce)
        ctx.save_for_backward(log_q, p, log_q1, safe, w)
        return alpha * kd + (1 - alpha) * ce, kd, ce

    @staticmethod
    @once_differentiable
    def backward(ctx, g, *_):
        t, alpha, n = ctx.temperature, ctx.alpha, ctx.n
        log_q, p = ctx.saved_tensors[:2]
        q = log_q.exp()
        grad = (q - p).mul_(alpha * t / n)
        if alpha < 1:
            log_q1, safe, w = ctx.saved_tensors[2:]
            hard = (q if t == 1 else log_q1.exp()).mul_(w.unsqueeze(-1))
            hard.scatter_add_(-1, safe, -w.unsqueeze(-1))
            grad.add_(hard, alpha=1 - alpha)
        return grad.mul_(g), None, None, None, None


def kd_with_labels(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float,
                   alpha: float) -> dict:
    """KD's classification objective, ``{"kd", "ce", "loss"}`` (no ``ce`` at alpha = 1), equal to
    ``alpha * kd_loss(z, v, T) + (1 - alpha) * F.cross_entropy(z, y)`` in value and gradient
    (``tests/test_kd_fused.py``), from one autograd node (``_KDWithLabels``). For ``[B, C]``
    logits and integer labels ``[B]``; only ``loss`` carries gradients, ``kd`` and ``ce`` are
    for logging."""
    if student_logits.shape != teacher_logits.shape:
        check_same_classes(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = _at_least_fp32(student_logits)
    v = _at_least_fp32(teacher_logits.detach()).to(z.dtype)
    loss, kd, ce = _KDWithLabels.apply(z, v, target, float(temperature), float(alpha))
    return {"kd": kd, "loss": loss} if alpha >= 1 else {"kd": kd, "ce": ce, "loss": loss}


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Cross-entropy against a probability target, batch mean: -1/B sum_b sum_c p_bc log q_bc."""
    return -(target_probs.detach() * F.log_softmax(_at_least_fp32(logits), dim=-1)).sum(-1).mean()
