"""Lan, Zhu & Gong (2018), "Knowledge Distillation by On-the-Fly Native Ensemble" (ONE), NeurIPS."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from joryu.errors import ShapeError
from joryu.losses.kd import kd_loss


def gated_logits(branch_logits: Sequence[Tensor], gate: Tensor) -> Tensor:
    r"""The on-the-fly teacher: :math:`z_e = \sum_i g_i z_i` with gate ``g`` of shape (B, m)."""
    stacked = torch.stack(list(branch_logits), dim=1)  # (B, m, C)
    if gate.shape != stacked.shape[:2]:
        raise ShapeError(f"gate shape {tuple(gate.shape)} does not match {len(branch_logits)} branches "
                         f"of batch {stacked.shape[0]}")
    return (gate.unsqueeze(-1) * stacked).sum(1)


def one_loss(branch_logits: Sequence[Tensor], gate: Tensor, target: Tensor, temperature: float = 3.0,
             kd_weight: float = 1.0) -> dict[str, Tensor]:
    r"""The ONE objective (Eq. 7 of the paper, with the code's ramp-up weight w):

    .. math::  L = \sum_{i=1}^m CE(y, z_i) + CE(y, z_e)
                   + w \sum_{i=1}^m T^2\, D_{KL}(\sigma(z_e/T) \,\|\, \sigma(z_i/T))

    The teacher :math:`z_e` is detached in the KL terms, so the KL never trains the gate (nor
    the branches through the teacher). Batch-mean KL. Returns ``loss``, ``ce`` (sum over
    branches), ``ce_ensemble`` and ``kd`` (the unweighted KL sum).
    """
    ens = gated_logits(branch_logits, gate)
    ce = sum(F.cross_entropy(z, target) for z in branch_logits)
    ce_e = F.cross_entropy(ens, target)
    teacher = ens.detach()
    kd = sum(kd_loss(z, teacher, temperature) for z in branch_logits)
    return {"loss": ce + ce_e + kd_weight * kd, "ce": ce, "ce_ensemble": ce_e, "kd": kd}


def sigmoid_rampup(epoch: float, length: float) -> float:
    """w(t) = exp(-5 (1 - t/length)^2), 1 after ``length`` epochs (ONE's code, from Laine & Aila); 1 if length <= 0."""
    if length <= 0:
        return 1.0
    p = min(max(epoch, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - p) ** 2))
