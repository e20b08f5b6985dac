"""Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", arXiv:1503.02531."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    r"""Soft-target loss of Hinton et al. (2015), Sec. 2.

    With :math:`p^T = \mathrm{softmax}(v/T)` (teacher) and :math:`q^T = \mathrm{softmax}(z/T)`
    (student), this returns

    .. math::  L_{soft} = T^2 \cdot \frac{1}{B} \sum_b \mathrm{KL}(p^T_b \,\|\, q^T_b)

    i.e. the cross-entropy :math:`H(p^T, q^T)` minus the teacher's entropy (a constant for the
    student), averaged over the batch (``batchmean``, not the per-element mean), multiplied by
    :math:`T^2` so that its gradient keeps the scale of the hard-label term as T changes:
    :math:`\partial L_{soft}/\partial z = T (q^T - p^T) / B`.

    The teacher logits are treated as constants (detached).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: the two models must predict the same classes"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    log_q = F.log_softmax(_at_least_fp32(student_logits) / t, dim=-1)
    log_p = F.log_softmax(_at_least_fp32(teacher_logits.detach()) / t, dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Cross-entropy against a probability target, batch mean: -1/B sum_b sum_c p_bc log q_bc."""
    return -(target_probs.detach() * F.log_softmax(_at_least_fp32(logits), dim=-1)).sum(-1).mean()
