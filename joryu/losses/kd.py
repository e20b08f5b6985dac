"""Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", arXiv:1503.02531."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Cross-entropy against a probability target, batch mean: -1/B sum_b sum_c p_bc log q_bc."""
    return -(target_probs.detach() * F.log_softmax(_at_least_fp32(logits), dim=-1)).sum(-1).mean()
