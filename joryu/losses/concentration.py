"""Gao et al. (2017), "Knowledge Concentration: Learning 100K Object Classifiers in a Single CNN"
(arXiv:1711.07607). Only the abstract was available: the forms below are documented best guesses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from joryu.losses.kd import _at_least_fp32

_NEG = -1e4


def vertical_kd_loss(student_logits: Tensor, specialist_logits: Tensor, mask: Tensor, temperature: float = 1.0,
                     weights: Tensor | None = None) -> Tensor:
    r"""KD from each sample's specialist on the logits of its vertical only.

    For sample i in vertical k with classes :math:`L_k`, teacher :math:`p = \mathrm{softmax}(t_{L_k}/T)` and
    student :math:`q = \mathrm{softmax}(s_{L_k}/T)` (the student's logits *restricted* to :math:`L_k`):

    .. math::  L = \frac{1}{B} \sum_i \lambda_{k(i)}\, T^2\, \mathrm{KL}(p_i \,\|\, q_i)

    ``mask`` (B, C) marks each sample's vertical; logits outside it get no gradient.
    ``weights`` (B,) are the per-sample λ (the self-paced weight of the sample's vertical).
    """
    t = float(temperature)
    s = _at_least_fp32(student_logits).masked_fill(~mask, _NEG)
    tl = _at_least_fp32(specialist_logits.detach()).masked_fill(~mask, _NEG)
    log_q = F.log_softmax(s / t, -1)
    log_p = F.log_softmax(tl / t, -1)
    kl = (log_p.exp() * (log_p - log_q)).masked_fill(~mask, 0.0).sum(-1) * (t * t)
    if weights is not None:
        kl = kl * weights
    return kl.mean()


def per_sample_vertical_kl(student_logits: Tensor, specialist_logits: Tensor, mask: Tensor) -> Tensor:
    """(B,) KL(p ‖ q) at T=1 on each sample's vertical: the student–specialist gap, detached."""
    with torch.no_grad():
        s = _at_least_fp32(student_logits).masked_fill(~mask, _NEG)
        tl = _at_least_fp32(specialist_logits).masked_fill(~mask, _NEG)
        log_q, log_p = F.log_softmax(s, -1), F.log_softmax(tl, -1)
        return (log_p.exp() * (log_p - log_q)).masked_fill(~mask, 0.0).sum(-1)


def self_paced_weights(gaps: Tensor, mode: str = "easy_first", base: float = 1.0, progress: float = 1.0,
                       start: float = 0.5) -> Tensor:
    r"""Per-vertical weights λ_k from the student–specialist gaps g_k (best guess; see the method docstring).

    - ``"none"``: λ_k = base.
    - ``"gap"``: λ_k = base · g_k / mean(g): verticals where the student lags its specialist most weigh most
      (mean weight = base).
    - ``"easy_first"`` (self-paced learning, Kumar et al. 2010): a pace threshold τ is the q-quantile of the
      gaps, q growing linearly from ``start`` to 1 with ``progress`` (0 -> 1); λ_k = base · min(1, τ / g_k),
      so hard verticals (large gap) are down-weighted early and every vertical has full weight at the end.
    """
    g = gaps.float().clamp_min(1e-8)
    if mode == "none":
        return torch.full_like(g, base)
    if mode == "gap":
        return base * g / g.mean()
    if mode == "easy_first":
        q = min(1.0, start + (1.0 - start) * max(0.0, progress))
        tau = torch.quantile(g, q)
        return base * torch.clamp(tau / g, max=1.0)
    raise ValueError(f"pace must be 'none', 'gap' or 'easy_first', got {mode!r}")
