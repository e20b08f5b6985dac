"""Shen, He & Xue (2019), "MEAL: Multi-Model Ensemble via Adversarial Learning", AAAI (arXiv:1812.02425)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from joryu.losses.kd import _at_least_fp32


def pool_to(x: Tensor, dim: int | None) -> Tensor:
    """A block's output as a (B, dim) vector: global average over spatial axes, then adaptive average
    pooling of the channels to ``dim`` (``None``: keep the channel count)."""
    x = _at_least_fp32(x)
    if x.dim() > 2:
        x = x.flatten(2).mean(-1)
    if dim is not None and x.shape[1] != dim:
        x = F.adaptive_avg_pool1d(x.unsqueeze(1), dim).squeeze(1)
    return x


def similarity_loss(student: Tensor, teacher: Tensor, kind: str = "ce") -> Tensor:
    r"""MEAL's similarity term for one block, batch mean, teacher detached.

    ``"ce"``: :math:`\mathrm{CE}(\sigma(t), s) = -\sum_c \sigma(t)_c \log \sigma(s)_c`, minimised (over s)
    at :math:`\sigma(s) = \sigma(t)`; ``"l1"`` / ``"l2"``: mean absolute / squared difference.
    """
    t = _at_least_fp32(teacher.detach())
    s = _at_least_fp32(student)
    if kind == "ce":
        return -(F.softmax(t, -1) * F.log_softmax(s, -1)).sum(-1).mean()
    if kind == "l1":
        return (s - t).abs().mean()
    if kind == "l2":
        return ((s - t) ** 2).mean()
    raise ValueError(f"similarity must be 'ce', 'l1' or 'l2', got {kind!r}")


class Discriminator(nn.Module):
    """Binary discriminator on a pooled block output: dim -> hidden -> hidden -> 1 logit
    ("comes from a teacher"), LeakyReLU(0.2) between layers.

    The official code (AaronHeee/MEAL ``models/discriminator.py``) halves the width at every
    layer (d -> d/2 -> d/4 -> 2, ReLU after each, the last included). On class logits that gives
    a 10-5-2-1 network for 10 classes and 3-1-1-1 for 3: it dies to a constant and sits at
    chance, so the adversarial term is noise. Here the hidden width ``hidden`` does not depend on
    the input size, the non-linearity is leaky (no dead units), and the last layer is linear with
    one logit for a binary cross-entropy (the 2-way softmax with one degree of freedom removed).
    """

    def __init__(self, dim: int, hidden: int = 64, slope: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(slope), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(slope), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def discriminator_loss(d_teacher: Tensor, d_student: Tensor) -> Tensor:
    r""":math:`-\log D(t) - \log(1 - D(s))`, batch mean: teacher outputs are "real" (1), student "fake" (0).
    The caller passes the student's outputs detached, so this step never moves the student."""
    return (F.binary_cross_entropy_with_logits(d_teacher, torch.ones_like(d_teacher))
            + F.binary_cross_entropy_with_logits(d_student, torch.zeros_like(d_student)))


def generator_loss(d_student: Tensor) -> Tensor:
    r""":math:`-\log D(s)`: the student's adversarial term (non-saturating), minimised by the student only."""
    return F.binary_cross_entropy_with_logits(d_student, torch.ones_like(d_student))
