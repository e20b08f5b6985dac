"""Rota Bulò, Porzi & Kontschieder (2016), "Dropout Distillation", ICML."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from joryu.errors import ShapeError
from joryu.losses.kd import _at_least_fp32, soft_cross_entropy


def dropout_distillation_loss(student_logits: Tensor, sampled_teacher_logits: Tensor) -> Tensor:
    r"""Cross-entropy of a deterministic student against dropout-teacher predictions.

    The distillation objective is

    .. math::  \min_\phi \; \mathbb{E}_x\, \mathbb{E}_z \Big[-\sum_y \sigma(f(x;\theta,z))_y
               \log \sigma(g(x;\phi))_y\Big]

    with :math:`z` a dropout mask. The cross-entropy is linear in its target, so one fresh mask
    per sample per step (``sampled_teacher_logits``) gives an unbiased estimate of
    :math:`\mathrm{CE}(\bar p, \sigma(g))` with :math:`\bar p = \mathbb{E}_z[\sigma(f(x;\theta,z))]`
    (MC dropout). ``sampled_teacher_logits`` may also have a leading mask axis (S, B, C): the
    softmaxes are then averaged over the S masks first. Batch mean; the teacher is detached.
    """
    t = _at_least_fp32(sampled_teacher_logits.detach())
    probs = F.softmax(t, dim=-1)
    if probs.dim() == student_logits.dim() + 1:
        probs = probs.mean(0)
    if probs.shape != student_logits.shape:
        raise ShapeError(f"teacher {tuple(probs.shape)} and student {tuple(student_logits.shape)} shapes differ")
    return soft_cross_entropy(student_logits, probs)


def predictive_kl(reference_probs: Tensor, logits: Tensor) -> Tensor:
    r""":math:`\frac{1}{B}\sum_b \mathrm{KL}(\bar p_b \,\|\, \sigma(z_b))`: how far a predictor's softmax is
    from a reference predictive distribution (e.g. the 200-sample MC-dropout mean)."""
    log_q = F.log_softmax(_at_least_fp32(logits), dim=-1)
    p = reference_probs.float().clamp_min(1e-12)
    return F.kl_div(log_q, p.log(), reduction="batchmean", log_target=True)
