"""Furlanello, Lipton, Tschannen, Itti & Anandkumar (2018), "Born-Again Neural Networks", arXiv:1805.04770."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from joryu.losses.kd import _at_least_fp32


def confidence_weights(teacher_logits: Tensor) -> Tensor:
    r"""CWTM sample weights (Sec. 3.2): :math:`w_s = \max_c p_{c,s} / \sum_u \max_c p_{c,u}`.

    They sum to 1 over the batch. (The paper's formula carries an extra 1/b; normalising to 1
    makes equal confidences give exactly the mean cross-entropy.)
    """
    conf = F.softmax(_at_least_fp32(teacher_logits.detach()), dim=-1).amax(-1)
    return conf / conf.sum()


def cwtm_loss(logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
    r"""Confidence-Weighted by Teacher Max: :math:`\sum_s w_s \, CE(y_s, q_s)` with ``confidence_weights``.

    Only the labels are used as targets; the teacher only weighs the samples (no gradient to it).
    With equal teacher confidences it equals the mean cross-entropy.
    """
    w = confidence_weights(teacher_logits)
    return (w * F.cross_entropy(logits, target, reduction="none")).sum()


def dkpp_target(teacher_probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""Dark Knowledge with Permuted Predictions (Sec. 3.2): per sample, keep the teacher's argmax
    entry (value and position) and permute the other C-1 probabilities at random among the other
    positions. The result keeps the multiset of values and sums to 1. It permutes classes, not
    samples.
    """
    p = teacher_probs.detach()
    b, c = p.shape
    top = p.argmax(-1)  # (B,)
    # random keys; the argmax position gets -inf so it sorts first and stays put
    keys = torch.rand(b, c, generator=generator).to(p.device)
    keys[torch.arange(b), top] = -1.0
    others = torch.argsort(keys, dim=-1)[:, 1:]  # a random order of the non-argmax positions
    # the non-argmax positions in their original order
    mask = torch.ones_like(p, dtype=torch.bool)
    mask[torch.arange(b), top] = False
    src = torch.nonzero(mask)[:, 1].view(b, c - 1)
    out = p.clone()
    out.scatter_(1, others, p.gather(1, src))
    return out


def dkpp_loss(logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
              generator: torch.Generator | None = None) -> Tensor:
    r"""KD to the DKPP-permuted teacher distribution: :math:`T^2\, D_{KL}(\pi(p^T) \,\|\, q^T)`, batch mean."""
    t = float(temperature)
    p = F.softmax(_at_least_fp32(teacher_logits.detach()) / t, dim=-1)
    target = dkpp_target(p, generator)
    log_q = F.log_softmax(_at_least_fp32(logits) / t, dim=-1)
    return F.kl_div(log_q, target, reduction="batchmean") * (t * t)
